"""413 for bodies over the upload limit, enforced on the ASGI messages."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from offline_asr.service.errors import error_body

# Multipart framing and the other form fields on top of the file itself.
FORM_OVERHEAD = 64 * 1024


class UploadLimit:
    """Refuse bodies over the limit with 413: by Content-Length first, else while reading.

    It never raises into the app: errors raised from `receive` get wrapped on their way
    through other middleware, so the limit is enforced on the ASGI messages instead.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").decode() or "0"
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen, refused = 0, False

        async def counted() -> Message:
            # Past the limit the app sees a disconnect; its answer is replaced by the 413 below.
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            return {"type": "http.disconnect"} if seen > self.max_bytes else message

        async def guarded(message: Message) -> None:
            nonlocal refused
            if seen <= self.max_bytes:
                await send(message)
            elif not refused:
                refused = True
                await self._refuse(send)

        await self.app(scope, counted, guarded)
        if seen > self.max_bytes and not refused:
            await self._refuse(send)

    def _message(self) -> str:
        return f"upload larger than {self.max_bytes - FORM_OVERHEAD:,} bytes; send a smaller file"

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            error_body(self._message(), "invalid_request_error", "file", "file_too_large")
        )
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body.encode()})
