"""Usage report from audit logs: who used which model version, how often and for how much audio.

Reads the JSON lines `offline_asr.asr.audit.AuditLog` writes (several files, e.g. rotated logs) and
groups transcriptions by model id, manifest_version and client. A damaged line (a crash mid-write,
a hand edit) is reported with its file and line number and skipped, so one bad line never hides
the rest of the log.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from offline_asr.errors import OfflineAsrError

CLI_CLIENT = "cli"
"""The client of lines without a `client` key: the command line writes none."""

NO_MODEL = "(none)"
"""The model of service lines for requests refused before a model was chosen (key, size, form)."""

UNKNOWN_CLIENT = "unknown"
"""The client of lines whose `client` is null (the HTTP server did not know the peer)."""

GroupKey = tuple[str, int | None, str]


@dataclass
class UsageRow:
    model_id: str
    manifest_version: int | None  # None: failed before a model was loaded
    client: str
    requests: int
    errors: int
    audio_hours: float
    first_seen: str
    last_seen: str


@dataclass
class Totals:
    requests: int
    errors: int
    audio_hours: float
    first_seen: str | None
    last_seen: str | None


@dataclass
class AuditReport:
    rows: list[UsageRow]
    entries: int
    malformed: list[str] = field(default_factory=list)

    def totals(self) -> Totals:
        """Sums over all rows, and the first and last time over all of them."""
        times = [t for row in self.rows for t in (row.first_seen, row.last_seen)]
        return Totals(
            requests=sum(row.requests for row in self.rows),
            errors=sum(row.errors for row in self.rows),
            audio_hours=sum(row.audio_hours for row in self.rows),
            first_seen=min(times, key=parse_time) if times else None,
            last_seen=max(times, key=parse_time) if times else None,
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"totals": asdict(self.totals())}

    def render_table(self) -> Table:
        """One row per model version and client, then the totals."""
        table = Table(title="Transcriptions by model version and client")
        table.add_column("model_id")
        table.add_column("manifest_version", justify="right")
        table.add_column("client")
        for name in ("requests", "errors", "audio hours"):
            table.add_column(name, justify="right")
        table.add_column("first seen (UTC)")
        table.add_column("last seen (UTC)")
        for row in self.rows:
            version = "unknown" if row.manifest_version is None else str(row.manifest_version)
            table.add_row(
                _cell(row.model_id),
                version,
                _cell(row.client),
                str(row.requests),
                str(row.errors),
                f"{row.audio_hours:.3f}",
                _display_time(row.first_seen),
                _display_time(row.last_seen),
                style="red" if row.errors == row.requests else None,
            )
        totals = self.totals()
        table.add_section()
        table.add_row(
            "total",
            "",
            "",
            str(totals.requests),
            str(totals.errors),
            f"{totals.audio_hours:.3f}",
            _display_time(totals.first_seen),
            _display_time(totals.last_seen),
            style="bold",
        )
        notes = []
        if not self.rows:
            notes.append("no transcriptions in the given time range")
        if self.malformed:
            notes.append(f"{len(self.malformed)} malformed line(s) skipped")
        if notes:
            table.caption = "; ".join(notes)
        return table


def parse_time(value: str) -> datetime:
    """An ISO time from the log; one without a zone is taken as UTC, the zone AuditLog writes."""
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _display_time(value: str | None) -> str:
    if value is None:
        return ""
    return parse_time(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cell(value: str) -> Text:
    """Log text as a literal cell: no rich markup, no terminal escapes (model ids come from
    HTTP requests, so a line may hold anything)."""
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)
    return Text(safe)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _problem(entry: dict[str, Any]) -> str | None:
    """Why a transcription entry cannot be counted, or None if it can."""
    time = entry.get("time")
    if not isinstance(time, str):
        return "no 'time'"
    try:
        parse_time(time)
    except ValueError:
        return f"'time' is not an ISO time: {time!r}"
    model_id = entry.get("model_id")
    if model_id is not None and (not isinstance(model_id, str) or not model_id):
        return f"'model_id' must be a model id or null, not {model_id!r}"
    if model_id is None and "status" not in entry:  # only the service refuses before a model
        return "no 'model_id'"
    if entry.get("outcome") not in ("ok", "error"):
        return f"'outcome' must be 'ok' or 'error', not {entry.get('outcome')!r}"
    version = entry.get("manifest_version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        return f"'manifest_version' must be an integer or null, not {version!r}"
    duration = entry.get("duration_s")
    if duration is not None and (not _is_number(duration) or duration < 0):
        return f"'duration_s' must be a non-negative number or null, not {duration!r}"
    if not isinstance(entry.get("client", ""), str | None):
        return f"'client' must be a string, not {entry['client']!r}"
    return None


def _parse_line(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(transcription entry, None), (None, why it is malformed), or (None, None) to skip."""
    try:
        entry = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError as error:
        return None, f"not JSON ({error.msg} at column {error.colno})"
    if not isinstance(entry, dict):
        return None, f"a JSON {type(entry).__name__}, not an object"
    if entry.get("event") != "transcription":
        return None, None
    problem = _problem(entry)
    return (None, problem) if problem else (entry, None)


