"""`offline-asr batch INPUT... --out results.jsonl`: bulk transcription, here or on Ray."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from offline_asr.asr.workers import WorkerPlan
from offline_asr.cli.common import (
    ManifestOption,
    TargetOption,
    err,
    open_store,
    read_settings,
    reports_errors,
)
from offline_asr.cli.decoding import (
    BatchSizeOption,
    BeamSizeOption,
    DeviceOption,
    FullVerifyOption,
    LanguageOption,
    PromptOption,
    TaskOption,
    VadFilterOption,
    WordTimestampsOption,
    decode_options,
)
from offline_asr.constants import EXIT_CHECK_FAILED
from offline_asr.errors import OfflineAsrError
from offline_asr.progress import progress_bar

if TYPE_CHECKING:
    from offline_asr.asr.audio import AudioLimits
    from offline_asr.asr.audit import AuditLog
    from offline_asr.asr.base import DecodeOptions
    from offline_asr.asr.loader import LoadOptions
    from offline_asr.batch.job import OnDone, Summary
    from offline_asr.batch.work import Runner
    from offline_asr.registry.snapshot import ManifestSnapshot


@reports_errors
def batch(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="INPUT",
            help="Folders (searched recursively for audio and video files), list files "
            "(.txt/.lst: one path a line) or audio files",
        ),
    ],
    out: Annotated[Path, typer.Option(help="Results file (JSON lines); appended to, resumable")],
    model: Annotated[str, typer.Option(help="Model id from the manifest, or `auto`")],
    language: LanguageOption = None,
    task: TaskOption = "transcribe",
    beam_size: BeamSizeOption = 5,
    prompt: PromptOption = None,
    word_timestamps: WordTimestampsOption = False,
    vad_filter: VadFilterOption = False,
    batch_size: BatchSizeOption = None,
    workers: Annotated[
        int | None,
        typer.Option(
            envvar="OFFLINE_ASR_WORKERS", help="Files transcribed at once (0: one per usable core)"
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            envvar="OFFLINE_ASR_THREADS",
            help="CPU threads per worker (0: the usable cores shared out)",
        ),
    ] = None,
    device: DeviceOption = "auto",
    retry_errors: Annotated[
        bool, typer.Option(help="Transcribe again the files whose line is an error")
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            metavar="ADDRESS",
            help="Run on this Ray cluster (host:port of its head): an actor per node, a worker "
            "per CPU; every node verifies its weights against this manifest first",
        ),
    ] = None,
    full_verify: FullVerifyOption = False,
    audit_log: Annotated[
        Path | None,
        typer.Option(
            envvar="OFFLINE_ASR_AUDIT_LOG",
            help="Also write an audit line per file here (the results carry the same fields)",
        ),
    ] = None,
    target: TargetOption = None,
    manifest: ManifestOption = None,
) -> None:
    """Transcribe many files into one JSON-lines file with provenance. A rerun skips files
    already done (same audio sha256, model fingerprint and options); a kill loses at most the
    files in flight. A bad file gets an error line; exit code 1 if any file failed."""
    from offline_asr.asr.audio import AudioLimits
    from offline_asr.asr.audit import AuditLog
    from offline_asr.asr.loader import LoadOptions
    from offline_asr.batch.inputs import collect_inputs
    from offline_asr.batch.job import run_job
    from offline_asr.batch.lines import request_key
    from offline_asr.batch.results import open_results
    from offline_asr.registry.snapshot import ManifestSnapshot

    options = decode_options(
        language, task, beam_size, prompt, word_timestamps, vad_filter, batch_size
    )
    settings = read_settings(manifest=manifest, threads=threads, workers=workers)
    paths = collect_inputs(inputs)
    if not paths:
        raise OfflineAsrError(
            "no audio files found in the inputs given: folders are searched for audio and "
            "video files by suffix (.wav, .mp3, .flac, .m4a, ...); give the files themselves, or "
            "a list file (.txt, .lst, .list) with one path a line"
        )
    snapshot = ManifestSnapshot.read(open_store(settings, target))
    if model != "auto":
        snapshot.entry(model)  # an unknown id is bad usage, before any work
    key = request_key(snapshot.manifest, model, options, settings.long_form_batch_size)
    plan = WorkerPlan.for_machine(settings.workers, settings.threads)
    load = LoadOptions.from_settings(settings, device=device, full_verify=full_verify,
                                     threads=plan.threads, workers=plan.workers)  # fmt: skip
    limits = AudioLimits.from_settings(settings)
    audit = AuditLog(audit_log, include_text=settings.audit_text) if audit_log else None
    with (
        open_results(out) as results,
        _runner(snapshot, model, options, key, load, limits, audit, ray) as runner,
        _progress(len(paths)) as on_done,
    ):
        summary = run_job(paths, results, key, model, runner, retry_errors=retry_errors,
                          on_done=on_done)  # fmt: skip
    for line in describe(summary, out):
        err.print(Text(line))
    if summary.failed or summary.problems:
        raise typer.Exit(EXIT_CHECK_FAILED)


@contextmanager
def _runner(
    snapshot: ManifestSnapshot,
    model_id: str,
    options: DecodeOptions,
    key: str,
    load: LoadOptions,
    limits: AudioLimits,
    audit: AuditLog | None,
    ray_address: str | None,
) -> Iterator[Runner]:
    if ray_address is not None:
        from offline_asr.cluster.batch import ray_runner

        with ray_runner(ray_address, snapshot, model_id, options, key, load, limits) as runner:
            yield runner
        return
    from offline_asr.asr.transcriber import Transcriber
    from offline_asr.batch.work import LocalRunner

    transcriber = Transcriber.load(snapshot, model_id, load, audit=audit, limits=limits)
    local = LocalRunner(transcriber, options, key, load.workers)
    try:
        yield local
    finally:
        local.stop()


@contextmanager
def _progress(files: int) -> Iterator[OnDone]:
    """Files done of all, hours of audio done, and the time left at the pace so far."""
    with progress_bar(
        TextColumn("transcribing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files, {task.fields[audio]} of audio"),
        TimeRemainingColumn(),
    ) as progress:
        task = progress.add_task("batch", total=files, audio=_clock(0))
        total = 0.0

        def on_done(count: int, seconds: float) -> None:
            nonlocal total
            total += seconds
            progress.update(task, advance=count, audio=_clock(total))

        yield on_done


def describe(summary: Summary, out: Path) -> list[str]:
    """The summary lines the command prints at the end."""
    lines = [
        f"{summary.files} files, {_clock(summary.audio_seconds)} of audio: "
        f"{summary.transcribed} transcribed, {summary.already_done} already done, "
        f"{summary.same_audio} same audio as another file, {len(summary.failed)} failed; "
        f"results in {out}"
    ]
    lines += [f"failed: {path}" for path in summary.failed[:20]]
    if len(summary.failed) > 20:
        lines.append(f'... and {len(summary.failed) - 20} more (status "error" in {out})')
    return lines + summary.problems


def _clock(seconds: float) -> str:
    """Hours of audio as h:mm:ss."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
