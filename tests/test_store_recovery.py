"""`models prepare` / `models remove` killed with -9: what `models verify` says about the store
then, and how the next writer (under the store lock) puts it back.

The kills are made deterministic by running the CLI in a child that sends itself SIGKILL at a
named point (`_KILL_AT`); one more test kills a real preparation from outside during its smoke
test, with no patching at all.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offline_asr.registry.store import ModelStore
from support.helpers import PREPARE_TINY, Cli, state_of, write_ct2_model

PREPARE = ("models", "prepare")
FAKE = ("--engine", "whisper", "--variant", "fake", "--no-smoke")
OTHER = ("--engine", "whisper", "--variant", "other", "--no-smoke")

_KILL_AT = """
import os, signal, sys
from pathlib import Path
import offline_asr.registry.prepare as prepare
from offline_asr.cli import app
from offline_asr.registry.store import ModelStore

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

point = sys.argv.pop(1)
if point == "copying":  # while the files are copied into .staging
    prepare.copy_into = die
elif point == "swapping":  # the old folder moved aside, the new one not yet moved in
    rename = Path.rename
    def swap(self, target):
        if self.name == "model" and self.parent.parent.name == ".staging":
            die()
        return rename(self, target)
    Path.rename = swap
elif point == "registering":  # the folder is in place, the manifest not yet written
    ModelStore.save = die
elif point == "logging":  # the manifest is written, the CHANGELOG not yet
    ModelStore._log = die
