"""`/v1/realtime`: live transcription over a WebSocket, as OpenAI's Realtime API defines a
transcription session (`?intent=transcription`).

The client sends `session.update` and base64 PCM16 in `input_audio_buffer.append`; turns end by
server VAD (`input_audio_buffer.speech_started` / `speech_stopped`) or by the client's
`input_audio_buffer.commit`, and each committed turn is transcribed by the pool's verified model
through `Transcriber.transcribe_stream` on the turn's audio as a WAV file: the very path of an
upload to the file API, so the `.completed` text is the file API's text for that audio, and the
audit line (one per turn) names the same audio sha256. While a turn goes on, partial
transcriptions of its audio so far give `.delta` events.

Every session is bounded: a number of sessions at a time, a length, a buffer size. Past them the
client gets an `error` event and the socket is closed. Each session runs at most one
transcription at a time on a thread of the realtime pool; a session that ends (the client left,
a limit) asks it to stop and frees its place only when the thread has really ended.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from offline_asr.asr.audio import decode_audio
from offline_asr.asr.audit import AuditLog
from offline_asr.asr.base import DecodeOptions, Segment, TranscriptionEngine
from offline_asr.asr.transcriber import Cancelled
from offline_asr.errors import OfflineAsrError
from offline_asr.service.audit_trail import Facts
from offline_asr.service.errors import error_body, from_domain
from offline_asr.service.keys import KeyRing
from offline_asr.service.metrics import Metrics
from offline_asr.service.partials import PartialText
from offline_asr.service.pool import ModelPool
from offline_asr.service.realtime_events import (
    CLIENT_EVENTS,
    ProtocolError,
    SessionConfig,
    error_event,
    event,
    new_id,
    updated,
)
from offline_asr.service.served_release import ServedRelease
from offline_asr.service.settings import ServiceSettings
from offline_asr.service.turns import BYTES_PER_SAMPLE, InputBuffer, SpeechStarted, Turn, wav_bytes

PATH = "/v1/realtime"
SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL = "openai-insecure-api-key."  # how browsers pass a key (no headers there)
MIN_COMMIT_MS = 100  # OpenAI's smallest committed turn
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_ERROR, CLOSE_TRY_LATER = (
    1000, 1008, 1009, 1011, 1013,
)  # fmt: skip
T = TypeVar("T")
log = logging.getLogger(__name__)


class _Ended(Exception):  # noqa: N818  # not an error: how the receive loop stops
    def __init__(self, reason: str) -> None:
        self.reason = reason


def api_key_of(websocket: WebSocket) -> str:
    """An `Authorization` header, else the key a browser puts in a subprotocol, as a header."""
    header = websocket.headers.get("authorization", "")
    if header:
        return header
    for protocol in websocket.scope.get("subprotocols", []):
        if protocol.startswith(KEY_SUBPROTOCOL):
            return "Bearer " + str(protocol).removeprefix(KEY_SUBPROTOCOL)
    return ""


def realtime_router(
    settings: ServiceSettings, pool: ModelPool, metrics: Metrics, audit: AuditLog, keys: KeyRing
) -> APIRouter:
    """The WebSocket route; sessions share a slot count and a thread pool of their own."""
    router = APIRouter()
    limit = settings.realtime_max_sessions
    executor = ThreadPoolExecutor(max_workers=max(1, limit), thread_name_prefix="realtime")
    open_sessions = 0

    def refused(websocket: WebSocket, key_id: str | None, reason: str, message: str) -> None:
        metrics.realtime_sessions_ended.labels(reason).inc()
        audit.write("realtime_session", {
            "session_id": None, "path": PATH, "outcome": "error", "error_code": reason,
            "client": websocket.client.host if websocket.client else None,
            "api_key_id": key_id, "manifest_version": pool.current.version, "error": message,
        })  # fmt: skip

    @router.websocket(PATH)
    async def realtime(websocket: WebSocket) -> None:
        nonlocal open_sessions
        key_id = keys.identify(api_key_of(websocket))
        if keys.required and key_id is None:
            message = (
                "missing or invalid API key (Authorization: Bearer KEY, or the subprotocol "
                f"{KEY_SUBPROTOCOL}KEY)"
            )
            refused(websocket, None, "invalid_api_key", message)
            await _deny(websocket, message)
            return
        origin = websocket.headers.get("origin")
        if not _same_site(websocket, origin) and origin not in settings.cors_origins:
            message = f"origin {origin} may not open live sessions (OFFLINE_ASR_CORS_ORIGINS)"
            refused(websocket, key_id, "origin_not_allowed", message)
            await websocket.close(CLOSE_POLICY, "origin not allowed")
            return
        offered = websocket.scope.get("subprotocols", [])
        await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        intent = websocket.query_params.get("intent", "transcription")
        if intent != "transcription":
            message = f"intent {intent!r} is not served here: connect with ?intent=transcription"
            refused(websocket, key_id, "unsupported_intent", message)
            await _close_with(websocket, error_event(message, code="invalid_value", param="intent"),
                              CLOSE_POLICY)  # fmt: skip
            return
        if open_sessions >= limit:
            message = (
                f"the server has {limit} live sessions open, its maximum; retry later "
                "(OFFLINE_ASR_REALTIME_MAX_SESSIONS)"
            )
            refused(websocket, key_id, "session_limit", message)
            error = error_event(message, code="session_limit_reached", type_="rate_limit_exceeded")
            await _close_with(websocket, error, CLOSE_TRY_LATER)
            return
        open_sessions += 1
        metrics.realtime_sessions.set(open_sessions)
        try:
            model = websocket.query_params.get("model") or settings.models[0]
            session = LiveSession(
                websocket, settings=settings, pool=pool, metrics=metrics, audit=audit,
                executor=executor, key_id=key_id, config=SessionConfig(model=model),
            )  # fmt: skip
            await session.run()
        finally:
            open_sessions -= 1
            metrics.realtime_sessions.set(open_sessions)

    return router


def _same_site(websocket: WebSocket, origin: str | None) -> bool:
    """No Origin (not a browser), or the page came from this server: a page elsewhere could
    otherwise use the server through the visitor's browser (WebSockets have no CORS)."""
    if origin is None:
        return True
    host = websocket.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


