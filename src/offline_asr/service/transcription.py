"""The OpenAI-compatible audio routes: transcriptions and translations, whole or streamed."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from offline_asr.asr.base import DecodeOptions, Segment, TranscriptionResult
from offline_asr.asr.formats import render
from offline_asr.errors import OfflineAsrError
from offline_asr.service.admission import QueueFullError
from offline_asr.service.audit_trail import facts_of
from offline_asr.service.dependencies import ApiKeyId, Service, ServiceState
from offline_asr.service.errors import ApiError, error_body, from_domain
from offline_asr.service.jobs import Job, Reason, admitted, take_upload, watching_disconnect

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
MEDIA_TYPES = {"json": "application/json", "verbose_json": "application/json"}

router = APIRouter()


async def transcribe(
    request: Request,
    service: ServiceState,
    file: UploadFile,
    model: str,
    options: DecodeOptions,
    response_format: ResponseFormat,
    stream: bool,
) -> Response:
    """Admit, run the job in a worker thread, and answer (whole, or as server-sent events)."""
    pool, settings, metrics = service.pool, service.settings, service.metrics
    pool.check(model)
    request.state.model = model  # only registered ids become metric labels
    facts = facts_of(request.scope)
    facts.update({"model_id": model})
    async with watching_disconnect(request.receive) as left:
        try:
            if not await admitted(service.admission, left):
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

            with pool.lease() as release:  # this request's release, whatever switches later

                def on_fields(fields: dict[str, Any]) -> None:
                    facts.update({**fields, "manifest_version": release.version})

                facts.update({"manifest_version": release.version})
                return release.get(model).transcribe_stream(
                    upload, file.filename or "upload", options, on_segment, cancel=cancel,
                    on_fields=on_fields,
                )  # fmt: skip

        def ended() -> None:
            upload.close()
            loop.call_soon(segments.put_nowait, None)

        started = loop.time()
        job = Job(
            work, request_id=request.state.request_id, facts=facts, admission=service.admission,
            metrics=metrics, audit=service.audit, on_end=ended,
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


@router.post("/v1/audio/transcriptions", response_model=None)
async def create_transcription(
    request: Request,
    key_id: ApiKeyId,
    service: Service,
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
    return await transcribe(request, service, file, model, options, response_format, stream)


@router.post("/v1/audio/translations", response_model=None)
async def create_translation(
    request: Request,
    key_id: ApiKeyId,
    service: Service,
    file: Annotated[UploadFile, File(description="Audio or video file")],
    model: Annotated[str, Form(description="A Whisper model id")],
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0, le=1)] = 0.0,
) -> Response:
    """Translate speech into English text (Whisper models)."""
    options = decode_options("translate", None, prompt, temperature, [])
    return await transcribe(request, service, file, model, options, response_format, False)


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
