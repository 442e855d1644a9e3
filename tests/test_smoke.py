"""Smoke tests with golden outputs: the verdict rests on the decoded content of one
reproducibility class, never blames the weights wrongly, and explains every difference.

Another machine is simulated by a process with other pins (ISA, GEMM backend), thread counts,
CPUs and onnxruntime options: the golden recorded in this process must hold under every
configuration another machine of its class would use.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime
import pytest

from offline_asr.asr import base, gigaam_engine
from offline_asr.asr.goldens import decoded_differences, read_golden
from offline_asr.asr.loader import LoadOptions
from offline_asr.asr.matrix import offered_isas
from offline_asr.asr.pins import best_isa, cpu_flags
from offline_asr.asr.smoke import check_smoke
from offline_asr.fsutil import write_atomic
from offline_asr.registry.store import ModelStore
from support.bundles import copy_store, sha256_of
from support.helpers import COMMITTED_MANIFEST, Cli, run_cli

TINY = "whisper-tiny.en"
BASE = "whisper-base"
GIGAAM = "gigaam-v3-ctc-testtiny"
PINNED_ISA = best_isa(cpu_flags())


@pytest.fixture(scope="module")
def small_store(full_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """whisper-tiny.en and the GigaAM test model, shared read-only by this module's tests."""
    base = full_store.get(full_store.load(), BASE).path
    return copy_store(full_store, tmp_path_factory.mktemp("small") / "store", without=[base])


@pytest.fixture
def store(small_store: ModelStore, tmp_path: Path) -> ModelStore:
    """A private copy of the small store that a test may damage."""
    return copy_store(small_store, tmp_path / "store")


def _golden(store: ModelStore, model_id: str) -> Path:
    return store.golden_file(model_id)


