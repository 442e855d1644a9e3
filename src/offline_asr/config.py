"""Settings read from the environment (flags override them): see the README's settings table."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from offline_asr.constants import DEFAULT_BUNDLE_HINT, DEFAULT_LONG_FORM_BATCH, DEFAULT_MANIFEST


class Settings(BaseSettings):
    """`MODEL_REGISTRY_PATH` and friends; unknown variables are ignored."""

    model_config = SettingsConfigDict(extra="ignore")

    model_registry_path: Path = Field(DEFAULT_MANIFEST, description="The manifest to use")
    offline_asr_bundle_hint: str = Field(
        DEFAULT_BUNDLE_HINT, description="Where to get models, shown when files are missing"
    )
    offline_asr_max_audio_bytes: int = Field(
        500_000_000, gt=0, description="Largest audio input accepted, in bytes (checked first)"
    )
    offline_asr_max_audio_seconds: float = Field(
        4 * 3600.0, gt=0, description="Longest audio accepted, in seconds (decoding stops there)"
    )
    default_whisper_model: str | None = Field(
        None, description="Multilingual Whisper that detects the language for the model `auto`"
    )
    default_gigaam_model: str | None = Field(
        None, description="GigaAM model that `auto` sends Russian speech to"
    )
    offline_asr_audit_text: bool = Field(False, description="Also log transcript texts")
    offline_asr_long_form_batch: int = Field(
        DEFAULT_LONG_FORM_BATCH,
        ge=0,
        le=64,
        description="Whisper: audio over 30 s uses the batched pipeline with this batch (0: off)",
    )
