"""`offline-asr transcribe FILE ... --model ID`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from offline_asr.asr.device import Device
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
from offline_asr.constants import EXIT_BAD_INPUT
from offline_asr.errors import OfflineAsrError
from offline_asr.progress import transcription_progress


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
    threads: ThreadsOption = None,
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

    from offline_asr.asr.audio import AudioLimits
    from offline_asr.asr.audit import AuditLog
    from offline_asr.asr.base import DecodeOptions
    from offline_asr.asr.formats import FILE_SUFFIX, render
    from offline_asr.asr.loader import LoadOptions
    from offline_asr.asr.transcriber import Transcriber
    from offline_asr.registry.snapshot import ManifestSnapshot

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
    settings = read_settings(manifest=manifest, threads=threads, audit_log=audit_log)
    transcriber = Transcriber.load(
        ManifestSnapshot.read(open_store(settings, target)),
        model,
        LoadOptions.from_settings(settings, device=device, full_verify=full_verify),
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
