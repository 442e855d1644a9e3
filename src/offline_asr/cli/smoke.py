"""`offline-asr models smoke`: smoke tests, goldens and the determinism matrix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from offline_asr.asr.loader import LoadOptions
from offline_asr.cli.common import (
    IdsArgument,
    JsonOption,
    LocalGoldensOption,
    ManifestOption,
    TargetOption,
    ThreadsOption,
    local_goldens_folder,
    open_store,
    out,
    read_settings,
    reports_errors,
    tagged,
)
from offline_asr.errors import OfflineAsrError
from offline_asr.registry.schemas import Manifest, ModelMetadata
from offline_asr.registry.store import ModelStore


@reports_errors
def smoke(
    ids: IdsArgument = None,
    json_: JsonOption = False,
    record: Annotated[
        bool,
        typer.Option(
            "--record",
            help="Record the manifest's goldens again on this machine (its class becomes theirs;"
            " bumps manifest_version). For the machine that prepares the models.",
        ),
    ] = False,
    record_local: Annotated[
        bool,
        typer.Option(
            "--record-local",
            help="Record fleet-local goldens for this machine's class, outside the manifest",
        ),
    ] = False,
    matrix: Annotated[
        bool,
        typer.Option(
            "--matrix",
            help="Run every clip under each ISA this CPU offers, both GEMM backends and 1 and 2 "
            "threads; print which give identical decoded content",
        ),
    ] = False,
    isa: Annotated[
        list[str] | None, typer.Option(help="--matrix: only this ISA (repeatable)")
    ] = None,
    gemm: Annotated[
        list[str] | None, typer.Option(help="--matrix: only this backend, onednn or mkl")
    ] = None,
    threads: ThreadsOption = None,
    local_goldens: LocalGoldensOption = None,
    target: TargetOption = None,
    manifest: ManifestOption = None,
) -> None:
    """Run each model's smoke clip: fail on a WER above the bound, or on decoded output that
    differs from the golden output of this machine's reproducibility class (then the weights
    are re-hashed and the runtime differences named). Exit code 2 when a golden file cannot be
    used. Outside the class of the manifest's goldens they do not apply: record fleet-local
    ones with --record-local."""
    if sum((record, record_local, matrix)) > 1:
        raise OfflineAsrError("choose one of --record, --record-local and --matrix")
    if record and target is not None:
        raise OfflineAsrError(
            "--record changes the manifest: run it where the models are prepared, not on an "
            "installed target (use --record-local there)"
        )
    settings = read_settings(manifest=manifest, threads=threads)
    options = LoadOptions.from_settings(settings)
    store = open_store(settings, target)
    registry = store.load_models("smoke-test")
    chosen = store.select(registry, ids) if ids else registry.models
    folder = local_goldens_folder(store, target, local_goldens)
    if matrix:
        _smoke_matrix(store, chosen, isa, gemm, json_)
    elif record:
        from offline_asr.asr.smoke import record_manifest_goldens

        updated = record_manifest_goldens(store, ids, options=options)
        for model in chosen:
            golden = store.get(updated, model.id).smoke
            assert golden is not None
            out.print(Text(f"recorded {golden.golden} ({golden.golden_sha256})"))
        out.print(f"manifest_version is now {updated.manifest_version}")
    elif record_local:
        from offline_asr.asr.smoke import record_local_goldens

        for done in record_local_goldens(
            store, chosen, registry.manifest_version, folder, options=options
        ):
            out.print(Text(f"recorded {done.path} (sha256 {done.sha256})"))
        out.print(Text(f"copy {folder} to the other machines of this class"))
    else:
        _smoke_check(store, registry, chosen, folder, options, json_)


def _smoke_check(
    store: ModelStore,
    registry: Manifest,
    chosen: list[ModelMetadata],
    folder: Path,
    options: LoadOptions,
    json_: bool,
) -> None:
    from offline_asr.asr.goldens import GoldenError
    from offline_asr.asr.smoke import check_smoke, smoke_exit_code

    reports, bad = [], []
    for model in chosen:
        try:
            reports.append(check_smoke(
                store, model, registry.manifest_version, local_goldens=folder, options=options
            ))  # fmt: skip
        except GoldenError as error:
            bad.append((model.id, str(error)))
    if json_:
        errors = [{"model_id": i, "ok": False, "error": e} for i, e in bad]
        out.print_json(json.dumps([r.to_dict() for r in reports] + errors, ensure_ascii=False))
    for report in reports if not json_ else []:
        status = tagged("OK    ", "green", "") if report.ok else tagged("FAILED", "red", "")
        bound = f" (bound {report.max_wer})" if report.max_wer is not None else " (no bound)"
        status.append(f"{report.model_id}: WER {report.wer:.2f}{bound}, golden output: "
                      f"{report.verdict}; {report.text!r}")  # fmt: skip
        out.print(status)
        for problem in report.problems:
            out.print(Text(f"       {problem}"))
        for note in report.notes:
            out.print(Text(f"       note: {note}"))
    for model_id, message in bad if not json_ else []:
        out.print(tagged("ERROR ", "red", f"{model_id}: {message}"))
    code = smoke_exit_code(reports, len(bad))
    if code:
        raise typer.Exit(code)


def _smoke_matrix(
    store: ModelStore,
    chosen: list[ModelMetadata],
    isas: list[str] | None,
    gemms: list[str] | None,
    json_: bool,
) -> None:
    from offline_asr.asr import matrix as m
    from offline_asr.progress import step_progress

    offered = m.offered_isas()
    unknown = [i for i in isas or [] if i not in offered] + [
        g for g in gemms or [] if g not in m.GEMMS
    ]
    if unknown:
        raise OfflineAsrError(
            f"{', '.join(unknown)}: this CPU offers the ISAs {', '.join(offered)}; the GEMM "
            f"backends are {', '.join(m.GEMMS)}"
        )
    configs = m.configurations(isas or offered, gemms or list(m.GEMMS))
    with step_progress("determinism matrix", len(configs)) as done:
        runs = m.run_matrix(store, chosen, configs, done)
    groups = [m.group(runs, model.id) for model in chosen]
    if json_:
        payload = {
            "configurations": [
                {"isa": r.config.isa, "gemm": r.config.gemm, "threads": r.config.threads,
                 "error": r.error, "runtime": r.runtime,
                 "groups": {g.model_id: g.label.get(r.config) for g in groups}}
                for r in runs
            ],
            "score_spread": {g.model_id: g.score_spread for g in groups},
        }  # fmt: skip
        out.print_json(json.dumps(payload))
        return
    default = m.default_config()
    table = Table(title="decoded content per configuration (same letter: byte-identical)")
    table.add_column("ISA / GEMM / threads")
    for model in chosen:
        table.add_column(model.id)
    for run in runs:
        mark = " (pinned default)" if (run.config.isa, run.config.gemm) == default else ""
        cells = [Text(run.error or g.label.get(run.config, "-")) for g in groups]
        table.add_row(run.config.label + mark, *cells)
    out.print(table)
    for g in groups:
        pinned = next((g.label[c] for c in g.label if (c.isa, c.gemm) == default), None)
        for letter, members in g.members().items():
            line = (f"{g.model_id} {letter}: {len(members)} configurations, scores within "
                    f"{g.score_spread[letter]:.1e}")  # fmt: skip
            if pinned is not None and letter != pinned:
                line += f"; differs from {pinned}: {m.first_differences(g, letter, pinned)}"
            out.print(Text(line))
