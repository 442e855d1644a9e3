"""One entry point for the command line and the service: decode, transcribe, audit."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from offline_asr.asr import load_engine
from offline_asr.asr.base import (
    Audio,
    DecodeOptions,
    OnSegment,
    TranscriptionEngine,
    TranscriptionResult,
)
from offline_asr.asr.router import AUTO_MODEL, AutoRouter
from offline_asr.audio import AudioLimits, decode_audio
from offline_asr.audit import AuditLog
from offline_asr.constants import SAMPLE_RATE
from offline_asr.errors import OfflineAsrError
from offline_asr.registry.integrity import sha256_file
from offline_asr.registry.store import ModelStore


class Backend(Protocol):
    def transcribe(
        self, audio: Audio, options: DecodeOptions, on_segment: OnSegment | None = None
    ) -> TranscriptionResult: ...


class Transcriber:
    """A loaded model (or the `auto` router) plus the audit log and the audio limits."""

    def __init__(
        self,
        store: ModelStore,
        model_id: str,
        *,
        audit: AuditLog,
        limits: AudioLimits | None = None,
        **engine_options: Any,
    ) -> None:
        self.model_id = model_id
        self.audit = audit
        self.limits = limits or AudioLimits.from_settings()
        self.backend: Backend = (
            AutoRouter(store, **engine_options)
            if model_id == AUTO_MODEL
            else load_engine(store, model_id, **engine_options)
        )

    def transcribe_file(
        self,
        path: Path,
        options: DecodeOptions,
        on_audio: Callable[[float], None] | None = None,
        on_segment: OnSegment | None = None,
        **context: Any,
    ) -> TranscriptionResult:
        """Decode and transcribe a file; `on_audio(duration_s)` is told the length first."""
        if not path.is_file():
            raise OfflineAsrError(f"{path}: no such file")
        digest = sha256_file(path).sha256
        return self._run(
            lambda: decode_audio(path, limits=self.limits), digest, options, on_audio, on_segment,
            context,
        )  # fmt: skip

    def transcribe_stream(
        self,
        stream: BinaryIO,
        name: str,
        options: DecodeOptions,
        on_segment: OnSegment | None = None,
        **context: Any,
    ) -> TranscriptionResult:
        """An upload: hashed in chunks, then decoded from the same seekable stream."""
        digest = hashlib.sha256()
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
        stream.seek(0)
        return self._run(
            lambda: decode_audio(stream, limits=self.limits, name=name), digest.hexdigest(),
            options, None, on_segment, context,
        )  # fmt: skip

    def _run(
        self,
        decode: Callable[[], Audio],
        digest: str,
        options: DecodeOptions,
        on_audio: Callable[[float], None] | None,
        on_segment: OnSegment | None,
        context: dict[str, Any],
    ) -> TranscriptionResult:
        started = time.perf_counter()
        try:
            audio = decode()
            if on_audio is not None:
                on_audio(len(audio) / SAMPLE_RATE)
            result = self.backend.transcribe(audio, options, on_segment)
        except OfflineAsrError as error:
            engine = self.backend if isinstance(self.backend, TranscriptionEngine) else None
            self.audit.record(
                model_id=self.model_id, audio_sha256=digest, options=options,
                latency_s=time.perf_counter() - started, error=str(error),
                manifest_version=engine.manifest_version if engine else None,
                fingerprint=engine.fingerprint if engine else None, **context,
            )  # fmt: skip
            raise
        self.audit.record(
            model_id=self.model_id, audio_sha256=digest, options=options,
            latency_s=time.perf_counter() - started, result=result, **context,
        )  # fmt: skip
        return result
