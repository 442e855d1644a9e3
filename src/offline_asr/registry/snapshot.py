"""One reading of a manifest, held for as long as what was loaded from it is in use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from offline_asr.registry.schemas import Manifest, ModelMetadata
from offline_asr.registry.store import ModelStore


@dataclass(frozen=True)
class ManifestSnapshot:
    """A store and the manifest parsed from it once: every engine loaded from a snapshot, and
    everything said about it (`/v1/models`), names the same release. A server keeps one for its
    life; `bundle install` switching `current` underneath does not change it."""

    store: ModelStore
    manifest: Manifest

    @classmethod
    def read(cls, store: ModelStore) -> ManifestSnapshot:
        return cls(store, store.load())

    @property
    def root(self) -> Path:
        return self.store.root

    @property
    def version(self) -> int:
        return self.manifest.manifest_version

    def entry(self, model_id: str) -> ModelMetadata:
        """The entry with this id; an unknown id is a `ModelNotFoundError` naming the others."""
        return self.store.get(self.manifest, model_id)
