"""Engines. To add one: write a module with a `TranscriptionEngine` subclass and list it here."""

from __future__ import annotations

import importlib
from typing import Any

from offline_asr.asr.base import TranscriptionEngine
from offline_asr.registry.store import ModelStore

# engine name (as in the manifest) -> "module:class", imported only when used.
ENGINE_CLASSES: dict[str, str] = {
    "whisper": "offline_asr.asr.whisper_engine:WhisperEngine",
    "gigaam": "offline_asr.asr.gigaam_engine:GigaamEngine",
}


def engine_class(engine: str) -> type[TranscriptionEngine]:
    module, name = ENGINE_CLASSES[engine].split(":")
    cls: type[TranscriptionEngine] = getattr(importlib.import_module(module), name)
    return cls


def load_engine(store: ModelStore, model_id: str, **options: Any) -> TranscriptionEngine:
    """Create the right engine for a manifest entry and load (verify, then read) its weights."""
    model = store.get(store.load(), model_id)
    engine = engine_class(model.engine)(store, **options)
    engine.load(model_id)
    return engine
