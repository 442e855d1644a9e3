"""A batch job: hash the inputs, skip what the results already hold, transcribe the rest.

Identical audio (the same sha256) is transcribed once per request; every further path gets a
copy of its line. Lines go out as files finish (not in input order), each durable before the
next is counted, so a rerun after a kill finishes exactly what is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path

from offline_asr.batch.lines import Line, copy_line, error_line
from offline_asr.batch.results import ResultsFile
from offline_asr.batch.work import Runner
from offline_asr.fsutil import sha256_file

OnDone = Callable[[int, float], None]
"""Told (files, seconds of audio) as files are settled: for the progress bar."""


@dataclass
class Summary:
    files: int = 0
    transcribed: int = 0
    same_audio: int = 0  # copies of the line of identical audio under another path
    already_done: int = 0
    failed: list[str] = field(default_factory=list)  # paths whose line is an error
    audio_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


@dataclass
class _Unit:
    audio_sha256: str
    paths: list[Path]  # the first is transcribed; the others get a copy of its line


def run_job(
    paths: list[Path],
    results: ResultsFile,
    request: str,
    model_id: str,
    runner: Runner,
    *,
    retry_errors: bool = False,
    on_done: OnDone | None = None,
) -> Summary:
    """Settle every path: a line already there, a copy, or a new transcription."""
    summary = Summary(files=len(paths))
    on_done = on_done or (lambda files, seconds: None)
    earlier = _earlier_lines(results, request)
    written = {
        (line["audio_sha256"], line["path"])
        for line in results.lines
        if line.get("request") == request
    }
    todo: list[_Unit] = []
    for unit in _units(paths, results, request, model_id, summary):
        line = earlier.get(unit.audio_sha256)
        if line is None or (line["status"] == "error" and retry_errors):
            todo.append(unit)
            continue
        _settle(line, unit, results, written, summary, on_done, transcribed=False)
    pending: dict[Future[Line], _Unit] = {}
    todo.reverse()  # popped from the end: input order
    try:
        while todo or pending:
            while todo and len(pending) < runner.capacity:
                unit = todo.pop()
                pending[runner.submit(unit.paths[0], unit.audio_sha256)] = unit
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                done = pending.pop(future)
                _settle(future.result(), done, results, set(), summary, on_done,
                        transcribed=True)  # fmt: skip
    except BaseException:
        runner.stop()
        raise
    summary.problems = runner.problems()
    return summary


def _earlier_lines(results: ResultsFile, request: str) -> dict[str, Line]:
    """The latest line of each audio under this request (a retried error is superseded)."""
    latest: dict[str, Line] = {}
    for line in results.lines:
        if line.get("request") == request and line.get("audio_sha256"):
            latest[line["audio_sha256"]] = line
    return latest


def _units(
    paths: list[Path], results: ResultsFile, request: str, model_id: str, summary: Summary
) -> list[_Unit]:
    """Paths grouped by their audio's sha256; a file that cannot be read gets its error line."""
    units: dict[str, _Unit] = {}
    for path in paths:
        try:
            digest = sha256_file(path).sha256
        except OSError as error:
            results.append(error_line(str(path), None, request, model_id, error))
            summary.failed.append(str(path))
            continue
        units.setdefault(digest, _Unit(digest, [])).paths.append(path)
    return list(units.values())


def _settle(
    line: Line,
    unit: _Unit,
    results: ResultsFile,
    written: set[tuple[str, str]],
    summary: Summary,
    on_done: OnDone,
    *,
    transcribed: bool,
) -> None:
    """Write the unit's lines that are not there yet, and count its files."""
    for index, path in enumerate(unit.paths):
        name = str(path)
        if (unit.audio_sha256, name) in written:
            continue
        results.append(line if transcribed and index == 0 else copy_line(line, name))
        summary.same_audio += 0 if transcribed and index == 0 else 1
    failed = line["status"] != "ok"
    if failed:
        summary.failed.extend(str(path) for path in unit.paths)
    elif transcribed:
        summary.transcribed += 1
    else:
        summary.already_done += len(unit.paths)
    seconds = 0.0 if failed else float(line.get("duration") or 0.0)
    summary.audio_seconds += seconds * len(unit.paths)
    on_done(len(unit.paths), seconds * len(unit.paths))
