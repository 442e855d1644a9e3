"""The FastAPI app: OpenAI-compatible audio routes, health, readiness, metrics, a web page."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, Request, Response, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from offline_asr import __version__
from offline_asr.asr.base import DecodeOptions, Segment, TranscriptionResult
from offline_asr.errors import OfflineAsrError
from offline_asr.formats import render
from offline_asr.service.admission import Admission, QueueFullError
from offline_asr.service.docs import add_docs
from offline_asr.service.errors import ApiError, error_body, from_domain, install_handlers
from offline_asr.service.metrics import Metrics
from offline_asr.service.pool import ModelPool
from offline_asr.service.settings import ServiceSettings

STATIC = Path(__file__).resolve().parent / "static"
ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
MEDIA_TYPES = {"json": "application/json", "verbose_json": "application/json"}
# A client's own X-Request-ID is kept when it is a plain token; anything else is replaced.
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
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


async def authorize(request: Request) -> str | None:
    """Bearer keys when configured; returns a short id of the key for the audit log."""
    keys: list[bytes] = request.app.state.api_keys
    if not keys:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token.strip().encode()
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(given, key) for key in keys):
        message = "missing or invalid API key (Authorization: Bearer KEY)"
        raise ApiError(401, message, code="invalid_api_key")
    return hashlib.sha256(given).hexdigest()[:8]


ApiKeyId = Annotated[str | None, Depends(authorize)]


def create_app(settings: ServiceSettings, pool: ModelPool, metrics: Metrics) -> FastAPI:
    """Build the app around a pool whose models were verified and loaded already."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Unload idle lazily loaded models in the background, when configured."""

        async def unload_idle() -> None:
            while True:
                await asyncio.sleep(min(pool.idle_unload_s, 30))
                await asyncio.to_thread(pool.unload_idle)

        task = asyncio.create_task(unload_idle()) if pool.idle_unload_s > 0 else None
        yield
        if task is not None:
            task.cancel()

    app = FastAPI(
        title="offline-asr",
        version=__version__,
        summary="OpenAI-compatible speech recognition that never leaves the building",
        lifespan=lifespan,
        docs_url=None,  # served by add_docs from local files, not from a CDN
        redoc_url=None,
    )
    add_docs(app)
    admission = Admission(settings.max_concurrency, settings.max_queue, metrics)
    app.state.api_keys = [key.encode() for key in settings.all_api_keys()]
    install_handlers(app)

    @app.middleware("http")
    async def request_context(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        given = request.headers.get("x-request-id", "")
        request.state.request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        request.state.model = "unknown"
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        if request.url.path.startswith("/v1/audio/"):
            metrics.requests.labels(request.state.model, str(response.status_code)).inc()
        return response

    async def transcribe(
        request: Request,
        file: UploadFile,
        model: str,
        options: DecodeOptions,
        response_format: ResponseFormat,
        stream: bool,
        key_id: str | None,
    ) -> Response:
        pool.check(model)
        request.state.model = model  # only registered ids become metric labels
        try:
            await admission.acquire()
        except QueueFullError:
            retry = max(1, math.ceil(settings.max_queue / settings.max_concurrency))
            raise ApiError(
                429, "the server is busy; retry later", type_="rate_limit_exceeded",
                code="queue_full", headers={"Retry-After": str(retry)},
            ) from None  # fmt: skip
        loop = asyncio.get_running_loop()
        segments: asyncio.Queue[Segment | None] = asyncio.Queue()
        context = {
            "request_id": request.state.request_id,
            "client": request.client.host if request.client else "unknown",
            "api_key_id": key_id,
        }

        def work() -> TranscriptionResult:
            def on_segment(segment: Segment) -> None:
                loop.call_soon_threadsafe(segments.put_nowait, segment)

            transcriber = pool.get(model)
            return transcriber.transcribe_stream(
                file.file, file.filename or "upload", options, on_segment, **context
            )

        started = loop.time()
        job = asyncio.ensure_future(asyncio.to_thread(work))
        job.add_done_callback(lambda _: admission.release())  # the slot is free only when done
        job.add_done_callback(lambda _: loop.call_soon(segments.put_nowait, None))

        def observe(result: TranscriptionResult) -> None:
            metrics.latency.labels(model).observe(loop.time() - started)
            metrics.audio_seconds.labels(model).inc(result.duration)

        deadline = started + settings.request_timeout_s

        def timed_out() -> ApiError:
            message = f"transcription took longer than {settings.request_timeout_s} s"
            return ApiError(504, message, type_="server_error", code="timeout")

        if stream:
            # Wait for the first segment (or the end) so that bad input still gets a 4xx status.
            try:
                first = await asyncio.wait_for(segments.get(), deadline - loop.time())
            except TimeoutError:
                raise timed_out() from None
            if first is None:
                job.result()  # raises the error, if any, through the handlers
            return StreamingResponse(
                _events(first, job, segments, observe, deadline),
                media_type="text/event-stream",
            )
        try:
            result = await asyncio.wait_for(asyncio.shield(job), deadline - loop.time())
        except TimeoutError:
            raise timed_out() from None
        observe(result)
        body = render(result, response_format)
        return Response(body, media_type=MEDIA_TYPES.get(response_format, "text/plain"))

    def decode_options(
        task: Literal["transcribe", "translate"],
        language: str | None,
        prompt: str | None,
        temperature: float,
        granularities: list[str],
    ) -> DecodeOptions:
        try:
            return DecodeOptions(
                language=language or None, task=task, initial_prompt=prompt or None,
                temperature=temperature, word_timestamps="word" in granularities,
            )  # fmt: skip
        except ValidationError as error:
            problem = error.errors()[0]
            raise ApiError(400, f"{problem['loc'][0]}: {problem['msg']}",
                           param=str(problem["loc"][0])) from error  # fmt: skip

    @app.post("/v1/audio/transcriptions", response_model=None)
    async def create_transcription(
        request: Request,
        key_id: ApiKeyId,
        file: Annotated[UploadFile, File(description="Audio or video file")],
        model: Annotated[str, Form(description="Model id from /v1/models, or `auto`")],
        language: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None,
        response_format: Annotated[ResponseFormat, Form()] = "json",
        temperature: Annotated[float, Form(ge=0, le=1)] = 0.0,
        timestamp_granularities: Annotated[
            list[Literal["word", "segment"]] | None, Form(alias="timestamp_granularities[]")
        ] = None,
        stream: Annotated[bool, Form()] = False,
    ) -> Response:
        """Transcribe speech; the answer has OpenAI's shape plus `x_offline_asr` provenance."""
        options = decode_options(
            "transcribe", language, prompt, temperature, list(timestamp_granularities or [])
        )
        return await transcribe(request, file, model, options, response_format, stream, key_id)

    @app.post("/v1/audio/translations", response_model=None)
    async def create_translation(
        request: Request,
        key_id: ApiKeyId,
        file: Annotated[UploadFile, File(description="Audio or video file")],
        model: Annotated[str, Form(description="A Whisper model id")],
        prompt: Annotated[str | None, Form()] = None,
        response_format: Annotated[ResponseFormat, Form()] = "json",
        temperature: Annotated[float, Form(ge=0, le=1)] = 0.0,
    ) -> Response:
        """Translate speech into English text (Whisper models)."""
        options = decode_options("translate", None, prompt, temperature, [])
        return await transcribe(request, file, model, options, response_format, False, key_id)

    @app.get("/v1/models")
    async def list_models(key_id: ApiKeyId) -> dict[str, Any]:
        """Registered models with engine, manifest_version, fingerprint and whether loaded."""
        return {"object": "list", "data": pool.describe()}

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        """Every model named at start is verified and loaded."""
        if pool.ready:
            return Response(json.dumps({"status": "ready"}), media_type="application/json")
        return Response(json.dumps({"status": "loading"}), 503, media_type="application/json")

    @app.get("/metrics", dependencies=[Depends(authorize)])
    async def prometheus() -> Response:
        """Prometheus text format; needs a key when the server has keys (model ids, traffic)."""
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )  # fmt: skip
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes + FORM_OVERHEAD)
    return app


async def _events(
    first: Segment | None,
    job: asyncio.Future[TranscriptionResult],
    segments: asyncio.Queue[Segment | None],
    observe: Callable[[TranscriptionResult], None],
    deadline: float,
) -> AsyncIterator[str]:
    """Server-sent events as OpenAI streams them: text deltas, then the full text.

    The first delta loses its leading space, so the deltas add up to the final text.
    """
    loop = asyncio.get_running_loop()
    segment, sent = first, ""
    while segment is not None:
        delta = segment.text if sent else segment.text.lstrip()
        sent += delta
        if delta:
            yield _event({"type": "transcript.text.delta", "delta": delta})
        try:
            segment = await asyncio.wait_for(segments.get(), deadline - loop.time())
        except TimeoutError:
            message = "transcription ran past the request time limit"
            yield _event(error_body(message, "server_error", None, "timeout"))
            return
    try:
        result = job.result()
    except OfflineAsrError as error:
        api = from_domain(error)
        yield _event(error_body(api.message, api.type, api.param, api.code))
        return
    observe(result)
    usage = {"type": "duration", "seconds": math.ceil(result.duration)}
    yield _event({"type": "transcript.text.done", "text": result.text, "usage": usage})


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
