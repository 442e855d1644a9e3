"""Smoke tests with golden outputs: pass on the prepared models, explain a difference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from offline_asr.registry.store import ModelStore, write_atomic
from support.helpers import COMMITTED_MANIFEST, Cli


def test_prepare_records_the_same_smoke_as_committed(full_store: ModelStore) -> None:
    committed = json.loads(COMMITTED_MANIFEST.read_text())
    for listed in committed["models"]:
        prepared = full_store.load().get(listed["id"])
        assert prepared is not None and prepared.smoke is not None
        assert prepared.smoke.model_dump(exclude_none=True) == listed["smoke"], listed["id"]


def test_smoke_passes_for_every_registered_model(full_store: ModelStore, cli: Cli) -> None:
    result = cli("models", "smoke", manifest=full_store.manifest_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    registered = json.loads(COMMITTED_MANIFEST.read_text())["models"]
    assert result.stdout.count("OK") == len(registered)
    tests = sum(1 for model in registered if model["variant"].endswith("-testtiny"))
    assert result.stdout.count("no bound") == tests  # structural test models have no WER bound


def _edit_smoke(store: ModelStore, model_id: str, **changes: object) -> None:
    manifest = store.load()
    model = store.get(manifest, model_id)
    assert model.smoke is not None
    model.smoke = model.smoke.model_copy(update=changes)
    write_atomic(store.manifest_path, manifest.to_json())


def _copy(store: ModelStore, tmp_path: Path) -> ModelStore:
    shutil.copytree(store.root.parent, tmp_path / "copy")
    return ModelStore(tmp_path / "copy" / "models" / "manifest.json")


def test_altered_golden_hash_fails_with_an_explanation(
    full_store: ModelStore, cli: Cli, tmp_path: Path
) -> None:
    store = _copy(full_store, tmp_path)
    _edit_smoke(store, "whisper-tiny.en", golden_sha256="0" * 64)
    result = cli("models", "smoke", "whisper-tiny.en", manifest=store.manifest_path)
    assert result.exit_code == 1
    assert "differs from the golden output" in result.stdout
    assert "runtime is the same" in result.stdout and "models verify" in result.stdout


def test_a_different_cpu_isa_is_named_as_the_likely_cause(
    full_store: ModelStore, cli: Cli, tmp_path: Path
) -> None:
    store = _copy(full_store, tmp_path)
    model = store.load().get("whisper-tiny.en")
    assert model is not None and model.smoke is not None
    recorded = dict(model.smoke.runtime, ct2_cpu_isa="GENERIC")
    _edit_smoke(store, "whisper-tiny.en", golden_sha256="0" * 64, runtime=recorded)
    result = cli("models", "smoke", "--json", "whisper-tiny.en", manifest=store.manifest_path)
    assert result.exit_code == 1
    (report,) = json.loads(result.stdout)
    assert "ct2_cpu_isa: recorded GENERIC" in report["problems"][0]
    assert "CT2_FORCE_CPU_ISA=GENERIC" in report["problems"][0]


def test_wer_above_the_bound_fails(full_store: ModelStore, cli: Cli, tmp_path: Path) -> None:
    store = _copy(full_store, tmp_path)
    _edit_smoke(store, "whisper-tiny.en", reference_text="completely different words here")
    result = cli("models", "smoke", "whisper-tiny.en", manifest=store.manifest_path)
    assert result.exit_code == 1 and "above the bound" in result.stdout


def test_altered_smoke_clip_is_refused(full_store: ModelStore, cli: Cli, tmp_path: Path) -> None:
    store = _copy(full_store, tmp_path)
    _edit_smoke(store, "whisper-tiny.en", audio_sha256="1" * 64)
    result = cli("models", "smoke", "whisper-tiny.en", manifest=store.manifest_path)
    assert result.exit_code == 1 and "smoke clip" in result.stderr
