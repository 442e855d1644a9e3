"""`offline-asr batch`: correct lines with provenance, resumable, kill-safe, never corrupt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offline_asr.asr.goldens import read_golden
from offline_asr.asr.smoke import word_error_rate
from offline_asr.batch.inputs import collect_inputs
from offline_asr.batch.results import ResultsError, open_results
from offline_asr.errors import OfflineAsrError
from offline_asr.fsutil import sha256_file
from offline_asr.registry.store import ModelStore
from support.batch_files import (
    REFERENCES,
    decoded_of,
    distinct_speech,
    make_archive,
    outcome,
    read_lines,
)
from support.helpers import run_cli

TINY = "whisper-tiny.en"
pytestmark = pytest.mark.slow


def _batch(store: ModelStore, *args: str | Path) -> tuple[int, str]:
    result = run_cli("batch", *args, "--model", TINY, "--manifest", store.manifest_path)
    return result.exit_code, result.stderr


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_archive(tmp_path_factory.mktemp("archive"))


def test_speech_silence_and_a_corrupt_file(
    full_store: ModelStore, archive: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    code, stderr = _batch(full_store, archive, "--out", out, "--workers", "2",
                          "--language", "en", "--word-timestamps")  # fmt: skip
    assert code == 1, stderr  # one file failed
    assert "5 files" in stderr and "1 failed" in stderr
    assert f"failed: {archive}/broken.wav" in stderr
    lines = {Path(line["path"]).name: line for line in read_lines(out)}
    assert sorted(lines) == ["broken.wav", "en_second.wav", "en_short.wav", "quiet.wav",
                             "same_as_short.wav"]  # fmt: skip
    broken = lines["broken.wav"]
    assert broken["status"] == "error" and broken["error_type"] == "TruncatedAudioError"
    assert "broken.wav" in broken["error"]
    assert [name for name, line in lines.items() if line["status"] == "error"] == ["broken.wav"]
    for name in ("en_short.wav", "en_second.wav"):
        assert word_error_rate(REFERENCES[name], lines[name]["text"]) <= 0.15
    assert lines["quiet.wav"]["text"] == "" and lines["quiet.wav"]["status"] == "ok"
    # The same bytes as the committed golden (recorded with these options).
    golden = read_golden(full_store.golden_file(TINY), TINY).decoded
    assert decoded_of(lines["en_short.wav"]) == golden
    # Identical audio is transcribed once: the first path in input order, the other a copy.
    assert lines["en_short.wav"]["same_audio_as"] == str(archive / "deep" / "same_as_short.wav")
    assert "same_audio_as" not in lines["same_as_short.wav"]
    assert decoded_of(lines["same_as_short.wav"]) == golden
    provenance = lines["en_second.wav"]["provenance"]
    model = full_store.get(full_store.load(), TINY)
    assert provenance["model_id"] == TINY and provenance["engine"] == "whisper"
    assert provenance["manifest_version"] == full_store.load().manifest_version
    assert provenance["fingerprint"].startswith("sha256:") and model.artifacts
    assert provenance["options"]["word_timestamps"] is True
    assert provenance["runtime"]["ct2_cpu_isa"] and provenance["runtime"]["compute_type"]
    second = archive / "deep" / "deeper" / "en_second.wav"
    assert provenance["audio_sha256"] == sha256_file(second).sha256
    assert lines["en_second.wav"]["audio_sha256"] == provenance["audio_sha256"]

    # A rerun transcribes nothing and writes nothing; the failure is still reported.
    before = out.read_bytes()
    code, stderr = _batch(full_store, archive, "--out", out, "--language", "en",
                          "--word-timestamps")  # fmt: skip
    assert code == 1 and "0 transcribed, 4 already done" in stderr, stderr
    assert out.read_bytes() == before
    # Other options are another request: everything is transcribed again.
    code, stderr = _batch(full_store, archive / "en_short.wav", "--out", out, "--language", "en")
    assert code == 0 and "1 transcribed" in stderr, stderr
    assert len(read_lines(out)) == 6


def test_a_killed_job_finishes_on_rerun_as_one_clean_run(
    full_store: ModelStore, tmp_path: Path
) -> None:
    """SIGKILL once the first lines are out, a torn line left behind, then a rerun: the same
    decoded content for every file as one clean run, every line whole, nothing twice."""
    folder = distinct_speech(tmp_path / "speech", 8)
    clean = tmp_path / "clean.jsonl"
    assert _batch(full_store, folder, "--out", clean, "--workers", "2")[0] == 0
    killed = tmp_path / "killed.jsonl"
    exe = Path(sys.executable).with_name("offline-asr")
    process = subprocess.Popen(
        [exe, "batch", folder, "--out", killed, "--model", TINY, "--workers", "1",
         "--manifest", full_store.manifest_path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while (not killed.exists() or killed.read_bytes().count(b"\n") < 2) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = len(read_lines(killed))
    assert 2 <= written < 8
    with killed.open("ab") as stream:  # as if the kill had landed in the middle of a write
        stream.write(b'{"path": "/cut/short.wav", "status": "o')
    code, stderr = _batch(full_store, folder, "--out", killed, "--workers", "2")
    assert code == 0, stderr
    assert f"{8 - written} transcribed, {written} already done" in stderr
    assert outcome(killed) == outcome(clean)
    assert len(read_lines(killed)) == 8  # every line parses; none twice


def test_results_file_repair_and_refusals(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"status": "ok", "path": "a"}\n{"status": "ok", "pa')
    with open_results(out) as results:
        assert results.torn_bytes == len(b'{"status": "ok", "pa') and len(results.lines) == 1
        with pytest.raises(ResultsError, match="being written by another batch job"):  # noqa: SIM117
            with open_results(out):
                pass
    assert out.read_bytes() == b'{"status": "ok", "path": "a"}\n'
    out.write_bytes(b'{"status": "ok"}\nnot json\n{"status": "ok"}\n')
    with pytest.raises(ResultsError, match="line 2, is not a result line"):  # noqa: SIM117
        with open_results(out):
            pass
    assert out.read_bytes() == b'{"status": "ok"}\nnot json\n{"status": "ok"}\n'  # untouched


def test_inputs_from_folders_and_list_files(archive: Path, tmp_path: Path) -> None:
    listing = tmp_path / "files.txt"
    listing.write_text(f"# calls\n{archive / 'quiet.wav'}\n../{tmp_path.name}/x.raw\n\n")
    (tmp_path / "x.raw").write_bytes(b"anything a list names is an input")
    found = collect_inputs([archive, listing])
    names = [path.name for path in found]
    assert names == ["broken.wav", "en_second.wav", "same_as_short.wav", "en_short.wav",
                     "quiet.wav", "x.raw"]  # fmt: skip
    assert found[-1] == tmp_path / "x.raw"  # absolute, without `..`
    with pytest.raises(OfflineAsrError, match="nope: no such file or folder"):
        collect_inputs([tmp_path / "nope"])


def test_bad_usage_is_exit_2(full_store: ModelStore, archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    code, stderr = _batch(full_store, tmp_path / "missing", "--out", out)
    assert code == 2 and "no such file or folder" in stderr
    result = run_cli("batch", archive, "--out", out, "--model", "nope",
                     "--manifest", full_store.manifest_path)  # fmt: skip
    assert result.exit_code == 2 and "nope" in result.stderr
    assert not out.exists() or out.read_bytes() == b""
