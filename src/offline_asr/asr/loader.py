"""The one path from a model id to a verified, loaded engine; engines are made only here.

    snapshot.entry(id) -> engine_class(entry.engine)(store, options) -> engine.load_entry:
    check_before_load (registry.integrity) -> the engine reads its weights

To add an engine: write a module with a `TranscriptionEngine` subclass and list it below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Any

from offline_asr.asr.base import TranscriptionEngine
from offline_asr.asr.device import Device
from offline_asr.config import Settings
from offline_asr.constants import DEFAULT_BUNDLE_HINT
from offline_asr.registry.schemas import ModelMetadata
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.registry.store import ModelStore

# engine name (as in the manifest) -> "module:class", imported only when used.
ENGINE_CLASSES: dict[str, str] = {
    "whisper": "offline_asr.asr.whisper_engine:WhisperEngine",
    "gigaam": "offline_asr.asr.gigaam_engine:GigaamEngine",
}


@dataclass(frozen=True)
class LoadOptions:
    """How engines load and where `auto` routes: the settings' part, plus per-command flags."""

    device: Device = "auto"
    threads: int = 0  # per worker; 0: the runtime's default
    workers: int = 1  # transcriptions that may run at once (CTranslate2's num_workers)
    long_form_batch_size: int = 0  # Whisper: batched pipeline for audio over 30 s (0: never)
    full_verify: bool = False  # re-hash every file instead of trusting the verified-hash cache
    bundle_hint: str = DEFAULT_BUNDLE_HINT
    default_whisper_model: str | None = None
    default_gigaam_model: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **flags: Any) -> LoadOptions:
        """The settings read at the edge; `flags` (device, full_verify, ...) go over them."""
        options = cls(
            threads=settings.threads,
            long_form_batch_size=settings.long_form_batch_size,
            bundle_hint=settings.bundle_hint,
            default_whisper_model=settings.default_whisper_model,
            default_gigaam_model=settings.default_gigaam_model,
        )
        return replace(options, **flags)


def engine_class(engine: str) -> type[TranscriptionEngine]:
    module, name = ENGINE_CLASSES[engine].split(":")
    cls: type[TranscriptionEngine] = getattr(importlib.import_module(module), name)
    return cls


def load_entry(
    store: ModelStore, model: ModelMetadata, manifest_version: int, options: LoadOptions
) -> TranscriptionEngine:
    """An engine for an entry given directly (one being registered, a smoke test's), verified
    and loaded; the result names `manifest_version`."""
    engine = engine_class(model.engine)(
        store, device=options.device, threads=options.threads, workers=options.workers,
        long_form_batch_size=options.long_form_batch_size, full_verify=options.full_verify,
        bundle_hint=options.bundle_hint,
    )  # fmt: skip
    engine.load_entry(model, manifest_version)
    return engine


def load_engine(
    snapshot: ManifestSnapshot, model_id: str, options: LoadOptions | None = None
) -> TranscriptionEngine:
    """The engine for `model_id` as `snapshot` lists it, its files verified, its weights read."""
    return load_entry(snapshot.store, snapshot.entry(model_id), snapshot.version,
                      options or LoadOptions())  # fmt: skip
