"""Admin routes: `POST /admin/reload` asks the server to follow its target's `current`.

With API keys configured it needs one (the same Bearer keys as /v1); without keys it answers
only to clients on loopback, so an open port never lets anyone start a verification.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from fastapi import APIRouter, Request

from offline_asr.constants import ADMIN_RELOAD_PATH
from offline_asr.service.dependencies import Service, authorize, service_state
from offline_asr.service.errors import ApiError
from offline_asr.service.reload import NoTargetError, ReleaseRefusedError, ReloadBusyError

router = APIRouter()


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def admin_allowed(request: Request) -> None:
    """A valid key when the server has keys; else a client on loopback."""
    if service_state(request).keys.required:
        await authorize(request)
    elif not _loopback(request):
        raise ApiError(
            403, "admin routes answer only on loopback when the server has no API keys",
            code="admin_loopback_only",
        )  # fmt: skip


@router.post(ADMIN_RELOAD_PATH)
async def reload_release(request: Request, service: Service) -> dict[str, Any]:
    """Verify the release the target's `current` points to and switch to it (answers when
    done): 200 switched or unchanged, 422 refused (the old release keeps serving; the message
    names the file), 409 when a reload is running or the server follows no target."""
    await admin_allowed(request)
    try:
        outcome = await asyncio.to_thread(service.reloader.reload, "admin")
    except ReloadBusyError as error:
        raise ApiError(409, str(error), code="reload_in_progress") from error
    except NoTargetError as error:
        raise ApiError(409, str(error), code="no_target") from error
    except ReleaseRefusedError as error:
        raise ApiError(422, str(error), type_="server_error", code="release_refused") from error
    return {"status": outcome.outcome, **outcome.to_dict()}
