"""The audit log: one JSON line per transcription, to stderr or a file.

It answers "which model version produced this transcript": model id, manifest_version, weights
fingerprint, the audio's sha256, options, latency and outcome. The transcript itself is written
only when asked (`include_text`).
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from offline_asr.asr.base import DecodeOptions, TranscriptionResult


class AuditLog:
    """Append-only JSON lines; safe to share between threads."""

    def __init__(self, path: Path | None = None, *, include_text: bool = False) -> None:
        self.path = path
        self.include_text = include_text
        self._lock = threading.Lock()

    def _write(self, stream: TextIO, line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    def record(
        self,
        *,
        model_id: str,
        audio_sha256: str,
        options: DecodeOptions,
        latency_s: float,
        result: TranscriptionResult | None = None,
        error: str | None = None,
        manifest_version: int | None = None,
        fingerprint: str | None = None,
        **context: Any,
    ) -> dict[str, Any]:
        """Write one line for a finished (or failed) transcription and return it.

        A failure carries the loaded model's `manifest_version` and `fingerprint` when known.
        """
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "event": "transcription",
            "outcome": "ok" if error is None else "error",
            "model_id": result.model_id if result else model_id,
            "manifest_version": result.manifest_version if result else manifest_version,
            "fingerprint": result.fingerprint if result else fingerprint,
            "audio_sha256": audio_sha256,
            "duration_s": round(result.duration, 3) if result else None,
            "language": result.language if result else None,
            "options": options.model_dump(exclude_none=True),
            "runtime": result.runtime if result else None,
            "latency_s": round(latency_s, 3),
            **context,
        }
        if error is not None:
            entry["error"] = error
        if self.include_text and result is not None:
            entry["text"] = result.text
        line = json.dumps(entry, ensure_ascii=False, sort_keys=False)
        with self._lock:
            if self.path is None:
                self._write(sys.stderr, line)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as stream:
                    self._write(stream, line)
        return entry
