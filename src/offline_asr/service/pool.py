"""The models a server holds: preloaded ones, lazily loaded ones, unloaded when idle."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from offline_asr.asr.audio import AudioLimits
from offline_asr.asr.base import fingerprint
from offline_asr.asr.router import AUTO_MODEL
from offline_asr.asr.transcriber import Transcriber
from offline_asr.errors import ModelNotFoundError
from offline_asr.registry.catalog import is_structural_test_model
from offline_asr.registry.schemas import Manifest
from offline_asr.registry.store import ModelStore
from offline_asr.service.metrics import Metrics


@dataclass
class Loaded:
    transcriber: Transcriber
    preloaded: bool
    last_used: float


class ModelPool:
    """Loads through `Transcriber` (which verifies the weights); one lock guards the table."""

    def __init__(
        self,
        store: ModelStore,
        *,
        limits: AudioLimits,
        metrics: Metrics,
        lazy_load: bool,
        idle_unload_s: float,
        **engine_options: Any,
    ) -> None:
        self.store = store
        self.manifest: Manifest = store.load()
        self.limits, self.metrics = limits, metrics
        self.lazy_load, self.idle_unload_s = lazy_load, idle_unload_s
        self.engine_options = engine_options
        self._loaded: dict[str, Loaded] = {}
        self._preloaded: list[str] = []
        self._lock = threading.Lock()

    def _load(self, model_id: str, preloaded: bool) -> Loaded:
        transcriber = Transcriber(
            self.store, model_id, audit=None, limits=self.limits, **self.engine_options
        )
        loaded = Loaded(transcriber, preloaded, time.monotonic())
        self._loaded[model_id] = loaded
        self.metrics.loaded.labels(model_id).set(1)
        return loaded

    def preload(self, model_ids: list[str]) -> None:
        """Verify and load every listed model; raises on the first one that fails."""
        with self._lock:
            for model_id in model_ids:
                if model_id != AUTO_MODEL:
                    self.store.get(self.manifest, model_id)
                self._load(model_id, preloaded=True)
                self._preloaded.append(model_id)

    def check(self, model_id: str) -> None:
        """Fail fast (404) for a model this server will not serve."""
        if model_id in self._loaded:
            return
        if not self.lazy_load:
            served = ", ".join(sorted(self._loaded)) or "none"
            raise ModelNotFoundError(f"model {model_id!r} is not served here (served: {served})")
        if model_id != AUTO_MODEL and self.manifest.get(model_id) is None:
            raise ModelNotFoundError(
                f"model {model_id!r} does not exist; GET /v1/models lists the models served here"
            )

    def get(self, model_id: str) -> Transcriber:
        """The loaded model, loading it now if allowed (call from a worker thread)."""
        self.check(model_id)
        with self._lock:
            loaded = self._loaded.get(model_id) or self._load(model_id, preloaded=False)
            loaded.last_used = time.monotonic()
            return loaded.transcriber

    def unload_idle(self) -> list[str]:
        """Drop lazily loaded models unused for `idle_unload_s`; returns their ids."""
        if self.idle_unload_s <= 0:
            return []
        now = time.monotonic()
        with self._lock:
            idle = [
                model_id
                for model_id, loaded in self._loaded.items()
                if not loaded.preloaded and now - loaded.last_used > self.idle_unload_s
            ]
            for model_id in idle:
                del self._loaded[model_id]
                self.metrics.loaded.labels(model_id).set(0)
        return idle

    def describe(self) -> list[dict[str, Any]]:
        """OpenAI's model list, with our provenance fields."""
        rows = [
            {
                "id": model.id,
                "object": "model",
                "created": 0,
                "owned_by": "offline-asr",
                "engine": model.engine,
                "variant": model.variant,
                "languages": model.languages,
                "manifest_version": self.manifest.manifest_version,
                "fingerprint": fingerprint(model),
                "loaded": model.id in self._loaded,
                "structural_test_model": is_structural_test_model(model),
                **({"description": model.description} if model.description else {}),
            }
            for model in self.manifest.models
        ]
        rows.append(
            {"id": AUTO_MODEL, "object": "model", "created": 0, "owned_by": "offline-asr",
             "engine": "router", "loaded": AUTO_MODEL in self._loaded}
        )  # fmt: skip
        return rows

    @property
    def ready(self) -> bool:
        """Every model named at start is verified and loaded."""
        return bool(self._preloaded) and all(m in self._loaded for m in self._preloaded)
