"""Service settings: flags, then environment, then an optional TOML file, then defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from offline_asr.constants import DEFAULT_MANIFEST

CommaList = Annotated[list[str], NoDecode]


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

    @field_validator("models", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
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
        finally:
            cls.config_file = None

    def audit_secret_path(self) -> Path | None:
        """`audit_secret_file`, else `<audit_log>.secret`, else None (no place to keep one)."""
        if self.audit_secret_file is not None:
            return self.audit_secret_file
        if self.audit_log is not None:
            return self.audit_log.with_name(self.audit_log.name + ".secret")
        return None

    def all_api_keys(self) -> list[str]:
        """Keys from the setting and from the keys file (one per line, # comments)."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    keys.append(line.strip())
        return keys
