"""One release a server holds: its manifest snapshot, the models loaded from it, and how many
requests are using it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from offline_asr.asr.router import AUTO_MODEL
from offline_asr.asr.transcriber import Transcriber
from offline_asr.errors import ModelNotFoundError
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.service.metrics import Metrics

LoadModel = Callable[[ManifestSnapshot, str], Transcriber]
"""Loads a model of a snapshot through the loader (`Transcriber.load`: verified first)."""


@dataclass
class Loaded:
    transcriber: Transcriber
    preloaded: bool
    last_used: float


class ServedRelease:
    """The models of one manifest snapshot, loaded with `load` (the pool's: the loader, which
    verifies the weights), always from this snapshot. `leases` counts the requests (and
    sessions) that started on it; the pool unloads a retired release when the count reaches 0.
    Unloading drops the references: the weights are freed once no request holds them."""

    def __init__(
        self, snapshot: ManifestSnapshot, load: LoadModel, metrics: Metrics, *, lazy_load: bool
    ) -> None:
        self.snapshot, self._load_model, self.metrics = snapshot, load, metrics
        self.lazy_load = lazy_load
        self.leases = 0
        self.retired = False
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        return self.snapshot.version

    @property
    def folder(self) -> Path:
        """The release folder (`releases/vN` of a target; the store's parent otherwise)."""
        return self.snapshot.root.parent

    def _load(self, model_id: str, preloaded: bool) -> Loaded:
        if model_id != AUTO_MODEL:
            self.snapshot.entry(model_id)  # an unknown id names the others
        transcriber = self._load_model(self.snapshot, model_id)
        loaded = self._loaded[model_id] = Loaded(transcriber, preloaded, time.monotonic())
        self.metrics.loaded.labels(model_id).inc()
        return loaded

    def load(self, model_ids: list[str]) -> None:
        """Verify and load every listed model to stay; raises on the first one that fails."""
        with self._lock:
            for model_id in model_ids:
                self._load(model_id, preloaded=True)

    def check(self, model_id: str) -> None:
        """Fail fast (404) for a model this release will not serve."""
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

    def has(self, model_id: str) -> bool:
        return model_id in self._loaded

    def unload_idle(self, idle_s: float) -> list[str]:
        """Drop lazily loaded models unused for `idle_s`; returns their ids."""
        now = time.monotonic()
        with self._lock:
            idle = [
                model_id
                for model_id, loaded in self._loaded.items()
                if not loaded.preloaded and now - loaded.last_used > idle_s
            ]
            self._drop(idle)
        return idle

    def unload(self) -> None:
        with self._lock:
            self._drop(list(self._loaded))

    def _drop(self, model_ids: list[str]) -> None:
        for model_id in model_ids:
            del self._loaded[model_id]
            self.metrics.loaded.labels(model_id).dec()
