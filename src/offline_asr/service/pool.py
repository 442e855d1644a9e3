"""The releases a server holds: the current one, and during a switch the one before it until
its last request ends."""

from __future__ import annotations

import ctypes
import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from offline_asr.asr.audio import AudioLimits
from offline_asr.asr.base import fingerprint
from offline_asr.asr.loader import LoadOptions
from offline_asr.asr.router import AUTO_MODEL
from offline_asr.asr.transcriber import Transcriber
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.service.metrics import Metrics
from offline_asr.service.served_release import ServedRelease


class ModelPool:
    """New requests lease the current release (`lease`); a reload prepares the next one beside
    it (`prepare`: its preloaded models loaded) and `switch`es to it in one step, so a request
    sees one release from start to end. One lock guards which releases are held."""

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
        self.options = options
        self.limits, self.metrics = limits, metrics
        self.lazy_load, self.idle_unload_s = lazy_load, idle_unload_s
        self._preloaded: list[str] = []
        self._lock = threading.Lock()
        self._held: list[ServedRelease] = []
        self.current = self._hold(snapshot)
        metrics.serving.set(snapshot.version)

    @property
    def snapshot(self) -> ManifestSnapshot:
        """The manifest snapshot of the current release."""
        return self.current.snapshot

    def _hold(self, snapshot: ManifestSnapshot) -> ServedRelease:
        release = ServedRelease(snapshot, self._load_model, self.metrics, lazy_load=self.lazy_load)
        with self._lock:
            self._held.append(release)
            self.metrics.releases_held.set(len(self._held))
        return release

    def _load_model(self, snapshot: ManifestSnapshot, model_id: str) -> Transcriber:
        return Transcriber.load(snapshot, model_id, self.options, audit=None, limits=self.limits)

    def _release(self, release: ServedRelease) -> None:
        """Unload a release no one will use again (once)."""
        with self._lock:
            if release not in self._held:
                return
            self._held.remove(release)
            self.metrics.releases_held.set(len(self._held))
        release.unload()
        _return_freed_memory()

    @property
    def preloaded(self) -> list[str]:
        """The models named at start: loaded from every release before it is switched to."""
        return list(self._preloaded)

    def preload(self, model_ids: list[str]) -> None:
        """Verify and load every listed model; raises on the first one that fails. A reload
        loads the same models from the next release before it switches."""
        self.current.load(model_ids)
        self._preloaded = list(model_ids)

    def prepare(self, snapshot: ManifestSnapshot) -> ServedRelease:
        """The release of `snapshot` with the preloaded models loaded, beside the current one;
        raises (and holds nothing of it) when one cannot be loaded."""
        release = self._hold(snapshot)
        try:
            release.load(self._preloaded)
        except BaseException:
            self._release(release)
            raise
        return release

    def switch(self, release: ServedRelease) -> ServedRelease:
        """Send new requests to `release`; the one before is unloaded when its last lease
        ends (now, if none is out). Returns the one before."""
        with self._lock:
            before, self.current = self.current, release
            before.retired = True
            idle = before.leases == 0
        self.metrics.serving.set(release.version)
        if idle:
            self._release(before)
        return before

    @contextmanager
    def lease(self) -> Iterator[ServedRelease]:
        """The current release, held for the caller (a request, a session, a worker's job):
        every model it gets comes from this release, even if a switch happens meanwhile."""
        with self._lock:
            release = self.current
            release.leases += 1
        try:
            yield release
        finally:
            with self._lock:
                release.leases -= 1
                done = release.retired and release.leases == 0
            if done:
                self._release(release)

    def check(self, model_id: str) -> None:
        """Fail fast (404) for a model the current release will not serve."""
        self.current.check(model_id)

    def unload_idle(self) -> list[str]:
        """Drop lazily loaded models of the current release unused for `idle_unload_s`."""
        if self.idle_unload_s <= 0:
            return []
        return self.current.unload_idle(self.idle_unload_s)

    def loaded_from(self, model_id: str) -> list[int]:
        """The manifest_versions of the held releases that have this model loaded."""
        with self._lock:
            held = list(self._held)
        return sorted(release.version for release in held if release.has(model_id))

    def describe(self) -> list[dict[str, Any]]:
        """OpenAI's model list, with our provenance fields: the current release's models, and
        which held releases each is loaded from (two only during a switch)."""
        current = self.current
        rows = [
            {
                "id": model.id,
                "object": "model",
                "created": 0,
                "owned_by": "offline-asr",
                "engine": model.engine,
                "variant": model.variant,
                "languages": model.languages,
                "manifest_version": current.version,
                "fingerprint": fingerprint(model),
                "loaded": current.has(model.id),
                "loaded_from": self.loaded_from(model.id),
                "structural_test_model": model.is_test_model,
                **({"description": model.description} if model.description else {}),
            }
            for model in current.snapshot.manifest.models
        ]
        rows.append(
            {"id": AUTO_MODEL, "object": "model", "created": 0, "owned_by": "offline-asr",
             "engine": "router", "manifest_version": current.version,
             "loaded": current.has(AUTO_MODEL), "loaded_from": self.loaded_from(AUTO_MODEL)}
        )  # fmt: skip
        return rows

    @property
    def ready(self) -> bool:
        """Every model named at start is verified and loaded in the current release."""
        current = self.current
        return bool(self._preloaded) and all(current.has(m) for m in self._preloaded)


def _return_freed_memory() -> None:
    """Give the heap pages of an unloaded release back to the system: glibc keeps freed
    memory in its arenas (measured: RSS stayed 110 MB above the one-release level after a
    whisper-tiny.en switch without this; bench/bench_reload.py)."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return
    libc.malloc_trim(0)
