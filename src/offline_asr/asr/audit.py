"""The audit log: JSON lines to stderr or a file, and the keyed ids of API keys.

It answers "which model version produced this transcript": model id, manifest_version, weights
fingerprint, the audio's sha256, options, latency and outcome. The command line writes one line
per transcription (`record`); the service one line per request (see `service/audit_trail.py`)
with the same transcription fields. The transcript itself is written only when asked
(`include_text`). API keys appear only as an HMAC under a secret of the server's, so that the
log cannot be used to test guesses of a key.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from offline_asr.asr.base import DecodeOptions, TranscriptionResult
from offline_asr.errors import OfflineAsrError

SECRET_BYTES = 32
KEY_ID_HEX = 16


def transcription_fields(
    *,
    model_id: str,
    audio_sha256: str,
    options: DecodeOptions,
    result: TranscriptionResult | None = None,
    manifest_version: int | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """What a line says about a transcription: the model and weights (of the result when there
    is one, else of the loaded model when known), the audio, the options and the runtime."""
    return {
        "model_id": result.model_id if result else model_id,
        "manifest_version": result.manifest_version if result else manifest_version,
        "fingerprint": result.fingerprint if result else fingerprint,
        "audio_sha256": audio_sha256,
        "duration_s": round(result.duration, 3) if result else None,
        "language": result.language if result else None,
        "options": options.model_dump(exclude_none=True),
        "runtime": result.runtime if result else None,
        "text": result.text if result else None,
    }


class AuditLog:
    """Append-only JSON lines; safe to share between threads."""

    def __init__(self, path: Path | None = None, *, include_text: bool = False) -> None:
        self.path = path
        self.include_text = include_text
        self._lock = threading.Lock()

    def write(self, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Write one line (time and event first) and return it; `text` only if asked for."""
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "event": event,
            **fields,
        }
        if not self.include_text or entry.get("text") is None:
            entry.pop("text", None)
        line = json.dumps(entry, ensure_ascii=False)
        with self._lock:
            if self.path is None:
                self._append(sys.stderr, line)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as stream:
                    self._append(stream, line)
        return entry

    @staticmethod
    def _append(stream: TextIO, line: str) -> None:
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
        """Write one line for a finished (or failed) transcription and return it (the command
        line's line; the service writes one per request).

        A failure carries the loaded model's `manifest_version` and `fingerprint` when known.
        """
        fields = transcription_fields(
            model_id=model_id, audio_sha256=audio_sha256, options=options, result=result,
            manifest_version=manifest_version, fingerprint=fingerprint,
        )  # fmt: skip
        failure = {} if error is None else {"error": error}
        return self.write("transcription", {
            "outcome": "ok" if error is None else "error", **fields,
            "latency_s": round(latency_s, 3), **context, **failure,
        })  # fmt: skip


def key_id(secret: bytes, key: str) -> str:
    """The audit log's name for an API key: the start of its HMAC-SHA256 under `secret`."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:KEY_ID_HEX]


def load_secret(path: Path) -> bytes:
    """The key-id secret in `path` (64 hex digits), created with mode 600 if missing.

    The same file gives the same ids after a restart, so audit reports can follow a key over
    time; a file others can read is refused, since whoever has it can test guesses of a key.
    """
    if not path.exists():
        try:
            _create_secret(path)
        except OSError as error:
            raise OfflineAsrError(
                f"cannot create the audit secret {path}: {error.strerror}; make its folder "
                "writable, or set OFFLINE_ASR_AUDIT_SECRET_FILE"
            ) from error
    try:
        info = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise OfflineAsrError(f"cannot read the audit secret {path}: {error}") from error
    if not stat.S_ISREG(info.st_mode):
        raise OfflineAsrError(f"the audit secret {path} is not a regular file")
    if info.st_mode & 0o077:
        raise OfflineAsrError(
            f"the audit secret {path} can be read by others (mode "
            f"{stat.S_IMODE(info.st_mode):o}); run `chmod 600 {path}`"
        )
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) != SECRET_BYTES:
        raise OfflineAsrError(
            f"{path} is not an audit secret (expected {2 * SECRET_BYTES} hex digits); remove it "
            "to have a new one made, which changes every API key id in the audit log"
        )
    return secret


def _create_secret(path: Path) -> None:
    """Write a new secret in a private temporary file, then link it into place: a concurrent
    start that wins the race keeps its secret, and this one reads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)  # left by a killed process that had this pid
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as stream:
            stream.write(secrets.token_hex(SECRET_BYTES) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        with contextlib.suppress(FileExistsError):  # another start made one first: use it
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
