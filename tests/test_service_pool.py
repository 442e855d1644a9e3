"""The model pool: preloading verifies, lazy loading obeys the setting, idle models unload."""

from __future__ import annotations

import time

import pytest

from offline_asr.asr.audio import AudioLimits
from offline_asr.asr.loader import LoadOptions
from offline_asr.errors import ModelNotFoundError
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.registry.store import ModelStore
from offline_asr.service.metrics import Metrics
from offline_asr.service.pool import ModelPool


def _pool(store: ModelStore, *, lazy: bool, idle: float = 0) -> ModelPool:
    return ModelPool(
        ManifestSnapshot.read(store), options=LoadOptions(), limits=AudioLimits(10**8, 600),
        metrics=Metrics(), lazy_load=lazy, idle_unload_s=idle,
    )  # fmt: skip


def test_lazy_models_load_on_first_use_and_unload_when_idle(full_store: ModelStore) -> None:
    pool = _pool(full_store, lazy=True, idle=0.2)
    pool.preload(["gigaam-v3-ctc-testtiny"])
    assert pool.ready
    with pool.lease() as release:
        release.get("whisper-tiny.en")
    loaded = {row["id"]: row["loaded"] for row in pool.describe()}
    assert loaded["whisper-tiny.en"] and loaded["gigaam-v3-ctc-testtiny"]
    time.sleep(0.3)
    assert pool.unload_idle() == ["whisper-tiny.en"]  # preloaded models stay
    assert {row["id"]: row["loaded"] for row in pool.describe()}["gigaam-v3-ctc-testtiny"]


def test_without_lazy_loading_only_preloaded_models_are_served(full_store: ModelStore) -> None:
    pool = _pool(full_store, lazy=False)
    pool.preload(["gigaam-v3-ctc-testtiny"])
    with pytest.raises(ModelNotFoundError, match="not served here"):
        pool.check("whisper-tiny.en")
    with pytest.raises(ModelNotFoundError, match="model 'nope' does not exist"):
        _pool(full_store, lazy=True).check("nope")


def test_a_lease_keeps_its_release_through_a_switch(full_store: ModelStore) -> None:
    """What a request, a realtime session or a worker holds: the release it started on, until
    it lets go; the one before is unloaded then, and not before."""
    pool = _pool(full_store, lazy=True)
    pool.preload(["gigaam-v3-ctc-testtiny"])
    before = pool.current
    with pool.lease() as held:
        engine = held.get("gigaam-v3-ctc-testtiny")
        pool.switch(pool.prepare(ManifestSnapshot.read(full_store)))
        assert pool.current is not before and held is before
        assert held.get("gigaam-v3-ctc-testtiny") is engine  # still loaded, still this one
        assert pool.loaded_from("gigaam-v3-ctc-testtiny") == [before.version] * 2
        with pool.lease() as fresh:
            assert fresh is pool.current
    assert not before.has("gigaam-v3-ctc-testtiny")  # unloaded when its last lease ended
    assert pool.loaded_from("gigaam-v3-ctc-testtiny") == [before.version]
