"""Audit report: who used which model version, from hand-written and real audit log lines."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from offline_asr.asr.audit import AuditLog
from offline_asr.asr.audit_report import (
    NO_MODEL,
    AuditReport,
    UsageRow,
    build_report,
    read_entries,
    summarize,
)
from offline_asr.asr.base import DecodeOptions
from offline_asr.constants import EXIT_BAD_INPUT
from offline_asr.errors import OfflineAsrError
from support.results import english, russian


def _line(
    time: str,
    model_id: str = "whisper-base",
    version: int | None = 3,
    *,
    duration_s: float | None = 1800.0,
    error: str | None = None,
    **context: Any,
) -> str:
    """A line as AuditLog writes it (the keys, not the formatting, matter)."""
    entry: dict[str, Any] = {
        "time": time,
        "event": "transcription",
        "outcome": "ok" if error is None else "error",
        "model_id": model_id,
        "manifest_version": None if error else version,
        "fingerprint": None if error else "sha256:0123",
        "audio_sha256": "ab" * 32,
        "duration_s": None if error else duration_s,
        "language": None if error else "en",
        "options": {"task": "transcribe"},
        "runtime": None if error else {"device": "cpu"},
        "latency_s": 0.5,
        **context,
    }
    if error is not None:
        entry["error"] = error
    return json.dumps(entry)


def _write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def logs(tmp_path: Path) -> list[Path]:
    """Two logs: two models, three versions, CLI and HTTP clients, failures and damaged lines."""
    first = _write(
        tmp_path / "audit.jsonl",
        _line("2025-03-01T10:00:00.000+00:00"),
        _line("2025-03-01T11:00:00.000+00:00", duration_s=900.0),
        '{"event": "service_started", "time": "2025-03-01T09:00:00+00:00"}',
        '{"time": "2025-03-01T12:00:00.000+00:00", "event": "transcr',  # cut off mid-write
        "",
        _line("2025-03-02T08:00:00.000+00:00", client="10.0.0.1", request_id="r1"),
        _line("2025-03-02T09:00:00.000+00:00", error="audio is empty", client="10.0.0.2"),
    )
    second = _write(
        tmp_path / "audit.jsonl.1",
        _line("2025-03-03T10:00:00.000+00:00", version=4, duration_s=360.0, client="10.0.0.1"),
        _line("2025-03-01T09:30:00.000+01:00", duration_s=0.0),  # 08:30 UTC, earliest of all
        _line("2025-03-04T10:00:00.000+00:00", "gigaam-v2-ctc", 2, duration_s=36.0),
        _line("2025-03-04T11:00:00.000+00:00", "gigaam-v2-ctc", 2, error="decoder failed"),
        _line("2025-03-05T10:00:00.000+00:00", version="3"),  # type: ignore[arg-type]
        "[1, 2]",
    )
    return [first, second]


def _keys(rows: list[UsageRow]) -> list[tuple[str, int | None, str]]:
    return [(row.model_id, row.manifest_version, row.client) for row in rows]


def test_rows_group_and_sort_by_model_version_and_client(logs: list[Path]) -> None:
    report = build_report(logs)
    assert _keys(report.rows) == [
        ("gigaam-v2-ctc", 2, "cli"),
        ("gigaam-v2-ctc", None, "cli"),  # failures without a version come after the versions
        ("whisper-base", 3, "10.0.0.1"),
        ("whisper-base", 3, "cli"),
        ("whisper-base", 4, "10.0.0.1"),
        ("whisper-base", None, "10.0.0.2"),
    ]
    assert report.entries == 8


def test_counts_hours_errors_and_first_last_seen(logs: list[Path]) -> None:
    rows = {(r.model_id, r.manifest_version, r.client): r for r in build_report(logs).rows}
    cli = rows["whisper-base", 3, "cli"]
    assert (cli.requests, cli.errors) == (3, 0)
    assert cli.audio_hours == pytest.approx(0.75)
    # Compared as times, not strings: 09:30+01:00 is before 10:00Z.
    assert cli.first_seen == "2025-03-01T09:30:00.000+01:00"
    assert cli.last_seen == "2025-03-01T11:00:00.000+00:00"
    failed = rows["whisper-base", None, "10.0.0.2"]
    assert (failed.requests, failed.errors, failed.audio_hours) == (1, 1, 0.0)
    assert rows["gigaam-v2-ctc", None, "cli"].errors == 1
    assert rows["gigaam-v2-ctc", 2, "cli"].audio_hours == pytest.approx(0.01)


def test_malformed_lines_are_reported_with_file_and_line(logs: list[Path]) -> None:
    report = build_report(logs)
    assert len(report.malformed) == 3
    cut, version, array = report.malformed
    assert cut.startswith(f"{logs[0]}:4: not JSON")
    assert version.startswith(f"{logs[1]}:5: 'manifest_version' must be an integer")
    assert array == f"{logs[1]}:6: a JSON list, not an object"


def test_read_entries_skips_other_events_and_bad_lines(logs: list[Path]) -> None:
    malformed: list[str] = []
    entries = list(read_entries(logs, malformed))
    assert len(entries) == 8
    assert {entry["event"] for entry in entries} == {"transcription"}
    assert len(malformed) == 3


def test_a_file_given_twice_is_counted_once(logs: list[Path]) -> None:
    other_spelling = logs[0].parent / ".." / logs[0].parent.name / logs[0].name
    assert build_report([logs[0], other_spelling]).entries == 4
    report = build_report([logs[0], logs[0]])
    assert report.entries == 4 and len(report.malformed) == 1


def test_time_range_includes_since_and_excludes_until(logs: list[Path]) -> None:
    report = build_report(
        logs,
        since=datetime(2025, 3, 2, 8, 0, tzinfo=UTC),
        until=datetime(2025, 3, 4, 10, 0, tzinfo=UTC),
    )
    assert _keys(report.rows) == [
        ("whisper-base", 3, "10.0.0.1"),
        ("whisper-base", 4, "10.0.0.1"),
        ("whisper-base", None, "10.0.0.2"),
    ]
    assert report.entries == 3
    assert len(report.malformed) == 3  # damaged lines are reported whatever the range


def test_bounds_without_a_zone_are_utc(logs: list[Path]) -> None:
    report = build_report(logs, until=datetime(2025, 3, 1, 9, 0))
    assert report.entries == 1  # only the line written at 08:30 UTC
    assert report.rows[0].first_seen == "2025-03-01T09:30:00.000+01:00"


def test_an_empty_time_range_is_refused(logs: list[Path]) -> None:
    moment = datetime(2025, 3, 1, tzinfo=UTC)
    with pytest.raises(OfflineAsrError, match="time range is empty"):
        build_report(logs, since=moment, until=moment)


def test_missing_file_is_a_clear_error(tmp_path: Path, logs: list[Path]) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(OfflineAsrError) as caught:
        build_report([logs[0], missing])
    assert caught.value.exit_code == EXIT_BAD_INPUT
    assert str(caught.value) == f"audit log {missing} does not exist"
    with pytest.raises(OfflineAsrError, match="is a folder"):
        build_report([tmp_path])


def test_lines_written_by_audit_log_are_read_back(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.jsonl"
    log = AuditLog(path, include_text=True)
    whisper, giga = english(), russian()
    log.record(
        model_id="whisper-tiny.en",
        audio_sha256="00" * 32,
        options=whisper.options,
        latency_s=1.25,
        result=whisper,
    )
    log.record(
        model_id="gigaam-v2-ctc",
        audio_sha256="11" * 32,
        options=giga.options,
        latency_s=0.5,
        result=giga,
        request_id="req-1",
        client="192.0.2.7",
        api_key_id="team-a",
    )
    log.record(
        model_id="whisper-large-v3",
        audio_sha256="22" * 32,
        options=DecodeOptions(),
        latency_s=0.01,
        error="model whisper-large-v3 is not in the manifest",
        request_id="req-2",
        client="192.0.2.7",
    )
    report = build_report([path])
    assert report.malformed == []
    assert report.entries == 3
    assert [(row.model_id, row.manifest_version, row.client) for row in report.rows] == [
        ("gigaam-v2-ctc", 3, "192.0.2.7"),
        ("whisper-large-v3", None, "192.0.2.7"),
        ("whisper-tiny.en", 3, "cli"),
    ]
    giga_row, failed, whisper_row = report.rows
    assert giga_row.audio_hours == pytest.approx(4.05 / 3600, abs=1e-9)
    assert whisper_row.audio_hours == pytest.approx(3664.2 / 3600)
    assert (failed.requests, failed.errors, failed.audio_hours) == (1, 1, 0.0)
    assert whisper_row.first_seen == whisper_row.last_seen
    datetime.fromisoformat(whisper_row.first_seen)


def test_summarize_accepts_any_iterable_of_entries() -> None:
    entries = [
        json.loads(_line("2025-03-01T10:00:00+00:00", client="10.0.0.9")),
        json.loads(_line("2025-03-01T10:00:00+00:00", client=None)),
    ]
    assert _keys(summarize(iter(entries))) == [
        ("whisper-base", 3, "10.0.0.9"),
        ("whisper-base", 3, "unknown"),
    ]
    assert summarize([]) == []


def test_to_dict_is_json_with_totals(logs: list[Path]) -> None:
    data = json.loads(json.dumps(build_report(logs).to_dict()))
    assert data["entries"] == 8
    assert len(data["rows"]) == 6 and len(data["malformed"]) == 3
    assert data["rows"][1]["manifest_version"] is None
    totals = data["totals"]
    assert (totals["requests"], totals["errors"]) == (8, 2)
    assert totals["audio_hours"] == pytest.approx(0.75 + 0.5 + 0.1 + 0.01)
    assert totals["first_seen"] == "2025-03-01T09:30:00.000+01:00"
    assert totals["last_seen"] == "2025-03-04T11:00:00.000+00:00"


def _render(report: AuditReport) -> str:
    output = io.StringIO()
    Console(file=output, width=200, color_system=None).print(report.render_table())
    return output.getvalue()


def test_table_has_hours_with_three_decimals_and_a_totals_row(logs: list[Path]) -> None:
    text = _render(build_report(logs))
    for column in ("model_id", "manifest_version", "client", "audio hours", "first seen"):
        assert column in text
    (cli_line,) = [line for line in text.splitlines() if "whisper-base" in line and "cli" in line]
    assert "0.750" in cli_line and "2025-03-01 08:30:00" in cli_line
    (total,) = [line for line in text.splitlines() if "total" in line]
    assert [cell.strip() for cell in total.split("│")[4:7]] == ["8", "2", "1.360"]
    assert "unknown" in text
    assert "3 malformed line(s) skipped" in text


def test_table_shows_log_text_literally(tmp_path: Path) -> None:
    """Model ids in failed HTTP requests are what the caller sent: no markup, no escapes."""
    hostile = "[bold]x\x1b[31m"
    path = _write(tmp_path / "a.jsonl", _line("2025-03-01T10:00:00+00:00", hostile, error="no"))
    text = _render(build_report([path]))
    assert "[bold]x\\x1b[31m" in text
    assert "\x1b" not in text


def test_an_empty_report_still_renders(tmp_path: Path) -> None:
    report = build_report([_write(tmp_path / "empty.jsonl")])
    assert (report.rows, report.entries, report.malformed) == ([], 0, [])
    assert "no transcriptions" in _render(report)


def test_service_lines_refused_before_a_model_was_chosen_count_as_errors(tmp_path: Path) -> None:
    """The service writes a line per request: a 401 or a 413 names no model (null), a
    `request` line is another route, a `cancellation` line the late end of a stopped job."""
    refused = json.dumps({
        "time": "2025-03-05T10:00:00.000+00:00", "event": "transcription", "request_id": "a",
        "method": "POST", "path": "/v1/audio/transcriptions", "status": 401,
        "error_code": "invalid_api_key", "outcome": "error", "client": "10.0.0.3",
        "api_key_id": None, "latency_s": 0.001, "cancelled": None,
    })  # fmt: skip
    other = json.dumps({
        "time": "2025-03-05T10:00:01+00:00", "event": "request", "status": 404,
        "outcome": "error", "request_id": "b", "path": "/v1/nothing",
    })  # fmt: skip
    stopped = json.dumps({
        "time": "2025-03-05T10:00:02+00:00", "event": "cancellation", "request_id": "c",
        "reason": "timeout", "stopped_early": True,
    })  # fmt: skip
    path = _write(tmp_path / "audit.jsonl", refused, other, stopped, _line("2025-03-05T11:00:00Z"))
    report = build_report([path])
    assert report.malformed == []
    assert [(row.model_id, row.client, row.requests, row.errors) for row in report.rows] == [
        (NO_MODEL, "10.0.0.3", 1, 1),
        ("whisper-base", "cli", 1, 0),
    ]