def _edit_json(path: Path, edit: Callable[[Any], object]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _registry_bytes(store: ModelStore) -> tuple[str, str]:
    return sha256_of(store.manifest_path), sha256_of(store.changelog_path)


# --- the committed goldens --------------------------------------------------------------------


def test_prepare_records_the_same_smoke_as_committed(full_store: ModelStore) -> None:
    """Preparing from the pinned sources on this machine gives the committed entries and the
    committed decoded content, when this machine is in the goldens' class."""
    committed = json.loads(COMMITTED_MANIFEST.read_text())
    outside = []
    for listed in committed["models"]:
        prepared = full_store.load().get(listed["id"])
        assert prepared is not None and prepared.smoke is not None
        if prepared.smoke.golden_class != listed["smoke"]["golden_class"]:
            outside.append(listed["id"])
            continue
        ours = read_golden(full_store.golden_file(listed["id"]), listed["id"])
        theirs = read_golden(COMMITTED_MANIFEST.parent / listed["smoke"]["golden"], listed["id"])
        assert decoded_differences(theirs.decoded, ours.decoded) == [], listed["id"]
        assert prepared.smoke.model_dump(exclude_none=True) == listed["smoke"], listed["id"]
    if outside:
        pytest.skip(f"this machine is outside the class of the committed goldens of {outside}")


def test_smoke_passes_for_every_registered_model(full_store: ModelStore, cli: Cli) -> None:
    result = cli("models", "smoke", manifest=full_store.manifest_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    registered = json.loads(COMMITTED_MANIFEST.read_text())["models"]
    assert result.stdout.count("golden output: match") == len(registered), result.stdout
    tests = sum(1 for model in registered if model["variant"].endswith("-testtiny"))
    assert result.stdout.count("no bound") == tests  # structural test models have no WER bound


# --- another machine of the class: threads, cores, onnxruntime options, GEMM backend ----------


def test_threads_and_cores_do_not_change_the_decoded_content(full_store: ModelStore) -> None:
    """1 or 2 threads per model, and a machine with one core (OpenBLAS and the runtimes size
    their thread pools by it): the goldens recorded here hold for every registered model."""
    registered = len(json.loads(COMMITTED_MANIFEST.read_text())["models"])
    runs = [
        run_cli("models", "smoke", "--manifest", full_store.manifest_path,
                env={"OFFLINE_ASR_THREADS": threads})
        for threads in ("1", "2")
    ]  # fmt: skip
    runs.append(
        run_cli("models", "smoke", "--manifest", full_store.manifest_path, env={}, cpus={0})
    )
    for result in runs:
        assert result.exit_code == 0, result.stdout + result.stderr
        assert result.stdout.count("golden output: match") == registered, result.stdout


@pytest.mark.parametrize(
    ("level", "threads", "deterministic"),
    [
        (onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL, 1, False),
        (onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC, 2, False),
        (onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL, 1, True),
        (onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL, 2, False),
    ],
)
def test_onnxruntime_options_do_not_change_the_decoded_content(
    small_store: ModelStore,
    monkeypatch: pytest.MonkeyPatch,
    level: onnxruntime.GraphOptimizationLevel,
    threads: int,
    deterministic: bool,
) -> None:
    def options(_: int) -> onnxruntime.SessionOptions:
        session = onnxruntime.SessionOptions()
        session.graph_optimization_level = level
        session.intra_op_num_threads = threads
        session.use_deterministic_compute = deterministic
        return session

    monkeypatch.setattr(gigaam_engine, "pinned_session_options", options)
    model = small_store.get(small_store.load(), GIGAAM)
    report = check_smoke(
        small_store, model, small_store.load().manifest_version, options=LoadOptions()
    )
    assert report.verdict == "match", report.problems + report.differences


def test_the_gemm_backend_is_a_class_of_its_own(small_store: ModelStore, tmp_path: Path) -> None:
    """CT2_USE_MKL=1 (CTranslate2's own choice on an Intel CPU) is outside the goldens' class:
    told so, not failed. Fleet-local goldens recorded with MKL then hold under MKL at 1 and 2
    threads; CT2_USE_MKL=0 (offline-asr's pin) compares with the manifest's."""
    manifest = small_store.manifest_path
    onednn = run_cli("models", "smoke", TINY, "--manifest", manifest, env={"CT2_USE_MKL": "0"})
    assert onednn.exit_code == 0 and "golden output: match" in onednn.stdout, onednn.stdout

    local: list[str | Path] = ["--local-goldens", tmp_path / "fleet", "--manifest", manifest]
    mkl = {"CT2_USE_MKL": "1"}
    told = run_cli("models", "smoke", TINY, *local, env=mkl)
    assert told.exit_code == 0, told.stdout + told.stderr
    text = " ".join(told.stdout.split())
    assert "golden output: not applicable" in text and "this is not a fault" in text
    assert "gemm: recorded onednn, now mkl" in text and "--record-local" in text
    assert "weights" not in text

    recorded = run_cli("models", "smoke", TINY, "--record-local", *local, env=mkl)
    assert recorded.exit_code == 0, recorded.stdout + recorded.stderr
    for threads in ("1", "2"):
        checked = run_cli(
            "models", "smoke", TINY, *local, env=mkl | {"OFFLINE_ASR_THREADS": threads}
        )
        assert checked.exit_code == 0, checked.stdout + checked.stderr
        assert "golden output: match" in checked.stdout, checked.stdout


# --- a machine outside the class --------------------------------------------------------------


@pytest.mark.skipif(len(offered_isas()) < 2, reason="this CPU offers a single ISA")
def test_another_isa_is_told_the_goldens_do_not_apply_and_records_its_own(
    store: ModelStore,
) -> None:
    other = next(isa for isa in reversed(offered_isas()) if isa != PINNED_ISA)
    env = {"CT2_FORCE_CPU_ISA": other}
    before = _registry_bytes(store)

    told = run_cli("models", "smoke", TINY, "--manifest", store.manifest_path, env=env)
    assert told.exit_code == 0, told.stdout + told.stderr
    text = " ".join(told.stdout.split())
    assert f"ct2_cpu_isa: recorded {PINNED_ISA}, now {other}" in text
    assert "does not apply here" in text and "--record-local" in text

    recorded = run_cli("models", "smoke", TINY, "--record-local",
                       "--manifest", store.manifest_path, env=env)  # fmt: skip
    assert recorded.exit_code == 0, recorded.stdout + recorded.stderr
    (path,) = (store.root / ".local-goldens").glob(f"*/{TINY}.json")
    golden = read_golden(path, TINY)
    assert golden.reproducibility_class["ct2_cpu_isa"] == other
    (line,) = (store.root / ".local-goldens" / "RECORDS.jsonl").read_text().splitlines()
    assert json.loads(line)["sha256"] == sha256_of(path)
    assert sha256_of(path) in recorded.stdout
    assert _registry_bytes(store) == before  # fleet-local goldens never touch the manifest

    checked = run_cli("models", "smoke", TINY, "--manifest", store.manifest_path,
                      env=env | {"OFFLINE_ASR_THREADS": "1"})  # fmt: skip
    assert checked.exit_code == 0 and "golden output: match" in checked.stdout, checked.stdout

    _edit_json(path, lambda d: d["decoded"]["segments"][0]["words"][2].update(end=9.99))
    broken = run_cli("models", "smoke", TINY, "--manifest", store.manifest_path, env=env)
    assert broken.exit_code == 1
    text = " ".join(broken.stdout.split())
    assert "segment 0, words[2].end: recorded 9.99" in text
    assert "the weights are not the cause" in text

    not_a_folder = store.root / "CHANGELOG-copy.txt"
    not_a_folder.write_text("a file, not a folder\n")
    unwritable = run_cli("models", "smoke", TINY, "--record-local", "--local-goldens", not_a_folder,
                         "--manifest", store.manifest_path, env=env)  # fmt: skip
    assert unwritable.exit_code == 2, unwritable.stdout + unwritable.stderr
    assert "cannot write fleet-local goldens" in " ".join(unwritable.stderr.split())

    again = run_cli("models", "smoke", TINY, "--record-local", "--manifest", store.manifest_path)
    assert again.exit_code == 2 and "nothing was recorded" in " ".join(again.stderr.split())
    assert _registry_bytes(store) == before


# --- the golden file --------------------------------------------------------------------------


def test_one_changed_token_names_model_segment_and_field(store: ModelStore, cli: Cli) -> None:
    before = _registry_bytes(store)
    _edit_json(
        _golden(store, TINY), lambda d: d["decoded"]["segments"][0]["tokens"].__setitem__(1, 384)
    )
    result = cli("models", "smoke", TINY, manifest=store.manifest_path)
    assert result.exit_code == 1
    text = " ".join(result.stdout.split())
    assert f"the decoded output of {TINY} differs" in text
    assert "segment 0, tokens[1]: recorded 384, now 383" in text
    assert "the weights are not the cause: all 4 files were hashed again" in text
    assert "changed after it was recorded" in text
    assert "weights differ" not in text
    assert _registry_bytes(store) == before


def test_scores_beyond_the_tolerance_are_a_note_not_a_failure(store: ModelStore, cli: Cli) -> None:
    def shift(data: Any) -> None:
        data["scores"]["segments"][0]["avg_logprob"] += 0.01

    _edit_json(_golden(store, GIGAAM), shift)
    result = cli("models", "smoke", GIGAAM, manifest=store.manifest_path)
    assert result.exit_code == 0, result.stdout
    text = " ".join(result.stdout.split())
    assert "golden output: match" in text and "scores differ by more than 0.0001" in text
    assert "segment 0, avg_logprob" in text


def _oversized(path: Path) -> None:
    with path.open("r+b") as stream:
        stream.truncate(17 * 1024 * 1024)


def _unreadable(path: Path) -> None:
    path.unlink()
    path.mkdir()


BAD_GOLDENS: dict[str, tuple[Callable[[Path], object], str]] = {
    "missing": (lambda p: p.unlink(), "is missing"),
    "unreadable": (_unreadable, "cannot read the golden file"),
    "not json": (lambda p: p.write_text('{"format": 1,'), "is not valid JSON (line 1"),
    "not utf-8": (lambda p: p.write_bytes(b"\xff\xfe{}"), "is not UTF-8 text"),
    "not a golden": (lambda p: p.write_text('{"format": 1}'), "is not a golden file"),
    "too large": (_oversized, "a golden file is a few kB"),
    "nested": (lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "nests too deeply"),
    "another model": (
        lambda p: shutil.copy(p.with_name(f"{TINY}.json"), p),
        f"holds the golden output of '{TINY}'",
    ),
    "another class": (
        lambda p: _edit_json(p, lambda d: d["reproducibility_class"].update(arch="aarch64")),
        "was recorded for the class arch=aarch64",
    ),
}


@pytest.mark.parametrize("case", list(BAD_GOLDENS))
def test_a_bad_golden_file_is_bad_input(store: ModelStore, cli: Cli, case: str) -> None:
    damage, message = BAD_GOLDENS[case]
    before = _registry_bytes(store)
    damage(_golden(store, GIGAAM))
    result = cli("models", "smoke", GIGAAM, manifest=store.manifest_path)
    assert result.exit_code == 2, result.stdout + result.stderr
    text = " ".join(result.stdout.split())
    assert f"ERROR {GIGAAM}:" in text and message in text and "Traceback" not in text
    assert str(_golden(store, GIGAAM)) in text
    as_json = cli("models", "smoke", "--json", GIGAAM, manifest=store.manifest_path)
    assert as_json.exit_code == 2 and message in json.loads(as_json.stdout)[0]["error"]
    assert _registry_bytes(store) == before


def test_weights_altered_after_their_load_are_named(
    store: ModelStore, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights that changed after the check before the load (bit rot, a copy over a running
    store; simulated by skipping that check): the decoded output differs, and the full re-hash
    that follows names the weights, not the runtime."""
    onnx = store.root / "gigaam" / "v3-ctc-testtiny" / "v3_ctc.onnx"
    data = bytearray(onnx.read_bytes())
    data[-12000:-4000] = bytes(8000)
    onnx.write_bytes(bytes(data))
    monkeypatch.setattr(base, "check_before_load", lambda *args, **kwargs: None)
    result = cli("models", "smoke", GIGAAM, manifest=store.manifest_path)
    assert result.exit_code == 1, result.stdout + result.stderr
    text = " ".join(result.stdout.split())
    assert f"the decoded output of {GIGAAM} differs" in text
    assert (
        "the weights differ from the manifest (gigaam/v3-ctc-testtiny/v3_ctc.onnx: altered)" in text
    )
    assert "runtime differences" not in text


def test_a_golden_from_an_older_offline_asr_is_a_note(store: ModelStore, cli: Cli) -> None:
    manifest = store.load()
    model = store.get(manifest, GIGAAM)
    assert model.smoke is not None
    model.smoke = model.smoke.model_copy(update={"golden": None})
    write_atomic(store.manifest_path, manifest.to_json())
    result = cli("models", "smoke", GIGAAM, manifest=store.manifest_path)
    assert result.exit_code == 0
    assert "recorded by an older offline-asr" in " ".join(result.stdout.split())


def test_wer_above_the_bound_fails(store: ModelStore, cli: Cli) -> None:
    manifest = store.load()
    model = store.get(manifest, TINY)
    assert model.smoke is not None
    model.smoke = model.smoke.model_copy(update={"reference_text": "completely different words"})
    write_atomic(store.manifest_path, manifest.to_json())
    result = cli("models", "smoke", TINY, manifest=store.manifest_path)
    assert result.exit_code == 1 and "above the bound" in result.stdout


def test_altered_smoke_clip_is_refused(store: ModelStore, cli: Cli) -> None:
    manifest = store.load()
    model = store.get(manifest, TINY)
    assert model.smoke is not None
    model.smoke = model.smoke.model_copy(update={"audio_sha256": "1" * 64})
    write_atomic(store.manifest_path, manifest.to_json())
    result = cli("models", "smoke", TINY, manifest=store.manifest_path)
    assert result.exit_code == 1 and "smoke clip" in result.stderr


def test_record_writes_the_manifests_goldens_through_the_registry(
    store: ModelStore, cli: Cli
) -> None:
    """`--record` bumps manifest_version with a CHANGELOG entry when a smoke entry changes, and
    only then; a missing golden file is written again either way."""
    version = store.load().manifest_version
    store.golden_file(GIGAAM).unlink()
    before = _registry_bytes(store)
    restored = cli("models", "smoke", "--record", GIGAAM, manifest=store.manifest_path)
    assert restored.exit_code == 0, restored.stdout
    assert _registry_bytes(store) == before and store.golden_file(GIGAAM).is_file()

    manifest = store.load()
    model = store.get(manifest, GIGAAM)
    assert model.smoke is not None
    pinned = model.smoke.golden_sha256
    model.smoke = model.smoke.model_copy(update={"golden_sha256": "0" * 64})
    write_atomic(store.manifest_path, manifest.to_json())
    recorded = cli("models", "smoke", "--record", GIGAAM, manifest=store.manifest_path)
    assert recorded.exit_code == 0 and f"manifest_version is now {version + 1}" in recorded.stdout
    entry = store.changelog_path.read_text().split("\n## ")[1]
    assert (
        f"manifest_version {version + 1}" in entry
        and f"golden sha256 {'0' * 64} -> {pinned}" in entry
    )
    assert cli("models", "smoke", GIGAAM, manifest=store.manifest_path).exit_code == 0

    target = cli(
        "models", "smoke", "--record", "--target", store.root, manifest=store.manifest_path
    )
    assert target.exit_code == 2 and "not on an installed target" in target.stderr


def test_goldens_belong_to_the_store_and_leave_with_their_model(
    store: ModelStore, cli: Cli
) -> None:
    """`models verify` accepts the listed golden files and reports a stray one; `models remove`
    takes the model's golden file with it."""
    assert store.golden_file(BASE).is_file()  # its weights were left out of this store
    assert cli("models", "remove", BASE, manifest=store.manifest_path).exit_code == 0
    assert not store.golden_file(BASE).exists()
    verified = cli("models", "verify", manifest=store.manifest_path)
    assert verified.exit_code == 0, verified.stdout
    stray = store.root / "goldens" / "retired-model.json"
    stray.write_text("{}\n")
    result = cli("models", "verify", manifest=store.manifest_path)
    assert result.exit_code == 1 and "goldens/retired-model.json" in result.stdout
    stray.unlink()
    assert cli("models", "remove", GIGAAM, manifest=store.manifest_path).exit_code == 0
    assert not store.golden_file(GIGAAM).exists() and store.golden_file(TINY).is_file()
    assert cli("models", "verify", manifest=store.manifest_path).exit_code == 0


# --- the determinism matrix -------------------------------------------------------------------


def test_matrix_groups_configurations_by_decoded_content(small_store: ModelStore) -> None:
    result = run_cli("models", "smoke", "--matrix", "--json", TINY, GIGAAM, "--isa", PINNED_ISA,
                     "--gemm", "onednn", "--manifest", small_store.manifest_path)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    configs = payload["configurations"]
    assert [(c["isa"], c["gemm"], c["threads"]) for c in configs] == [
        (PINNED_ISA, "onednn", 1), (PINNED_ISA, "onednn", 2)
    ]  # fmt: skip
    assert all(c["error"] is None for c in configs)
    assert [c["groups"] for c in configs] == [{TINY: "A", GIGAAM: "A"}] * 2
    assert configs[0]["runtime"]["openblas_threads"] == "1"

    refused = run_cli("models", "smoke", "--matrix", "--isa", "NEON",
                      "--manifest", small_store.manifest_path)  # fmt: skip
    assert refused.exit_code == 2 and "this CPU offers the ISAs" in refused.stderr