async def _deny(websocket: WebSocket, message: str) -> None:
    """401 at the handshake, in OpenAI's error shape, where the server can send one."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = error_body(message, "invalid_request_error", None, "invalid_api_key")
        await websocket.send_denial_response(JSONResponse(body, status_code=401))
    else:
        await websocket.close(CLOSE_POLICY, "invalid API key")


async def _close_with(websocket: WebSocket, error: dict[str, Any], code: int) -> None:
    """Send an error event and close; a client already gone is not an error."""
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await websocket.send_text(json.dumps(error))
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await websocket.close(code, error["error"]["code"])


class LiveSession:
    """One transcription session: the receive loop here, transcriptions in `_decode_loop`."""

    release: ServedRelease  # leased for the session's life by `run`

    def __init__(
        self,
        websocket: WebSocket,
        *,
        settings: ServiceSettings,
        pool: ModelPool,
        metrics: Metrics,
        audit: AuditLog,
        executor: ThreadPoolExecutor,
        key_id: str | None,
        config: SessionConfig,
    ) -> None:
        self.ws, self.settings, self.pool = websocket, settings, pool
        self.metrics, self.audit, self.executor = metrics, audit, executor
        self.key_id = key_id
        self.client = websocket.client.host if websocket.client else None
        self.id = new_id("sess")
        self.config = config
        self.buffer = InputBuffer(config.rate, config.vad)
        self.expires_at = time.time() + settings.realtime_max_session_s
        self.cancel = threading.Event()
        self.wake = asyncio.Event()
        self.turns: deque[tuple[Turn, str, float]] = deque()
        self.item: str | None = None  # the item the buffered audio will become
        self.previous_item: str | None = None
        self.partials: dict[str, PartialText] = {}
        self.partial_seconds = 0.0  # audio of the current item at its last partial
        self.running: asyncio.Future[Any] | None = None  # the thread in flight
        self.turn_count = 0
        self._send_lock = asyncio.Lock()
        self._open = True

    # -- the session's life ----------------------------------------------------------------

    async def run(self) -> None:
        """The session, on the release current when it opened (kept to its end, whatever
        switches meanwhile: every turn names the same manifest_version)."""
        with self.pool.lease() as release:
            self.release = release
            await self._run()

    async def _run(self) -> None:
        started = time.monotonic()
        reason, error = "client_closed", None
        decoder = asyncio.create_task(self._decode_loop())
        try:
            await self._check_model(self.config)
            await self.send(event("session.created", session=self._describe()))
            await self._receive_loop(decoder)
        except _Ended as ended:
            reason = ended.reason
        except ProtocolError as problem:  # the model named at connection cannot be served
            reason, error = "invalid_model", problem.message
            await self._end(error_event(problem.message, code=problem.code, param="model"),
                            CLOSE_POLICY)  # fmt: skip
        finally:
            self.cancel.set()
            decoder.cancel()
            await asyncio.wait({decoder})
            if self.running is not None:  # the thread stops at its next check; wait for it
                await asyncio.wait({self.running})
            with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
                await self.ws.close(CLOSE_NORMAL)
            self.metrics.realtime_sessions_ended.labels(reason).inc()
            self.audit.write("realtime_session", {
                "session_id": self.id, "path": PATH,
                "outcome": "ok" if reason == "client_closed" else "error",
                "error_code": None if reason == "client_closed" else reason,
                "client": self.client, "api_key_id": self.key_id, "turns": self.turn_count,
                "manifest_version": self.release.version,
                "seconds": round(time.monotonic() - started, 3),
                **({} if error is None else {"error": error}),
            })  # fmt: skip

    async def _receive_loop(self, decoder: asyncio.Task[None]) -> None:
        while True:
            remaining = self.expires_at - time.time()
            if remaining <= 0:
                minutes = self.settings.realtime_max_session_s / 60
                expired = f"the session reached its maximum length ({minutes:g} min); reconnect"
                await self._end(error_event(expired, code="session_expired"), CLOSE_NORMAL)
                raise _Ended("session_expired")
            receiving = asyncio.ensure_future(self.ws.receive())
            done, _ = await asyncio.wait(
                {receiving, decoder}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if decoder in done:
                receiving.cancel()
                raise _Ended("server_error")
            if receiving not in done:
                receiving.cancel()
                continue
            message = receiving.result()
            if message["type"] == "websocket.disconnect":
                self._open = False
                raise _Ended("client_closed")
            if message.get("text") is None:
                await self.send(error_event(
                    "binary frames are not part of the protocol: send JSON text events",
                    code="invalid_event"))  # fmt: skip
                continue
            await self._handle(message["text"])

    async def _end(self, error: dict[str, Any], code: int) -> None:
        await self.send(error)
        self._open = False
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await self.ws.close(code, error["error"]["code"])

    async def send(self, payload: dict[str, Any]) -> None:
        """Send an event; once the client is gone, nothing is sent."""
        if not self._open:
            return
        async with self._send_lock:
            try:
                await self.ws.send_text(json.dumps(payload, ensure_ascii=False))
            except (RuntimeError, OSError, WebSocketDisconnect):
                self._open = False

    def _describe(self) -> dict[str, Any]:
        return self.config.describe(self.id, int(self.expires_at))

    # -- client events ---------------------------------------------------------------------

    async def _handle(self, text: str) -> None:
        event_id = None
        try:
            try:
                data = json.loads(text)
            except (ValueError, RecursionError):
                raise ProtocolError("the frame is not JSON: send one JSON event per text frame",
                                    code="invalid_json") from None  # fmt: skip
            if not isinstance(data, dict) or not isinstance(data.get("type"), str):
                raise ProtocolError('an event is a JSON object with a "type"',
                                    code="invalid_event", param="type")  # fmt: skip
            event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
            kind = data["type"]
            if kind == "session.update":
                await self._update(data.get("session"))
            elif kind == "input_audio_buffer.append":
                await self._append(data.get("audio"))
            elif kind == "input_audio_buffer.commit":
                await self._commit()
            elif kind == "input_audio_buffer.clear":
                self.buffer.clear()
                self._forget_item()
                await self.send(event("input_audio_buffer.cleared"))
            else:
                raise ProtocolError(
                    f"unknown or unsupported event type {kind[:64]!r}; a transcription session "
                    f"takes {', '.join(CLIENT_EVENTS)}", code="invalid_value", param="type",
                )  # fmt: skip
        except ProtocolError as problem:
            await self.send(error_event(
                problem.message, code=problem.code, param=problem.param, event_id=event_id
            ))  # fmt: skip

    async def _update(self, session: object) -> None:
        new = updated(self.config, session)
        if new.rate != self.config.rate and self.buffer.size:
            raise ProtocolError(
                "the input rate can change only while the input audio buffer is empty: "
                "commit or clear it first",
                code="invalid_value", param="session.audio.input.format.rate",
            )  # fmt: skip
        await self._check_model(new)
        if new.rate != self.config.rate or new.vad != self.config.vad:
            self.buffer.reconfigure(new.rate, new.vad)
        self.config = new
        await self.send(event("session.updated", session=self._describe()))

    async def _check_model(self, config: SessionConfig) -> None:
        """The model is served here (loaded now if it was not: verified first) and knows the
        language; otherwise the update is refused and the session keeps its configuration."""
        param = "session.audio.input.transcription"
        try:
            options = _options(config)
        except ValueError as error:
            raise ProtocolError(f"{param}: {error}", code="invalid_value", param=param) from None
        try:
            transcriber = await self._in_thread(lambda: self.release.get(config.model))
        except OfflineAsrError as error:
            api = from_domain(error)
            raise ProtocolError(api.message, code=api.code or "invalid_value",
                                param=f"{param}.model") from None  # fmt: skip
        backend = transcriber.engine
        if (
            isinstance(backend, TranscriptionEngine) and backend.model is not None
            and options.language is not None and options.language not in backend.model.languages
        ):  # fmt: skip
            raise ProtocolError(
                f"model {config.model!r} does not know language {options.language!r} (it has: "
                f"{', '.join(backend.model.languages)})",
                code="unsupported_language", param=f"{param}.language",
            )  # fmt: skip

    async def _append(self, audio: object) -> None:
        if not isinstance(audio, str):
            raise ProtocolError("input_audio_buffer.append needs `audio`: base64 of PCM16 mono",
                                code="invalid_value", param="audio")  # fmt: skip
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("`audio` is not valid base64", code="invalid_base64",
                                param="audio") from None  # fmt: skip
        if len(pcm) % BYTES_PER_SAMPLE:
            raise ProtocolError(
                f"`audio` holds {len(pcm)} bytes, an odd number: PCM16 samples are 2 bytes each, "
                "so send whole samples (nothing of this event was kept)",
                code="invalid_audio_length", param="audio",
            )  # fmt: skip
        limit = self.settings.realtime_max_buffer_bytes
        if self.buffer.size + len(pcm) > limit:
            message = (
                f"the input audio buffer would hold more than {limit:,} bytes: commit turns "
                "sooner, or turn server VAD on (OFFLINE_ASR_REALTIME_MAX_BUFFER_BYTES)"
            )
            await self._end(error_event(message, code="input_audio_buffer_too_large"),
                            CLOSE_TOO_BIG)  # fmt: skip
            raise _Ended("buffer_too_large")
        if not pcm:
            return
        if self.config.vad is None and self.item is None:
            self.item = new_id("item")
        for happened in self.buffer.append(pcm):
            if isinstance(happened, SpeechStarted):
                self.item = self.item or new_id("item")
                await self.send(
                    event(
                        "input_audio_buffer.speech_started",
                        audio_start_ms=happened.audio_start_ms,
                        item_id=self.item,
                    )
                )
            else:
                item = self.item or new_id("item")
                await self.send(
                    event(
                        "input_audio_buffer.speech_stopped",
                        audio_end_ms=happened.audio_end_ms,
                        item_id=item,
                    )
                )
                await self._queue(happened)
        self.wake.set()

    async def _commit(self) -> None:
        held_ms = self.buffer.held_ms
        if held_ms < MIN_COMMIT_MS:
            raise ProtocolError(
                f"the input audio buffer holds {held_ms} ms of audio; a turn needs at least "
                f"{MIN_COMMIT_MS} ms", code="input_audio_buffer_commit_empty",
            )  # fmt: skip
        await self._queue(self.buffer.commit())

    async def _queue(self, turn: Turn) -> None:
        item = self.item or new_id("item")
        await self.send(event("input_audio_buffer.committed", item_id=item,
                              previous_item_id=self.previous_item))  # fmt: skip
        self.previous_item = item
        self.item, self.partial_seconds = None, 0.0
        self.turns.append((turn, item, time.perf_counter()))
        self.wake.set()

    def _forget_item(self) -> None:
        if self.item is not None:
            self.partials.pop(self.item, None)
        self.item, self.partial_seconds = None, 0.0

    # -- transcriptions --------------------------------------------------------------------

    async def _decode_loop(self) -> None:
        """Committed turns first, in order; partial text of the turn in progress when idle."""
        try:
            while True:
                if self.turns:
                    await self._final(*self.turns.popleft())
                elif (due := self._partial_due()) is not None:
                    await self._partial(*due)
                else:
                    self.wake.clear()
                    await self.wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("live session %s failed", self.id)
            await self._end(error_event(
                f"internal error in session {self.id}; see the server log",
                code="server_error", type_="server_error"), CLOSE_ERROR)  # fmt: skip

    def _partial_due(self) -> tuple[str, bytes] | None:
        interval = self.settings.realtime_partial_interval_s
        if interval <= 0 or self.item is None or self.buffer.quiet:
            return None  # no deltas wanted, no turn going on, or silence began: it may end
        pcm = self.buffer.current()
        if pcm is None:
            return None
        seconds = len(pcm) / BYTES_PER_SAMPLE / self.config.rate
        if seconds - self.partial_seconds < interval:
            return None
        self.partial_seconds = seconds
        return self.item, pcm

    async def _partial(self, item: str, pcm: bytes) -> None:
        # The final text's options: previews that decode like it agree with it more often.
        config, options = self.config, _options(self.config)

        def work() -> str:
            audio = decode_audio(wav_bytes(pcm, config.rate), limits=self.pool.limits,
                                 name=f"the audio of {item} so far")  # fmt: skip
            result = self.release.get(config.model).engine.transcribe(audio, options, self._checked)
            return result.text

        try:
            text = await self._in_thread(work)
        except (OfflineAsrError, Cancelled):
            return  # silence so far, say; the turn's final text reports real errors
        if item != self.item:
            return  # the turn was committed or cleared meanwhile: its final text follows
        delta = self.partials.setdefault(item, PartialText()).hypothesis(text)
        if delta:
            await self.send(self._delta(item, delta))

    async def _final(self, turn: Turn, item: str, ended: float) -> None:
        config, options, facts = self.config, _options(self.config), Facts()

        def work() -> Any:
            return self.release.get(config.model).transcribe_stream(
                io.BytesIO(turn.wav()), f"the audio of {item}", options, cancel=self.cancel,
                on_fields=facts.update,
            )  # fmt: skip

        line: dict[str, Any] = {"model_id": config.model, "item_id": item, "cancelled": None}
        try:
            result = await self._in_thread(work)
        except Cancelled:
            line.update(cancelled="client_disconnected", error="the session ended first")
            self._audit_turn(facts, ended, line, code="client_disconnected")
            return
        except OfflineAsrError as error:
            api = from_domain(error)
            failure = {"type": api.type, "code": api.code, "message": api.message,
                       "param": api.param}  # fmt: skip
            await self.send(event("conversation.item.input_audio_transcription.failed",
                                  item_id=item, content_index=0, error=failure))  # fmt: skip
            line.update(error=api.message)
            self._audit_turn(facts, ended, line, code=api.code or "error")
            return
        last = self.partials.pop(item, PartialText()).final(result.text)
        if last:
            await self.send(self._delta(item, last))
        await self.send(event(
            "conversation.item.input_audio_transcription.completed", item_id=item,
            content_index=0, transcript=result.text,
            usage={"type": "duration", "seconds": round(turn.seconds, 3)},
        ))  # fmt: skip
        self.metrics.realtime_turn_latency.labels(config.model).observe(time.perf_counter() - ended)
        self._audit_turn(facts, ended, line, code=None)

    def _audit_turn(
        self, facts: Facts, ended: float, line: dict[str, Any], code: str | None
    ) -> None:
        """One line per turn, with the file API's transcription fields."""
        self.turn_count += 1
        known = {**line, **facts.snapshot(), "manifest_version": self.release.version}
        outcome = "ok" if code is None else "error"
        self.metrics.realtime_turns.labels(known["model_id"], outcome).inc()
        self.audit.write("transcription", {
            "request_id": self.id, "session_id": self.id, "path": PATH,
            "outcome": outcome, "error_code": code, "client": self.client,
            "api_key_id": self.key_id, "latency_s": round(time.perf_counter() - ended, 3), **known,
        })  # fmt: skip

    def _delta(self, item: str, delta: str) -> dict[str, Any]:
        return event("conversation.item.input_audio_transcription.delta", item_id=item,
                     content_index=0, delta=delta)  # fmt: skip

    def _checked(self, segment: Segment) -> None:
        if self.cancel.is_set():
            raise Cancelled

    async def _in_thread(self, work: Callable[[], T]) -> T:
        """Run on the realtime pool; cancelling the caller leaves `running` to be waited for."""
        future = asyncio.get_running_loop().run_in_executor(self.executor, work)
        self.running = future
        result = await asyncio.shield(future)
        self.running = None
        return result


def _options(config: SessionConfig) -> DecodeOptions:
    """The file API's options for the same language and prompt (raises ValueError)."""
    return DecodeOptions(language=config.language, initial_prompt=config.prompt)
