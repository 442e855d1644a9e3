"""`offline-asr audit report`: who used which model version."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from offline_asr.cli.common import JsonOption, out, reports_errors

app = typer.Typer(help="Reports from audit logs.", no_args_is_help=True)


@app.command("report")
@reports_errors
def audit_report(
    logs: Annotated[list[Path], typer.Argument(metavar="LOG", help="Audit log files (JSON lines)")],
    since: Annotated[
        datetime | None, typer.Option(help="Only entries at or after this time (UTC if no zone)")
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="Only entries before this time")] = None,
    json_: JsonOption = False,
) -> None:
    """Who used which model version: requests, audio hours and errors per model_id,
    manifest_version and client."""
    from offline_asr.asr.audit_report import build_report

    report = build_report(logs, since=since, until=until)
    if json_:
        out.print_json(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        out.print(report.render_table())
