"""Settings, read once at the edge (a command, the server's start) and passed down.

Precedence: flag, then environment variable, then the TOML file (`--config` /
`OFFLINE_ASR_CONFIG`), then the default. `ServiceSettings` (service/settings.py) extends this
model with the server's own knobs; README's settings table lists both (a test keeps them equal).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_core.core_schema import ValidationInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from offline_asr.constants import (
    DEFAULT_BUNDLE_HINT,
    DEFAULT_LONG_FORM_BATCH,
    DEFAULT_MANIFEST,
    MANIFEST_ENV,
)
from offline_asr.errors import OfflineAsrError

CONFIG_ENV = "OFFLINE_ASR_CONFIG"


class SettingsError(OfflineAsrError):
    """A setting is malformed, or present but empty where empty would turn a check off."""


def env(name: str, variable: str) -> AliasChoices:
    """A setting's config key (also its keyword) and its environment variable."""
    return AliasChoices(name, variable)


class Settings(BaseSettings):
    """What every command may read; unknown variables and keys are ignored."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)
    config_file: ClassVar[Path | None] = None
    not_blank: ClassVar[frozenset[str]] = frozenset({"pidfile", "admin_key"})
    """Fields where an empty value would silently mean something else (a folder, every host)."""

    manifest: Path = Field(
        DEFAULT_MANIFEST,
        validation_alias=env("manifest", MANIFEST_ENV),
        description="The manifest; its folder is the store",
    )
    threads: int = Field(
        0,
        ge=0,
        validation_alias=env("threads", "OFFLINE_ASR_THREADS"),
        description="CPU threads per worker (0: every usable core; `batch` shares them out)",
    )
    workers: int = Field(
        0,
        ge=0,
        validation_alias=env("workers", "OFFLINE_ASR_WORKERS"),
        description="Transcriptions that run in parallel per model (0: one per usable core)",
    )
    long_form_batch_size: int = Field(
        DEFAULT_LONG_FORM_BATCH,
        ge=0,
        le=64,
        validation_alias=env("long_form_batch_size", "OFFLINE_ASR_LONG_FORM_BATCH"),
        description="Whisper: 30 s to 20 min of audio go through the batched pipeline (0: off)",
    )
    max_audio_bytes: int = Field(
        500_000_000,
        gt=0,
        validation_alias=env("max_audio_bytes", "OFFLINE_ASR_MAX_AUDIO_BYTES"),
        description="Largest input file for `transcribe`, in bytes (checked first)",
    )
    max_audio_seconds: float = Field(
        4 * 3600.0,
        gt=0,
        validation_alias=env("max_audio_seconds", "OFFLINE_ASR_MAX_AUDIO_SECONDS"),
        description="Longest audio accepted, in seconds (decoding stops there)",
    )
    audit_log: Path | None = Field(
        None,
        validation_alias=env("audit_log", "OFFLINE_ASR_AUDIT_LOG"),
        description="Audit log file, JSON lines (default: stderr)",
    )
    audit_text: bool = Field(
        False,
        validation_alias=env("audit_text", "OFFLINE_ASR_AUDIT_TEXT"),
        description="Also log transcript texts",
    )
    default_whisper_model: str | None = Field(
        None,
        validation_alias=env("default_whisper_model", "DEFAULT_WHISPER_MODEL"),
        description="Multilingual Whisper that detects the language for the model `auto`",
    )
    default_gigaam_model: str | None = Field(
        None,
        validation_alias=env("default_gigaam_model", "DEFAULT_GIGAAM_MODEL"),
        description="GigaAM model that `auto` sends Russian speech to",
    )
    pidfile: Path | None = Field(
        None,
        validation_alias=env("pidfile", "OFFLINE_ASR_PIDFILE"),
        description="`serve` writes its pid here (and FILE.json: the release it serves); "
        "`doctor` finds the server through it",
    )
    admin_key: str | None = Field(
        None,
        validation_alias=env("admin_key", "OFFLINE_ASR_ADMIN_KEY"),
        description="API key that `bundle install/rollback --notify URL` and `doctor --server "
        "URL` send to a server with keys",
    )
    bundle_hint: str = Field(
        DEFAULT_BUNDLE_HINT,
        validation_alias=env("bundle_hint", "OFFLINE_ASR_BUNDLE_HINT"),
        description="Where to get models, shown when files are missing",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _not_blank(cls, value: Any, info: ValidationInfo) -> Any:
        """An empty path would mean the current folder; an empty host, every interface."""
        if info.field_name in cls.not_blank and isinstance(value, str) and not value.strip():
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
    def load(cls, config_file: Path | None = None, **flags: Any) -> Self:
        """Flags (None means not given) over environment over the TOML file over defaults.

        A settings file that is named but missing, unreadable or not TOML stops the command:
        ignoring it would run with settings nobody chose.
        """
        if config_file is not None and not config_file.is_file():
            raise SettingsError(
                f"the settings file {config_file} does not exist (or is not a file)"
            )
        cls.config_file = config_file
        try:
            return cls(**{name: value for name, value in flags.items() if value is not None})
        except ValidationError as error:
            raise SettingsError(f"the settings are not valid:\n{cls._describe(error)}") from error
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise SettingsError(f"cannot read the settings file {config_file}: {error}") from error
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
