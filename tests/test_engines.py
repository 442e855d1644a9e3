"""Engines end to end through `offline-asr transcribe`: right words, identical bytes, audit."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import srt
import webvtt
from openai.types.audio import TranscriptionVerbose

from offline_asr.asr.smoke import word_error_rate
from offline_asr.constants import CLIPS_DIR
from offline_asr.registry.store import ModelStore
from support.helpers import COMMITTED_MANIFEST, Cli, run_cli

REFERENCES: dict[str, str] = json.loads((CLIPS_DIR / "references.json").read_text())
EN = CLIPS_DIR / "en_short.wav"
EN2 = CLIPS_DIR / "en_second.wav"
RU = CLIPS_DIR / "ru_short.wav"


def _transcribe(cli: Cli, store: ModelStore, *args: str) -> tuple[int, str, str]:
    result = cli("transcribe", *args, manifest=store.manifest_path)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("model", ["whisper-tiny.en", "whisper-base"])
@pytest.mark.parametrize("clip", [EN, EN2])
def test_english_speech_is_transcribed_right(
    full_store: ModelStore, cli: Cli, model: str, clip: Path
) -> None:
    code, out, err = _transcribe(cli, full_store, str(clip), "--model", model)
    assert code == 0, err
    assert word_error_rate(REFERENCES[clip.name], out) <= 0.15, out


def test_russian_speech_with_whisper_base(full_store: ModelStore, cli: Cli) -> None:
    code, out, err = _transcribe(cli, full_store, str(RU), "--model", "whisper-base",
                                 "--language", "ru")  # fmt: skip
    assert code == 0, err
    assert word_error_rate(REFERENCES[RU.name], out) <= 0.15, out


def test_same_file_gives_identical_json_across_runs_and_threads(
    full_store: ModelStore, tmp_path: Path
) -> None:
    outputs = []
    for threads in ("1", "2", "2"):
        result = run_cli("transcribe", str(EN), "--model", "whisper-tiny.en", "--format",
                         "verbose_json", "--word-timestamps", "--threads", threads,
                         "--manifest", str(full_store.manifest_path))  # fmt: skip
        assert result.exit_code == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1] == outputs[2]
    payload = json.loads(outputs[0])
    assert payload["x_offline_asr"]["runtime"]["ct2_cpu_isa"] == os.environ.get(
        "CT2_FORCE_CPU_ISA", payload["x_offline_asr"]["runtime"]["ct2_cpu_isa"]
    )


def test_verbose_json_has_openai_shape_and_provenance(full_store: ModelStore, cli: Cli) -> None:
    code, out, err = _transcribe(cli, full_store, str(EN), "--model", "whisper-tiny.en",
                                 "--format", "verbose_json", "--word-timestamps")  # fmt: skip
    assert code == 0, err
    verbose = TranscriptionVerbose.model_validate(json.loads(out))
    assert verbose.language == "english" and verbose.words and verbose.segments
    provenance = json.loads(out)["x_offline_asr"]
    committed = json.loads(COMMITTED_MANIFEST.read_text())
    assert provenance["model_id"] == "whisper-tiny.en"
    assert provenance["fingerprint"].startswith("sha256:")
    assert provenance["manifest_version"] == full_store.load().manifest_version
    assert committed["schema_version"] == 1


def test_subtitles_parse_with_standard_parsers(
    full_store: ModelStore, cli: Cli, tmp_path: Path
) -> None:
    for fmt in ("srt", "vtt"):
        code, _, err = _transcribe(cli, full_store, str(EN), str(EN2), "--model",
                                   "whisper-tiny.en", "--format", fmt,
                                   "--output-dir", str(tmp_path))  # fmt: skip
        assert code == 0, err
    cues = list(srt.parse((tmp_path / "en_short.srt").read_text()))
    assert cues and cues[0].start.total_seconds() >= 0
    captions = webvtt.from_string((tmp_path / "en_second.vtt").read_text()).captions
    assert captions and "kitchen" in " ".join(c.text for c in captions).lower()


def test_bad_files_are_reported_and_the_others_still_transcribed(
    full_store: ModelStore, cli: Cli, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio at all\n" * 100)
    missing = tmp_path / "missing.wav"
    code, _out, err = _transcribe(cli, full_store, str(empty), str(EN), str(notes), str(missing),
                                 "--model", "whisper-tiny.en", "--output-dir",
                                 str(tmp_path / "out"))  # fmt: skip
    assert code == 2
    assert (tmp_path / "out" / "en_short.txt").is_file()
    assert "empty.wav" in err and "notes.txt" in err and "missing.wav" in err
    assert not (tmp_path / "out" / "empty.txt").exists()


def test_unknown_language_for_the_model_is_bad_input(full_store: ModelStore, cli: Cli) -> None:
    code, _, err = _transcribe(cli, full_store, str(EN), "--model", "whisper-tiny.en",
                               "--language", "ru")  # fmt: skip
    assert code == 2 and "does not know language 'ru'" in err


def _copy(store: ModelStore, tmp_path: Path) -> ModelStore:
    shutil.copytree(store.root.parent, tmp_path / "copy")
    return ModelStore(tmp_path / "copy" / "models" / "manifest.json")


def test_altered_weights_are_refused_naming_the_file(
    full_store: ModelStore, cli: Cli, tmp_path: Path
) -> None:
    store = _copy(full_store, tmp_path)
    path = store.root / "whisper" / "tiny.en" / "model.bin"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[123456] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime as before
    code, _, err = _transcribe(cli, store, str(EN), "--model", "whisper-tiny.en")
    assert code == 1
    assert "whisper/tiny.en/model.bin" in err and "refusing to load altered weights" in err
    assert "models sync" in err  # the hint says where to get good files


def test_verified_cache_and_full_verify(full_store: ModelStore, cli: Cli, tmp_path: Path) -> None:
    store = _copy(full_store, tmp_path)
    assert _transcribe(cli, store, str(EN), "--model", "whisper-tiny.en")[0] == 0
    cache = json.loads((store.root / ".verified.json").read_text())
    assert any("model.bin" in key for key in cache)
    path = store.root / "whisper" / "tiny.en" / "model.bin"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[999] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    code, _, err = _transcribe(cli, store, str(EN), "--model", "whisper-tiny.en", "--full-verify")
    assert code == 1 and "model.bin" in err


def test_missing_weights_are_refused(full_store: ModelStore, cli: Cli, tmp_path: Path) -> None:
    store = _copy(full_store, tmp_path)
    (store.root / "gigaam" / "v3-ctc-testtiny" / "v3_ctc.onnx").unlink()
    code, _, err = _transcribe(cli, store, str(RU), "--model", "gigaam-v3-ctc-testtiny")
    assert code == 1 and "v3_ctc.onnx is missing" in err


def test_auto_routes_russian_to_gigaam_and_english_to_whisper(
    full_store: ModelStore, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEFAULT_GIGAAM_MODEL", "gigaam-v3-ctc-testtiny")
    code, out, err = _transcribe(cli, full_store, str(RU), str(EN), "--model", "auto",
                                 "--format", "verbose_json")  # fmt: skip
    assert code == 0, err
    decoder = json.JSONDecoder()
    first, end = decoder.raw_decode(out)
    second, _ = decoder.raw_decode(out[end:].lstrip())
    assert first["x_offline_asr"]["model_id"] == "gigaam-v3-ctc-testtiny"
    assert "auto: language ru" in first["x_offline_asr"]["runtime"]["route"]
    assert second["x_offline_asr"]["model_id"] == "whisper-base"
    assert second["language"] == "english"


def test_audit_log_has_one_line_per_transcription_and_no_text(
    full_store: ModelStore, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.jsonl"
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....garbage")
    code, _, _ = _transcribe(cli, full_store, str(EN), str(bad), "--model", "whisper-tiny.en",
                             "--audit-log", str(log))  # fmt: skip
    assert code == 2
    ok, failed = [json.loads(line) for line in log.read_text().splitlines()]
    assert ok["outcome"] == "ok" and failed["outcome"] == "error"
    assert ok["model_id"] == "whisper-tiny.en"
    assert ok["manifest_version"] == full_store.load().manifest_version
    assert ok["fingerprint"].startswith("sha256:") and len(ok["audio_sha256"]) == 64
    assert ok["options"]["beam_size"] == 5 and ok["latency_s"] > 0 and ok["duration_s"] > 4
    assert "text" not in ok
    monkeypatch.setenv("OFFLINE_ASR_AUDIT_TEXT", "1")
    _transcribe(cli, full_store, str(EN), "--model", "whisper-tiny.en", "--audit-log", str(log))
    assert "weather" in json.loads(log.read_text().splitlines()[-1])["text"]


def test_audit_report_answers_who_used_which_model_version(
    full_store: ModelStore, cli: Cli, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"\x00" * 10)
    _transcribe(cli, full_store, str(EN), str(EN2), "--model", "whisper-tiny.en", "--audit-log",
                str(log))  # fmt: skip
    _transcribe(cli, full_store, str(bad), "--model", "whisper-tiny.en", "--audit-log", str(log))
    from typer.testing import CliRunner

    from offline_asr.cli import app

    def report(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["audit", "report", *args])
        return result.exit_code, result.stdout

    code, out = report("--json", str(log))
    assert code == 0, out
    (row,) = json.loads(out)["rows"]
    assert (row["model_id"], row["client"], row["requests"], row["errors"]) == (
        "whisper-tiny.en", "cli", 3, 1,
    )  # fmt: skip
    assert row["manifest_version"] == full_store.load().manifest_version
    assert row["audio_hours"] == pytest.approx((4.49 + 3.30) / 3600, rel=0.02)
    code, out = report(str(log))
    assert code == 0 and "whisper-tiny.en" in out
    assert report(str(tmp_path / "nope.jsonl"))[0] == 2
