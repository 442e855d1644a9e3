"""`offline-asr transcribe FILE ... --model ID`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from offline_asr.asr.workers import WorkerPlan
from offline_asr.cli.common import (
    ManifestOption,
    TargetOption,
    ThreadsOption,
    err,
    open_store,
    print_error,
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
from offline_asr.constants import EXIT_BAD_INPUT
from offline_asr.errors import OfflineAsrError
from offline_asr.progress import transcription_progress


@reports_errors
def transcribe(
    files: Annotated[list[Path], typer.Argument(metavar="FILE", help="Audio or video files")],
    model: Annotated[str, typer.Option(help="Model id from the manifest, or `auto`")],
    language: LanguageOption = None,
    output_format: Annotated[
        Literal["txt", "json", "verbose_json", "srt", "vtt"],
        typer.Option("--format", help="Output format"),
    ] = "txt",
    output_dir: Annotated[
        Path | None, typer.Option(help="Write FILE's stem + extension here (default: stdout)")
    ] = None,
    task: TaskOption = "transcribe",
    beam_size: BeamSizeOption = 5,
    prompt: PromptOption = None,
    word_timestamps: WordTimestampsOption = False,
    vad_filter: VadFilterOption = False,
    batch_size: BatchSizeOption = None,
    threads: ThreadsOption = None,
    device: DeviceOption = "auto",
    full_verify: FullVerifyOption = False,
    audit_log: Annotated[
        Path | None,
        typer.Option(envvar="OFFLINE_ASR_AUDIT_LOG", help="Audit log file (default: stderr)"),
    ] = None,
    target: TargetOption = None,
    manifest: ManifestOption = None,
) -> None:
    """Transcribe files with a registered model. Bad files are reported (exit code 2) and the
    others are still transcribed."""
    from offline_asr.asr.audio import AudioLimits
    from offline_asr.asr.audit import AuditLog
    from offline_asr.asr.formats import FILE_SUFFIX, render
    from offline_asr.asr.loader import LoadOptions
    from offline_asr.asr.transcriber import Transcriber
    from offline_asr.registry.snapshot import ManifestSnapshot

    options = decode_options(
        language, task, beam_size, prompt, word_timestamps, vad_filter, batch_size
    )
    suffix = FILE_SUFFIX[output_format]
    targets = {p: output_dir / (p.stem + suffix) for p in files} if output_dir else {}
    if len(set(targets.values())) < len(targets):
        raise OfflineAsrError("two input files have the same name stem; give them separate runs")
    settings = read_settings(manifest=manifest, threads=threads, audit_log=audit_log)
    transcriber = Transcriber.load(
        ManifestSnapshot.read(open_store(settings, target)),
        model,
        LoadOptions.from_settings(
            settings,
            device=device,
            full_verify=full_verify,
            threads=WorkerPlan.for_machine(1, settings.threads).threads,  # every core on a file
        ),
        audit=AuditLog(settings.audit_log, include_text=settings.audit_text),
        limits=AudioLimits.from_settings(settings),
    )
    failed = 0
    for path in files:
        try:
            with transcription_progress(path.name) as progress:
                result = transcriber.transcribe_file(
                    path, options, on_audio=progress.start, on_segment=progress.advance
                )
        except OfflineAsrError as error:
            print_error(error)
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
