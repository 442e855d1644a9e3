"""The FastAPI app: OpenAI-compatible audio routes, health, readiness, metrics, a web page."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import AsyncIterator, Callable
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
from offline_asr.audit import AuditLog
from offline_asr.errors import OfflineAsrError
from offline_asr.formats import render
from offline_asr.service.admission import Admission, QueueFullError
from offline_asr.service.audit_trail import AuditTrail, facts_of
from offline_asr.service.docs import add_docs
from offline_asr.service.errors import ApiError, error_body, from_domain, install_handlers
from offline_asr.service.jobs import Job, Reason, admitted, take_upload, watching_disconnect
from offline_asr.service.keys import KeyRing
from offline_asr.service.metrics import Metrics
from offline_asr.service.pool import ModelPool
from offline_asr.service.realtime import realtime_router
from offline_asr.service.settings import ServiceSettings

STATIC = Path(__file__).resolve().parent / "static"
ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
MEDIA_TYPES = {"json": "application/json", "verbose_json": "application/json"}
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
    """Bearer keys when configured; returns the key's id in the audit log."""
    keys: KeyRing = request.app.state.keys
    if not keys.required:
        return None
    key_id = keys.identify(request.headers.get("authorization", ""))
    if key_id is None:
        message = "missing or invalid API key (Authorization: Bearer KEY)"
        raise ApiError(401, message, code="invalid_api_key")
    return key_id


ApiKeyId = Annotated[str | None, Depends(authorize)]


def create_app(
    settings: ServiceSettings, pool: ModelPool, metrics: Metrics, *, audit: AuditLog, keys: KeyRing
) -> FastAPI:
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
    app.state.keys = keys
    install_handlers(app)

    async def transcribe(
        request: Request,
        file: UploadFile,
        model: str,
        options: DecodeOptions,
        response_format: ResponseFormat,
        stream: bool,
    ) -> Response:
        pool.check(model)
        request.state.model = model  # only registered ids become metric labels
        facts = facts_of(request.scope)
        facts.update({"model_id": model})
        async with watching_disconnect(request.receive) as left:
            try:
                if not await admitted(admission, left):
                    facts.update({"cancelled": "client_disconnected"})
                    raise client_left()
            except QueueFullError:
                retry = max(1, math.ceil(settings.max_queue / settings.max_concurrency))
                raise ApiError(
                    429, "the server is busy; retry later", type_="rate_limit_exceeded",
                    code="queue_full", headers={"Retry-After": str(retry)},
                ) from None  # fmt: skip
            loop = asyncio.get_running_loop()
            segments: asyncio.Queue[Segment | None] = asyncio.Queue()
            upload = take_upload(file)

            def work(cancel: threading.Event) -> TranscriptionResult:
                def on_segment(segment: Segment) -> None:
                    loop.call_soon_threadsafe(segments.put_nowait, segment)

                return pool.get(model).transcribe_stream(
                    upload, file.filename or "upload", options, on_segment, cancel=cancel,
                    on_fields=facts.update,
                )  # fmt: skip

            def ended() -> None:
                upload.close()
                loop.call_soon(segments.put_nowait, None)

            started = loop.time()
            job = Job(
                work, request_id=request.state.request_id, facts=facts, admission=admission,
                metrics=metrics, audit=audit, on_end=ended,
            )  # fmt: skip

            def observe(result: TranscriptionResult) -> None:
                metrics.latency.labels(model).observe(loop.time() - started)
                metrics.audio_seconds.labels(model).inc(result.duration)

            deadline = started + settings.request_timeout_s

            def timed_out() -> ApiError:
                message = f"transcription took longer than {settings.request_timeout_s} s"
                return ApiError(504, message, type_="server_error", code="timeout")

            # Streamed, wait for the first segment (or the end) so that bad input still gets a 4xx.
            first_segment = asyncio.ensure_future(segments.get()) if stream else None
            waited: asyncio.Future[Any] = first_segment or job.future
            await asyncio.wait(
                {waited, left}, timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )  # fmt: skip
            if not waited.done():
                if first_segment is not None:
                    first_segment.cancel()  # never the job's future: its thread would go on
                reason: Reason = "client_disconnected" if left.done() else "timeout"
                job.cancel(reason)
                raise client_left() if left.done() else timed_out()
            if first_segment is None:
                result = job.future.result()  # raises the error, if any, through the handlers
                observe(result)
                body = render(result, response_format)
                return Response(body, media_type=MEDIA_TYPES.get(response_format, "text/plain"))
            first = first_segment.result()
            if first is None:
                job.future.result()  # raises the error, if any, through the handlers
            return JobStream(_events(first, job, segments, observe, deadline), job)

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
        return await transcribe(request, file, model, options, response_format, stream)

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
        return await transcribe(request, file, model, options, response_format, False)

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

    app.include_router(realtime_router(settings, pool, metrics, audit, keys))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )  # fmt: skip
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes + FORM_OVERHEAD)
    app.add_middleware(AuditTrail, audit=audit, metrics=metrics, keys=keys)  # sees every answer
    return app


async def _events(
    first: Segment | None,
    job: Job,
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
            job.cancel("timeout")
            message = "transcription ran past the request time limit"
            yield _event(error_body(message, "server_error", None, "timeout"))
            return
    try:
        result = job.future.result()
    except OfflineAsrError as error:
        api = from_domain(error)
        yield _event(error_body(api.message, api.type, api.param, api.code))
        return
    observe(result)
    usage = {"type": "duration", "seconds": math.ceil(result.duration)}
    yield _event({"type": "transcript.text.done", "text": result.text, "usage": usage})


class JobStream(StreamingResponse):
    """Server-sent events of a job; however the response ends (the client left, even before
    the first event), a job still running is stopped."""

    def __init__(self, events: AsyncIterator[str], job: Job) -> None:
        super().__init__(events, media_type="text/event-stream")
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel("client_disconnected")  # no-op when done or already stopping


def client_left() -> ApiError:
    """For the record: the client is gone, so nobody receives this answer."""
    return ApiError(499, "the client closed the connection", code="client_disconnected")


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
