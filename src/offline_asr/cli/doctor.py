"""`offline-asr doctor`: environment, models and smoke tests, with a verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from offline_asr.asr.loader import LoadOptions
from offline_asr.cli.common import (
    JsonOption,
    LocalGoldensOption,
    ManifestOption,
    TargetOption,
    local_goldens_folder,
    open_store,
    out,
    read_settings,
    reports_errors,
)
from offline_asr.constants import EXIT_CHECK_FAILED


@reports_errors
def doctor(
    target: TargetOption = None,
    lock: Annotated[
        Path | None,
        typer.Option(help="Lock file (default: the release's locks/, else ./requirements.lock)"),
    ] = None,
    json_: JsonOption = False,
    local_goldens: LocalGoldensOption = None,
    server: Annotated[
        str | None,
        typer.Option(
            metavar="URL|PIDFILE",
            help="A running server to ask which release it serves: its URL, or the pidfile of "
            "`serve --pidfile` (default: the pidfile setting, OFFLINE_ASR_PIDFILE)",
        ),
    ] = None,
    manifest: ManifestOption = None,
) -> None:
    """Environment vs the lock, models vs the manifest, smoke tests vs the golden outputs of
    this machine's reproducibility class, and (with --server or a pidfile setting) which
    release a running server serves: a verdict and the next steps. Exit code 1 when anything
    fails; goldens of another class are a warning, not a failure."""
    from dataclasses import asdict

    from offline_asr.delivery.doctor import run_doctor, server_check

    settings = read_settings(manifest=manifest)
    store = open_store(settings, target)
    default_lock = target / "current" / "locks" / "requirements.lock" if target else None
    report = run_doctor(
        store,
        lock or default_lock or Path("requirements.lock"),
        LoadOptions.from_settings(settings),
        local_goldens=local_goldens_folder(store, target, local_goldens),
    )
    where = server or (str(settings.pidfile) if settings.pidfile else None)
    if where is not None:
        current = store.root.parent.resolve() if target else None
        report.checks.append(server_check(where, current))
    if json_:
        payload = {"ok": report.ok, "checks": [asdict(c) for c in report.checks],
                   "next_steps": report.next_steps()}  # fmt: skip
        out.print_json(json.dumps(payload, ensure_ascii=False))
    else:
        table = Table(title=f"offline-asr doctor: {store.manifest_path}")
        for column in ("area", "subject", "status", "detail"):
            table.add_column(column, overflow="fold")
        colours = {"ok": "green", "warn": "yellow", "fail": "red"}
        for check in report.checks:
            status = Text(check.status.upper(), style=colours[check.status])
            table.add_row(check.area, check.subject, status, check.detail)
        out.print(table)
        verdict = Text("HEALTHY", "green") if report.ok else Text("NOT HEALTHY", "red")
        out.print(Text.assemble("verdict: ", verdict))
        for step in report.next_steps():
            out.print(f"  next: {step}", highlight=False)
    if not report.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)