app(sys.argv[1:], prog_name="offline-asr")
"""


def _killed_at(point: str, store: ModelStore, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_AT, point, *args, "--manifest", str(store.manifest_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr


def _leftovers(store: ModelStore) -> list[str]:
    if not store.staging.exists():
        return []
    return sorted(p.name for p in store.staging.iterdir() if p.name != "downloads")


def _verify(cli: Cli) -> tuple[int, str]:
    result = cli("models", "verify", "--json")
    assert result.exit_code in (0, 1), result.stderr
    return result.exit_code, result.stdout


@pytest.fixture
def seeded(store: ModelStore, cli: Cli, ct2_dir: Path) -> dict[str, str]:
    """A store holding `whisper-fake`; returns its byte-for-byte snapshot."""
    assert cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir)).exit_code == 0
    return state_of(store)


def _next_writer_settles(store: ModelStore, cli: Cli, ct2_dir: Path) -> None:
    """Any later change under the lock (here a preparation that changes nothing) settles it."""
    assert cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir)).exit_code == 0
    assert _leftovers(store) == []
    code, report = _verify(cli)
    assert code == 0, report


@pytest.mark.parametrize("point", ["copying", "swapping", "registering"])
def test_a_killed_preparation_of_a_new_model_is_rolled_back(
    store: ModelStore, cli: Cli, ct2_dir: Path, seeded: dict[str, str], tmp_path: Path, point: str
) -> None:
    other = write_ct2_model(tmp_path / "other", weights=b"\x00\x40" * 4)
    _killed_at(point, store, *PREPARE, *OTHER, "--from-dir", str(other))
    assert _leftovers(store), "the kill leaves its work folder"
    if point == "registering":
        code, report = _verify(cli)
        assert code == 1
        assert json.loads(report)["unregistered"] == ["whisper/other"]
    _next_writer_settles(store, cli, ct2_dir)
    assert state_of(store) == seeded


@pytest.mark.parametrize("point", ["swapping", "registering"])
def test_a_killed_update_puts_the_registered_files_back(
    store: ModelStore, cli: Cli, ct2_dir: Path, seeded: dict[str, str], tmp_path: Path, point: str
) -> None:
    changed = write_ct2_model(tmp_path / "changed", weights=b"\x00\x41" * 4)
    _killed_at(point, store, *PREPARE, *FAKE, "--from-dir", str(changed))
    code, report = _verify(cli)
    assert code == 1, "the registered model's folder is missing or holds other bytes"
    assert not json.loads(report)["models"][0]["ok"]
    _next_writer_settles(store, cli, ct2_dir)
    assert state_of(store) == seeded


def test_a_preparation_killed_after_registering_keeps_the_new_model(
    store: ModelStore, cli: Cli, ct2_dir: Path, seeded: dict[str, str], tmp_path: Path
) -> None:
    other = write_ct2_model(tmp_path / "other", weights=b"\x00\x40" * 4)
    _killed_at("logging", store, *PREPARE, *OTHER, "--from-dir", str(other))
    _next_writer_settles(store, cli, ct2_dir)
    assert store.get(store.load(), "whisper-other").path == "whisper/other"


def test_a_killed_removal_puts_the_model_back(
    store: ModelStore, cli: Cli, ct2_dir: Path, seeded: dict[str, str]
) -> None:
    _killed_at("registering", store, "models", "remove", "whisper-fake")
    code, _ = _verify(cli)
    assert code == 1, "the model's folder is gone while the manifest still lists it"
    _next_writer_settles(store, cli, ct2_dir)
    assert state_of(store) == seeded


def test_a_preparation_killed_during_its_smoke_test(
    store: ModelStore, cli: Cli, ct2_dir: Path, seeded: dict[str, str]
) -> None:
    """No patching: SIGKILL from outside once the new folder is in place (the smoke test runs
    the model before the manifest is written)."""
    exe = Path(sys.executable).with_name("offline-asr")
    child = subprocess.Popen(
        [str(exe), *PREPARE_TINY, "--manifest", str(store.manifest_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    folder = store.root / "whisper" / "tiny.en"
    deadline = time.monotonic() + 240
    while not (folder / "checksum.txt").is_file():
        assert child.poll() is None, f"finished before the kill: {child.communicate()[1]}"
        assert time.monotonic() < deadline, "the folder never appeared"
        time.sleep(0.01)
    child.kill()
    child.wait()
    assert "whisper-tiny.en" not in {m.id for m in store.load().models}
    code, report = _verify(cli)
    assert code == 1 and json.loads(report)["unregistered"] == ["whisper/tiny.en"]
    human = cli("models", "verify")
    assert "whisper/tiny.en" in human.stdout and "not in the manifest" in human.stdout
    _next_writer_settles(store, cli, ct2_dir)
    assert state_of(store) == seeded


# --- what recovery must never touch ---------------------------------------------------------


def _plant(store: ModelStore, name: str, journal: dict[str, object]) -> Path:
    work = store.staging / name
    work.mkdir(parents=True)
    (work / "journal.json").write_text(json.dumps(journal))
    return work


def _precious(folder: Path) -> Path:
    """A file that must survive whatever recovery does."""
    folder.mkdir(parents=True)
    (folder / "data.txt").write_text("precious")
    return folder / "data.txt"


def test_a_journal_naming_a_folder_outside_the_store_is_left_alone(
    store: ModelStore, cli: Cli, ct2_dir: Path, seeded: dict[str, str], tmp_path: Path
) -> None:
    precious = _precious(tmp_path / "outside" / "keep")
    _plant(store, "evil.1", {"model_id": "evil", "folder": "../outside", "after": []})
    assert cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir)).exit_code == 0
    assert precious.is_file(), "recovery deleted a folder outside the store"
    assert _leftovers(store) == ["evil.1"]


def test_a_journal_naming_another_models_folder_is_left_alone(
    store: ModelStore, cli: Cli, ct2_dir: Path, seeded: dict[str, str]
) -> None:
    _plant(store, "other.1", {"model_id": "other", "folder": "whisper/fake", "after": []})
    assert cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir)).exit_code == 0
    assert state_of(store) == seeded, "recovery removed another model's folder"
    assert _leftovers(store) == ["other.1"]


def test_a_linked_staging_folder_is_refused(
    store: ModelStore, cli: Cli, ct2_dir: Path, seeded: dict[str, str], tmp_path: Path
) -> None:
    precious = _precious(tmp_path / "elsewhere" / "victim.123")
    shutil.rmtree(store.staging, ignore_errors=True)
    store.staging.symlink_to(tmp_path / "elsewhere")
    result = cli(*PREPARE, *FAKE, "--from-dir", str(ct2_dir))
    assert result.exit_code == 2 and "symbolic link" in result.stderr
    assert precious.is_file()
