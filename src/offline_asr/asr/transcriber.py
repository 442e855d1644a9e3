"""The transcription pipeline, one for the command line and the service: decode, transcribe,
audit."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from offline_asr.asr.audio import AudioLimits, decode_audio
from offline_asr.asr.audit import AuditLog, transcription_fields
from offline_asr.asr.base import (
    DecodeOptions,
    OnSegment,
    Segment,
    TranscriptionEngine,
    TranscriptionResult,
)
from offline_asr.asr.loader import LoadOptions, load_engine
from offline_asr.asr.router import AUTO_MODEL, AutoRouter
from offline_asr.errors import OfflineAsrError
from offline_asr.fsutil import sha256_file
from offline_asr.pcm import SAMPLE_RATE, Audio
from offline_asr.registry.snapshot import ManifestSnapshot

OnFields = Callable[[dict[str, Any]], None]
"""Told the audit fields as they become known: the model and audio first, the result last."""


class Cancelled(Exception):  # noqa: N818  # not an error: the caller asked for it
    """The caller set the cancel event; the work stopped at the next segment (or batch)."""


class Transcriber:
    """The transcription pipeline: decode (within the audio limits), transcribe with a loaded
    engine (or the `auto` router), and, for the command line, write the audit log (the service
    writes its own line per request from `on_fields`)."""

    def __init__(
        self,
        engine: TranscriptionEngine | AutoRouter,
        *,
        audit: AuditLog | None,
        limits: AudioLimits | None = None,
    ) -> None:
        self.engine = engine
        self.model_id = engine.model_id
        self.audit = audit
        self.limits = limits or AudioLimits()

    @classmethod
    def load(
        cls,
        snapshot: ManifestSnapshot,
        model_id: str,
        options: LoadOptions,
        *,
        audit: AuditLog | None,
        limits: AudioLimits | None = None,
    ) -> Transcriber:
        """The pipeline around the model `model_id` (or `auto`) of `snapshot`, loaded through
        the loader (its files verified first)."""
        engine = (
            AutoRouter(snapshot, options)
            if model_id == AUTO_MODEL
            else load_engine(snapshot, model_id, options)
        )
        return cls(engine, audit=audit, limits=limits)

    def transcribe_file(
        self,
        path: Path,
        options: DecodeOptions,
        on_audio: Callable[[float], None] | None = None,
        on_segment: OnSegment | None = None,
    ) -> TranscriptionResult:
        """Decode and transcribe a file; `on_audio(duration_s)` is told the length first."""
        if not path.is_file():
            raise OfflineAsrError(f"{path}: no such file")
        digest = sha256_file(path).sha256
        return self._run(
            lambda: decode_audio(path, limits=self.limits), digest, options, on_audio=on_audio,
            on_segment=on_segment,
        )  # fmt: skip

    def transcribe_stream(
        self,
        stream: BinaryIO,
        name: str,
        options: DecodeOptions,
        on_segment: OnSegment | None = None,
        *,
        cancel: threading.Event | None = None,
        on_fields: OnFields | None = None,
    ) -> TranscriptionResult:
        """An upload: hashed in chunks, then decoded from the same seekable stream.

        Setting `cancel` stops the work with `Cancelled` after the decoding or the next segment.
        """
        digest = hashlib.sha256()
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
        stream.seek(0)
        return self._run(
            lambda: decode_audio(stream, limits=self.limits, name=name), digest.hexdigest(),
            options, on_segment=on_segment, cancel=cancel, on_fields=on_fields,
        )  # fmt: skip

    def _run(
        self,
        decode: Callable[[], Audio],
        digest: str,
        options: DecodeOptions,
        *,
        on_audio: Callable[[float], None] | None = None,
        on_segment: OnSegment | None = None,
        cancel: threading.Event | None = None,
        on_fields: OnFields | None = None,
    ) -> TranscriptionResult:
        started = time.perf_counter()
        engine = self.engine if isinstance(self.engine, TranscriptionEngine) else None
        known: dict[str, Any] = {
            "model_id": self.model_id, "audio_sha256": digest, "options": options,
            "manifest_version": engine.manifest_version if engine else None,
            "fingerprint": engine.fingerprint if engine else None,
        }  # fmt: skip
        if on_fields is not None:
            on_fields(transcription_fields(**known))

        def checked(segment: Segment) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            if on_segment is not None:
                on_segment(segment)

        try:
            audio = decode()
            if cancel is not None and cancel.is_set():
                raise Cancelled
            if on_audio is not None:
                on_audio(len(audio) / SAMPLE_RATE)
            result = self.engine.transcribe(audio, options, checked)
        except OfflineAsrError as error:
            if self.audit is not None:
                latency = time.perf_counter() - started
                self.audit.record(**known, latency_s=latency, error=str(error))
            raise
        if on_fields is not None:
            on_fields(transcription_fields(**known, result=result))
        if self.audit is not None:
            self.audit.record(**known, latency_s=time.perf_counter() - started, result=result)
        return result
