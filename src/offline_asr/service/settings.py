"""Service settings: flags, then environment, then an optional TOML file, then defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from offline_asr.constants import DEFAULT_MANIFEST
from offline_asr.errors import OfflineAsrError

CommaList = Annotated[list[str], NoDecode]
# A keys file is a short list of secrets; anything larger is a mistake, never read whole.
MAX_KEYS_FILE_BYTES = 64 * 1024


class SettingsError(OfflineAsrError):
    """A setting is malformed, or present but empty where empty would turn a check off."""


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class ServiceSettings(BaseSettings):
    """Every knob of `offline-asr serve`; the README's settings table lists the same names."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)
    config_file: ClassVar[Path | None] = None

    manifest: Path = Field(
        DEFAULT_MANIFEST, validation_alias=_env("manifest", "MODEL_REGISTRY_PATH")
    )
    models: CommaList = Field(
        default_factory=lambda: ["whisper-tiny.en"],
        validation_alias=_env("models", "APP_MODEL_ID"),
        description="Models to verify and load before the port opens",
    )
    host: str = Field("127.0.0.1", validation_alias=_env("host", "OFFLINE_ASR_HOST"))
    port: int = Field(8000, ge=0, le=65535, validation_alias=_env("port", "OFFLINE_ASR_PORT"))
    lazy_load: bool = Field(
        True,
        validation_alias=_env("lazy_load", "OFFLINE_ASR_LAZY_LOAD"),
        description="Load other registered models on their first request",
    )
    idle_unload_s: float = Field(
        0,
        ge=0,
        validation_alias=_env("idle_unload_s", "OFFLINE_ASR_IDLE_UNLOAD_S"),
        description="Unload lazily loaded models unused this long (0: never)",
    )
    max_concurrency: int = Field(
        2, ge=1, validation_alias=_env("max_concurrency", "OFFLINE_ASR_MAX_CONCURRENCY")
    )
    max_queue: int = Field(8, ge=0, validation_alias=_env("max_queue", "OFFLINE_ASR_MAX_QUEUE"))
    max_upload_bytes: int = Field(
        100_000_000, gt=0, validation_alias=_env("max_upload_bytes", "OFFLINE_ASR_MAX_UPLOAD_BYTES")
    )
    max_audio_seconds: float = Field(
        14_400, gt=0, validation_alias=_env("max_audio_seconds", "OFFLINE_ASR_MAX_AUDIO_SECONDS")
    )
    request_timeout_s: float = Field(
        600, gt=0, validation_alias=_env("request_timeout_s", "OFFLINE_ASR_REQUEST_TIMEOUT_S")
    )
    api_keys: CommaList = Field(
        default_factory=list, validation_alias=_env("api_keys", "OFFLINE_ASR_API_KEYS")
    )
    api_keys_file: Path | None = Field(
        None, validation_alias=_env("api_keys_file", "OFFLINE_ASR_API_KEYS_FILE")
    )
    cors_origins: CommaList = Field(
        default_factory=list, validation_alias=_env("cors_origins", "OFFLINE_ASR_CORS_ORIGINS")
    )
    audit_log: Path | None = Field(
        None, validation_alias=_env("audit_log", "OFFLINE_ASR_AUDIT_LOG")
    )
    audit_text: bool = Field(False, validation_alias=_env("audit_text", "OFFLINE_ASR_AUDIT_TEXT"))
    audit_secret_file: Path | None = Field(
        None,
        validation_alias=_env("audit_secret_file", "OFFLINE_ASR_AUDIT_SECRET_FILE"),
        description="Secret for the API key ids in the audit log (default: beside the log)",
    )
    threads: int = Field(0, ge=0, validation_alias=_env("threads", "OFFLINE_ASR_THREADS"))
    # Live transcription (/v1/realtime).
    realtime_max_sessions: int = Field(
        4, ge=0,
        validation_alias=_env("realtime_max_sessions", "OFFLINE_ASR_REALTIME_MAX_SESSIONS"),
        description="Live sessions at a time (0: /v1/realtime off)",
    )  # fmt: skip
    realtime_max_session_s: float = Field(
        1800, gt=0,
        validation_alias=_env("realtime_max_session_s", "OFFLINE_ASR_REALTIME_MAX_SESSION_S"),
    )  # fmt: skip
    realtime_max_buffer_bytes: int = Field(
        15 * 1024 * 1024, gt=0,
        validation_alias=_env("realtime_max_buffer_bytes", "OFFLINE_ASR_REALTIME_MAX_BUFFER_BYTES"),
        description="Uncommitted audio a session may hold (PCM16 bytes)",
    )  # fmt: skip
    realtime_partial_interval_s: float = Field(
        1.0, ge=0,
        validation_alias=_env(
            "realtime_partial_interval_s", "OFFLINE_ASR_REALTIME_PARTIAL_INTERVAL_S"
        ),
        description="New speech between two partial transcriptions of a turn (0: no deltas)",
    )  # fmt: skip

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

    @field_validator(
        "manifest", "api_keys_file", "audit_log", "audit_secret_file", "host", mode="before"
    )
    @classmethod
    def _not_blank(cls, value: Any) -> Any:
        """An empty path would mean the current folder; an empty host, every interface."""
        if isinstance(value, str) and not value.strip():
            raise ValueError("is set but empty: give a value, or leave it unset")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if cls.config_file is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=cls.config_file),)
        return sources

    @classmethod
    def load(cls, config_file: Path | None = None, **flags: Any) -> ServiceSettings:
        """Flags (None means not given) over environment over the TOML file over defaults."""
        cls.config_file = config_file
        try:
            return cls(**{name: value for name, value in flags.items() if value is not None})
        except ValidationError as error:
            raise SettingsError(
                f"the server's settings are not valid:\n{cls._describe(error)}"
            ) from error
        finally:
            cls.config_file = None

    @classmethod
    def _describe(cls, error: ValidationError) -> str:
        """One line per problem naming the config key and its environment variable."""
        lines = []
        for item in error.errors():
            name = str(item["loc"][0]) if item["loc"] else "(settings)"
            field = cls.model_fields.get(name)
            alias = field.validation_alias if field is not None else None
            names = alias.choices if isinstance(alias, AliasChoices) else [name]
            where = " / ".join(str(choice) for choice in names)
            lines.append(f"  {where}: {item['msg'].removeprefix('Value error, ')}")
        return "\n".join(lines)

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
