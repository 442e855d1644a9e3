"""The server's settings: every knob of `offline-asr serve`, on top of the common ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from offline_asr.asr.workers import WorkerPlan
from offline_asr.config import Settings, SettingsError, env

CommaList = Annotated[list[str], NoDecode]
# A keys file is a short list of secrets; anything larger is a mistake, never read whole.
MAX_KEYS_FILE_BYTES = 64 * 1024


class ServiceSettings(Settings):
    """The common settings plus the server's; README's settings table lists the same names."""

    not_blank: ClassVar[frozenset[str]] = frozenset(
        {
            "manifest",
            "api_keys_file",
            "audit_log",
            "audit_secret_file",
            "host",
            "pidfile",
            "admin_key",
        }
    )

    models: CommaList = Field(
        default_factory=lambda: ["whisper-tiny.en"],
        validation_alias=env("models", "APP_MODEL_ID"),
        description="Models to verify and load before the port opens",
    )
    host: str = Field("127.0.0.1", validation_alias=env("host", "OFFLINE_ASR_HOST"))
    port: int = Field(8000, ge=0, le=65535, validation_alias=env("port", "OFFLINE_ASR_PORT"))
    lazy_load: bool = Field(
        True,
        validation_alias=env("lazy_load", "OFFLINE_ASR_LAZY_LOAD"),
        description="Load other registered models on their first request",
    )
    idle_unload_s: float = Field(
        0,
        ge=0,
        validation_alias=env("idle_unload_s", "OFFLINE_ASR_IDLE_UNLOAD_S"),
        description="Unload lazily loaded models unused this long (0: never)",
    )
    max_concurrency: int = Field(
        0,
        ge=0,
        validation_alias=env("max_concurrency", "OFFLINE_ASR_MAX_CONCURRENCY"),
        description="Transcriptions at a time (0: one per worker)",
    )
    max_queue: int = Field(8, ge=0, validation_alias=env("max_queue", "OFFLINE_ASR_MAX_QUEUE"))
    max_upload_bytes: int = Field(
        100_000_000, gt=0, validation_alias=env("max_upload_bytes", "OFFLINE_ASR_MAX_UPLOAD_BYTES")
    )
    request_timeout_s: float = Field(
        600, gt=0, validation_alias=env("request_timeout_s", "OFFLINE_ASR_REQUEST_TIMEOUT_S")
    )
    api_keys: CommaList = Field(
        default_factory=list, validation_alias=env("api_keys", "OFFLINE_ASR_API_KEYS")
    )
    api_keys_file: Path | None = Field(
        None, validation_alias=env("api_keys_file", "OFFLINE_ASR_API_KEYS_FILE")
    )
    cors_origins: CommaList = Field(
        default_factory=list, validation_alias=env("cors_origins", "OFFLINE_ASR_CORS_ORIGINS")
    )
    audit_secret_file: Path | None = Field(
        None,
        validation_alias=env("audit_secret_file", "OFFLINE_ASR_AUDIT_SECRET_FILE"),
        description="Secret for the API key ids in the audit log (default: beside the log)",
    )
    # Live transcription (/v1/realtime).
    realtime_max_sessions: int = Field(
        4, ge=0,
        validation_alias=env("realtime_max_sessions", "OFFLINE_ASR_REALTIME_MAX_SESSIONS"),
        description="Live sessions at a time (0: /v1/realtime off)",
    )  # fmt: skip
    realtime_max_session_s: float = Field(
        1800, gt=0,
        validation_alias=env("realtime_max_session_s", "OFFLINE_ASR_REALTIME_MAX_SESSION_S"),
    )  # fmt: skip
    realtime_max_buffer_bytes: int = Field(
        15 * 1024 * 1024, gt=0,
        validation_alias=env("realtime_max_buffer_bytes", "OFFLINE_ASR_REALTIME_MAX_BUFFER_BYTES"),
        description="Uncommitted audio a session may hold (PCM16 bytes)",
    )  # fmt: skip
    realtime_partial_interval_s: float = Field(
        1.0, ge=0,
        validation_alias=env(
            "realtime_partial_interval_s", "OFFLINE_ASR_REALTIME_PARTIAL_INTERVAL_S"
        ),
        description="New speech between two partial transcriptions of a turn (0: no deltas)",
    )  # fmt: skip

    reload_poll_s: float = Field(
        0,
        ge=0,
        validation_alias=env("reload_poll_s", "OFFLINE_ASR_RELOAD_POLL_S"),
        description="With --target: check this often whether `current` changed, and reload "
        "(0: only on SIGHUP or POST /admin/reload)",
    )

    @field_validator("models", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        """Comma-separated text to a list; set but naming nothing is an error, not "none"."""
        if not isinstance(value, str):
            return value
        items = [item.strip() for item in value.split(",") if item.strip()]
        if not items:
            raise ValueError("is set but names nothing: give a value, or leave it unset")
        return items

    @model_validator(mode="after")
    def _one_slot_per_worker(self) -> ServiceSettings:
        if self.max_concurrency == 0:
            self.max_concurrency = self.worker_plan().workers
        return self

    def worker_plan(self) -> WorkerPlan:
        """Workers and threads per worker, sized from the usable cores unless set: a worker
        per core, each allowed every core, so that a lone request is not slowed down."""
        return WorkerPlan.for_machine(self.workers, self.threads, share_cores=False)

    def audit_secret_path(self) -> Path | None:
        """`audit_secret_file`, else `<audit_log>.secret`, else None (no place to keep one)."""
        if self.audit_secret_file is not None:
            return self.audit_secret_file
        if self.audit_log is not None:
            return self.audit_log.with_name(self.audit_log.name + ".secret")
        return None

    def all_api_keys(self) -> list[str]:
        """Keys from the setting and from the keys file (one per line, # comments).

        A keys file that cannot be read, is too large or holds no key stops the start: reading
        it as "no keys" would serve without authentication.
        """
        keys = list(self.api_keys)
        if self.api_keys_file is None:
            return keys
        path = self.api_keys_file
        try:
            with path.open("rb") as stream:
                data = stream.read(MAX_KEYS_FILE_BYTES + 1)
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not UTF-8 text"
            raise SettingsError(f"cannot read the API keys file {path}: {reason}") from error
        if len(data) > MAX_KEYS_FILE_BYTES:
            raise SettingsError(
                f"the API keys file {path} is larger than {MAX_KEYS_FILE_BYTES:,} bytes; "
                "it should hold one key per line"
            )
        found = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if not found:
            raise SettingsError(
                f"the API keys file {path} holds no key (one per line, # for comments); "
                "an empty file would turn authentication off"
            )
        return keys + found
