"""One audit line per request, with the answer the client actually got.

The outermost middleware: it sees every answer, including the 413 of the upload limit, 401s,
404s, 429s, malformed bodies, 504s and clients that leave before any answer. It gives every
request an id (the client's own X-Request-ID when it is a plain token), sends it back in
X-Request-ID, names the release that served it in X-Manifest-Version (and in the line), and
counts the audio routes in /metrics. It writes the line as the answer ends,
before its last bytes go out (or once the app is done, when the client left first): the status
sent (None: the client left before any answer), the OpenAI error code of the body or of the
stream's error event, and what the handlers learnt (the model, the audio's sha256, whether the
work was cancelled). The operational routes (health, readiness, metrics, the web page and the
API docs) are not audited unless they refuse a key.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from offline_asr.asr.audit import AuditLog
from offline_asr.constants import MANIFEST_VERSION_HEADER
from offline_asr.service.keys import KeyRing
from offline_asr.service.metrics import Metrics

# A client's own X-Request-ID is kept when it is a plain token; anything else is replaced.
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
AUDIO_ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations")
UNAUDITED = ("/health", "/ready", "/metrics", "/", "/favicon.ico", "/openapi.json")
UNAUDITED_PREFIXES = ("/static/", "/docs", "/redoc")
REFUSED_KEY = (401, 403)
# Error bodies are small; a longer one is not parsed for its code.
MAX_ERROR_BODY = 64 * 1024
MAX_LOGGED_PATH = 256
VERSION_HEADER = MANIFEST_VERSION_HEADER.lower().encode()


class Facts:
    """What the handlers and the worker thread learn about a request, for its line."""

    def __init__(self) -> None:
        self._fields: dict[str, Any] = {}
        self._lock = threading.Lock()

    def update(self, fields: dict[str, Any]) -> None:
        with self._lock:
            self._fields.update(fields)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._fields)


def facts_of(scope: Scope) -> Facts:
    """The request's facts (a request that bypassed the middleware gets a throw-away one)."""
    facts = scope.setdefault("state", {}).setdefault("audit", Facts())
    assert isinstance(facts, Facts)
    return facts


def audited(path: str, status: int | None) -> bool:
    if status in REFUSED_KEY:
        return True
    return path not in UNAUDITED and not path.startswith(UNAUDITED_PREFIXES)


class _Answer:
    """What went back to the client, watched on the ASGI messages."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.code: str | None = None
        self.message: str | None = None
        self.complete = False
        self.unanswered = False  # the client left before the answer started
        self._stream = False
        self._body = bytearray()

    def left(self) -> None:
        """The client went away; whatever is sent from now on does not reach it."""
        if self.status is None:
            self.unanswered = True

    def sent(self, message: Message) -> None:
        if self.unanswered:
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
            content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
            self._stream = content_type.startswith("text/event-stream")
        elif message["type"] == "http.response.body":
            self._read(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete = True
                if not self._stream and self._failed:
                    self._error(bytes(self._body))

    def _read(self, body: bytes) -> None:
        if self._stream:  # one event per body message, as the app sends them
            for line in body.splitlines():
                if line.startswith(b"data: ") and b'"error"' in line:
                    self._error(line.removeprefix(b"data: "))
        elif self._failed and len(self._body) + len(body) <= MAX_ERROR_BODY:
            self._body += body

    @property
    def _failed(self) -> bool:
        return self.status is not None and self.status >= 400

    def _error(self, data: bytes) -> None:
        try:
            error = json.loads(data)["error"]
            self.code, self.message = error.get("code"), error.get("message")
        except (ValueError, KeyError, TypeError, AttributeError):
            return


class AuditTrail:
    """The middleware; see the module's docstring."""

    def __init__(
        self,
        app: ASGIApp,
        audit: AuditLog,
        metrics: Metrics,
        keys: KeyRing,
        serving: Callable[[], int],
    ) -> None:
        self.app = app
        self.audit = audit
        self.metrics = metrics
        self.keys = keys
        self.serving = serving  # the release new requests go to, for answers that used none

    def _version(self, facts: Facts) -> int:
        """The release that served the request (its lease's), else the one serving now."""
        version = facts.snapshot().get("manifest_version")
        return version if isinstance(version, int) else self.serving()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"], state["model"] = request_id, "unknown"
        facts = facts_of(scope)
        answer = _Answer()
        started = time.perf_counter()
        written = False

        def finish() -> None:
            nonlocal written
            if not written:
                written = True
                self._finish(scope, headers, answer, facts, time.perf_counter() - started)

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not answer.complete:
                answer.left()
            return message

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                own = [(b"x-request-id", request_id.encode()),
                       (VERSION_HEADER, str(self._version(facts)).encode())]  # fmt: skip
                message = {**message, "headers": [*message.get("headers", []), *own]}
            answer.sent(message)
            if answer.complete:
                finish()  # before the last bytes go: whoever has the answer finds its line
            try:
                await send(message)
            except OSError:
                answer.left()
                raise

        try:
            await self.app(scope, watched_receive, watched_send)
        except Exception:
            if answer.status is None:  # Starlette's outermost handler answers 500
                answer.status = 500
            raise
        finally:
            finish()

    def _finish(
        self, scope: Scope, headers: Headers, answer: _Answer, facts: Facts, latency_s: float
    ) -> None:
        path: str = scope["path"]
        status = answer.status
        label = "disconnected" if status is None else str(status)
        if path.startswith("/v1/audio/"):
            self.metrics.requests.labels(scope["state"]["model"], label).inc()
        if not audited(path, status):
            return
        ok = status is not None and status < 400 and answer.code is None and answer.complete
        client = scope.get("client")
        line = {
            "request_id": scope["state"]["request_id"],
            "method": scope["method"],
            "path": path[:MAX_LOGGED_PATH],
            "status": status,
            "error_code": answer.code,
            "outcome": "ok" if ok else "error",
            "client": client[0] if client else None,
            "api_key_id": self.keys.identify(headers.get("authorization", "")),
            "latency_s": round(latency_s, 3),
            "manifest_version": self._version(facts),
        }
        failure = {} if answer.message is None else {"error": answer.message}
        if path not in AUDIO_ROUTES:
            self.audit.write("request", {**line, **failure})
            return
        # A transcription line always names its model (null: refused before one was chosen)
        # and says whether the work was told to stop.
        known = {"model_id": None, "cancelled": None, **facts.snapshot(),
                 "manifest_version": line["manifest_version"]}  # fmt: skip
        self.audit.write("transcription", {**line, **known, **failure})
