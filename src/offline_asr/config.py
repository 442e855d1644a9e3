"""Settings read from the environment (flags override them): see the README's settings table."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from offline_asr.constants import DEFAULT_BUNDLE_HINT, DEFAULT_MANIFEST


class Settings(BaseSettings):
    """`MODEL_REGISTRY_PATH` and friends; unknown variables are ignored."""

    model_config = SettingsConfigDict(extra="ignore")

    model_registry_path: Path = Field(DEFAULT_MANIFEST, description="The manifest to use")
    offline_asr_bundle_hint: str = Field(
        DEFAULT_BUNDLE_HINT, description="Where to get models, shown when files are missing"
    )
    hf_endpoint: str | None = Field(None, description="Hugging Face Hub (or mirror) for prepare")