def read_entries(paths: list[Path], malformed: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Stream the transcription entries of several audit logs, in file and line order.

    Other events and blank lines are skipped; a malformed line is skipped and, if `malformed` is
    given, recorded there as "file:line: reason". A path given twice is read once, so an
    overlapping shell glob does not count requests twice.
    """
    seen: set[Path] = set()
    for path in paths:
        resolved = path.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        try:
            with path.open("rb") as stream:
                for number, raw in enumerate(stream, start=1):
                    if not raw.strip():
                        continue
                    entry, problem = _parse_line(raw)
                    if problem is not None and malformed is not None:
                        malformed.append(f"{path}:{number}: {problem}")
                    if entry is not None:
                        yield entry
        except FileNotFoundError as error:
            raise OfflineAsrError(f"audit log {path} does not exist") from error
        except IsADirectoryError as error:
            raise OfflineAsrError(f"audit log {path} is a folder; give the log files") from error
        except OSError as error:
            raise OfflineAsrError(f"cannot read audit log {path}: {error.strerror}") from error


def _client(entry: dict[str, Any]) -> str:
    if "client" not in entry:
        return CLI_CLIENT
    client: str | None = entry["client"]
    return client or UNKNOWN_CLIENT


def _sort_key(key: GroupKey) -> tuple[str, bool, int, str]:
    """Model id, then versions in order with the unknown version (failures) last, then client."""
    model_id, version, client = key
    return model_id, version is None, version or 0, client


def summarize(entries: Iterable[dict[str, Any]]) -> list[UsageRow]:
    """One row per (model_id, manifest_version, client), sorted by those three.

    Entries must be valid transcription entries (as `read_entries` yields). Failures logged
    before a model was loaded have no manifest_version and form their own row; requests the
    service refused before a model was chosen (no key, too large, malformed) count under
    `(none)`.
    """
    rows: dict[GroupKey, UsageRow] = {}
    first: dict[GroupKey, datetime] = {}
    last: dict[GroupKey, datetime] = {}
    for entry in entries:
        key: GroupKey = (
            entry.get("model_id") or NO_MODEL,
            entry.get("manifest_version"),
            _client(entry),
        )
        moment = parse_time(entry["time"])
        row = rows.get(key)
        if row is None:
            row = rows[key] = UsageRow(*key, 0, 0, 0.0, entry["time"], entry["time"])
            first[key] = last[key] = moment
        row.requests += 1
        row.errors += int(entry["outcome"] == "error")
        row.audio_hours += (entry.get("duration_s") or 0.0) / 3600
        if moment < first[key]:
            first[key], row.first_seen = moment, entry["time"]
        if moment > last[key]:
            last[key], row.last_seen = moment, entry["time"]
    return [rows[key] for key in sorted(rows, key=_sort_key)]


def _aware(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


def build_report(
    paths: list[Path], since: datetime | None = None, until: datetime | None = None
) -> AuditReport:
    """Usage from the logs at `paths`, in the time range [since, until).

    A bound without a time zone is taken as UTC, the zone of the log's times.
    """
    since, until = _aware(since), _aware(until)
    if since is not None and until is not None and since >= until:
        raise OfflineAsrError(
            f"the time range is empty: since {since.isoformat()} is not before until "
            f"{until.isoformat()}"
        )
    malformed: list[str] = []
    counted = 0

    def in_range() -> Iterator[dict[str, Any]]:
        nonlocal counted
        for entry in read_entries(paths, malformed):
            moment = parse_time(entry["time"])
            if (since is None or moment >= since) and (until is None or moment < until):
                counted += 1
                yield entry

    rows = summarize(in_range())
    return AuditReport(rows, counted, malformed)
