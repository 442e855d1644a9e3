"""The models a server holds: preloaded ones, lazily loaded ones, unloaded when idle."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from offline_asr.asr.audio import AudioLimits
from offline_asr.asr.base import fingerprint
from offline_asr.asr.loader import LoadOptions
from offline_asr.asr.router import AUTO_MODEL
from offline_asr.asr.transcriber import Transcriber
from offline_asr.errors import ModelNotFoundError
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.service.metrics import Metrics


@dataclass
class Loaded:
    transcriber: Transcriber
    preloaded: bool
    last_used: float


class ModelPool:
    """Loads through the loader (`Transcriber.load`, which verifies the weights), always from
    the one manifest snapshot the server started with; one lock guards the table."""

    def __init__(
        self,
        snapshot: ManifestSnapshot,
        *,
        options: LoadOptions,
        limits: AudioLimits,
        metrics: Metrics,
        lazy_load: bool,
        idle_unload_s: float,
    ) -> None:
        self.snapshot = snapshot
        self.options = options
        self.limits, self.metrics = limits, metrics
        self.lazy_load, self.idle_unload_s = lazy_load, idle_unload_s
        self._loaded: dict[str, Loaded] = {}
        self._preloaded: list[str] = []
        self._lock = threading.Lock()

    def _load(self, model_id: str, preloaded: bool) -> Loaded:
        transcriber = Transcriber.load(
            self.snapshot, model_id, self.options, audit=None, limits=self.limits
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
                    self.snapshot.entry(model_id)
                self._load(model_id, preloaded=True)
                self._preloaded.append(model_id)

    def check(self, model_id: str) -> None:
        """Fail fast (404) for a model this server will not serve."""
        if model_id in self._loaded:
            return
        if not self.lazy_load:
            served = ", ".join(sorted(self._loaded)) or "none"
            raise ModelNotFoundError(f"model {model_id!r} is not served here (served: {served})")
        if model_id != AUTO_MODEL and self.snapshot.manifest.get(model_id) is None:
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
                "manifest_version": self.snapshot.version,
                "fingerprint": fingerprint(model),
                "loaded": model.id in self._loaded,
                "structural_test_model": model.is_test_model,
                **({"description": model.description} if model.description else {}),
            }
            for model in self.snapshot.manifest.models
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
