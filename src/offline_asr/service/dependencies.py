"""What the routes depend on, as FastAPI dependencies: the service's parts and the API key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from offline_asr.asr.audit import AuditLog
from offline_asr.service.admission import Admission
from offline_asr.service.errors import ApiError
from offline_asr.service.keys import KeyRing
from offline_asr.service.metrics import Metrics
from offline_asr.service.pool import ModelPool
from offline_asr.service.reload import Reloader
from offline_asr.service.settings import ServiceSettings


@dataclass(frozen=True)
class ServiceState:
    """Everything a route may use, made once at start (`create_app`) and kept on the app."""

    settings: ServiceSettings
    pool: ModelPool
    metrics: Metrics
    audit: AuditLog
    keys: KeyRing
    admission: Admission
    reloader: Reloader


def service_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


Service = Annotated[ServiceState, Depends(service_state)]


async def authorize(request: Request) -> str | None:
    """Bearer keys when configured; returns the key's id in the audit log."""
    keys = service_state(request).keys
    if not keys.required:
        return None
    key_id = keys.identify(request.headers.get("authorization", ""))
    if key_id is None:
        message = "missing or invalid API key (Authorization: Bearer KEY)"
        raise ApiError(401, message, code="invalid_api_key")
    return key_id


ApiKeyId = Annotated[str | None, Depends(authorize)]
