"""`doctor` on an installed target: healthy after install and rollback, and says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offline_asr.asr.matrix import offered_isas
from offline_asr.asr.pins import best_isa, cpu_flags
from offline_asr.registry.store import ModelStore
from support.bundles import copy_store, invoke
from support.helpers import REPO, run_cli

GIGAAM = "gigaam-v3-ctc-testtiny"


def _build(store: ModelStore, out: Path, *models: str) -> Path:
    args = [arg for model in models for arg in ("--models", model)]
    result = invoke("bundle", "build", "--out", out, "--locks-from", REPO, *args,
                    "--manifest", store.manifest_path)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return next(out.glob("offline_bundle_v*.tar.zst"))


def test_doctor_after_install_and_rollback(full_store: ModelStore, tmp_path: Path) -> None:
    base = full_store.get(full_store.load(), "whisper-base").path
    store = copy_store(full_store, tmp_path / "store", without=[base])
    old = _build(store, tmp_path / "old", GIGAAM)
    # A second release: whisper-base leaves the registry (manifest_version + 1).
    assert (
        invoke("models", "remove", "whisper-base", "--manifest", store.manifest_path).exit_code == 0
    )
    new = _build(store, tmp_path / "new", GIGAAM, "whisper-tiny.en")
    target = tmp_path / "target"
    for bundle in (old, new):
        assert invoke("bundle", "install", bundle, "--target", target).exit_code == 0
    assert invoke("bundle", "rollback", "--target", target).exit_code == 0

    healthy = invoke("doctor", "--target", target, "--json")
    assert healthy.exit_code == 0, healthy.stdout + healthy.stderr
    report = json.loads(healthy.stdout)
    assert report["ok"] and report["next_steps"] == []
    checked = {(c["area"], c["subject"]) for c in report["checks"]}
    assert ("smoke", GIGAAM) in checked and ("integrity", GIGAAM) in checked
    assert ("integrity", "whisper-tiny.en") not in checked  # only in the newer release

    onnx = target / "current" / "models" / "gigaam" / "v3-ctc-testtiny" / "v3_ctc.onnx"
    data = bytearray(onnx.read_bytes())
    data[100] ^= 0xFF
    onnx.write_bytes(bytes(data))
    sick = invoke("doctor", "--target", target)
    assert sick.exit_code == 1
    assert "NOT HEALTHY" in sick.stdout and "v3_ctc.onnx" in sick.stdout
    assert "reinstall the bundle or `bundle rollback`" in sick.stdout


def test_doctor_without_an_installed_release_says_so(tmp_path: Path) -> None:
    result = invoke("doctor", "--target", tmp_path / "empty")
    assert result.exit_code == 2 and "install a bundle" in result.stderr


def test_a_store_that_differs_from_its_manifest_is_not_bundled(
    full_store: ModelStore, tmp_path: Path
) -> None:
    base = full_store.get(full_store.load(), "whisper-base").path
    store = copy_store(full_store, tmp_path / "store", without=[base])
    onnx = store.root / "gigaam" / "v3-ctc-testtiny" / "v3_ctc.onnx"
    data = bytearray(onnx.read_bytes())
    data[200] ^= 0x01
    onnx.write_bytes(bytes(data))
    out = tmp_path / "dist"
    result = invoke("bundle", "build", "--out", out, "--locks-from", REPO, "--models", GIGAAM,
                    "--manifest", store.manifest_path)  # fmt: skip
    assert result.exit_code == 1
    assert "v3_ctc.onnx does not match its sha256" in result.stderr
    assert not any(out.iterdir()), "no partial bundle is left behind"
    onnx.unlink()
    result = invoke("bundle", "build", "--out", out, "--locks-from", REPO, "--models", GIGAAM,
                    "--manifest", store.manifest_path)  # fmt: skip
    assert result.exit_code == 1 and "missing" in result.stderr


@pytest.mark.skipif(len(offered_isas()) < 2, reason="this CPU offers a single ISA")
def test_doctor_outside_the_goldens_class_is_healthy_and_says_why(
    full_store: ModelStore, tmp_path: Path
) -> None:
    """A machine of another class (here: another ISA forced) is told the goldens do not apply,
    with a warning, not a failure; a golden file missing from the release is a failure."""
    base = full_store.get(full_store.load(), "whisper-base").path
    store = copy_store(full_store, tmp_path / "store", without=[base])
    bundle = _build(store, tmp_path / "dist", GIGAAM, "whisper-tiny.en")
    target = tmp_path / "target"
    assert invoke("bundle", "install", bundle, "--target", target).exit_code == 0

    other = next(isa for isa in reversed(offered_isas()) if isa != best_isa(cpu_flags()))
    result = run_cli("doctor", "--target", target, "--json", env={"CT2_FORCE_CPU_ISA": other})
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    smoke = {c["subject"]: c for c in report["checks"] if c["area"] == "smoke"}
    assert smoke["whisper-tiny.en"]["status"] == "warn"
    assert "does not apply here" in smoke["whisper-tiny.en"]["detail"]
    assert (
        f"ct2_cpu_isa: recorded {best_isa(cpu_flags())}, now {other}"
        in (smoke["whisper-tiny.en"]["detail"])
    )
    assert str(target / "local-goldens") in smoke["whisper-tiny.en"]["detail"]

    (target / "current" / "models" / "goldens" / f"{GIGAAM}.json").unlink()
    sick = invoke("doctor", "--target", target, "--json")
    assert sick.exit_code == 1
    checks = json.loads(sick.stdout)["checks"]
    (gigaam,) = [c for c in checks if (c["area"], c["subject"]) == ("smoke", GIGAAM)]
    assert gigaam["status"] == "fail" and "golden file" in gigaam["detail"]
    assert "is missing" in gigaam["detail"] and "reinstall the bundle" in gigaam["fix"]
