"""What one result line says, and the request key that decides whether a file is done.

A file is done when the results hold a line for its audio (sha256) under the same request:
model id, the weights' fingerprint, the decode options and the long-form batch size. Another
model version, other options or other weights mean a new line.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from offline_asr.asr.base import DecodeOptions, TranscriptionResult, fingerprint
from offline_asr.asr.formats import _provenance
from offline_asr.asr.router import AUTO_MODEL
from offline_asr.registry.schemas import Manifest

Line = dict[str, Any]


def request_key(
    manifest: Manifest, model_id: str, options: DecodeOptions, long_form_batch_size: int
) -> str:
    """A short id of everything but the audio that decides the output (`auto`: every model)."""
    models = manifest.models if model_id == AUTO_MODEL else [manifest.get(model_id)]
    request = {
        "model_id": model_id,
        "fingerprints": sorted(fingerprint(model) for model in models if model is not None),
        "options": options.model_dump(mode="json"),
        "long_form_batch_size": long_form_batch_size,
    }
    text = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def ok_line(
    path: str, audio_sha256: str, request: str, result: TranscriptionResult, latency_s: float
) -> Line:
    """Transcript, segments and the provenance block of one file."""
    return {
        "path": path,
        "status": "ok",
        "audio_sha256": audio_sha256,
        "request": request,
        "text": result.text,
        "language": result.language,
        "duration": result.duration,
        "segments": [segment.model_dump(mode="json") for segment in result.segments],
        "provenance": _provenance(result)["x_offline_asr"] | {"audio_sha256": audio_sha256},
        "latency_s": round(latency_s, 3),
        "time": _now(),
    }


def error_line(
    path: str, audio_sha256: str | None, request: str, model_id: str, error: Exception
) -> Line:
    """A file that could not be transcribed: which, why, and with which request."""
    return {
        "path": path,
        "status": "error",
        "audio_sha256": audio_sha256,
        "request": request,
        "model_id": model_id,
        "error_type": type(error).__name__,
        "error": str(error),
        "time": _now(),
    }


def copy_line(line: Line, path: str) -> Line:
    """The result of identical audio under another path (not transcribed twice)."""
    return {**line, "path": path, "same_audio_as": line["path"], "time": _now()}
