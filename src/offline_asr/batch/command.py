"""`offline-asr batch`: the command's work once its options are parsed (the CLI calls `run`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from offline_asr.asr.base import DecodeOptions
from offline_asr.asr.workers import WorkerPlan
from offline_asr.audit import AuditLog
from offline_asr.batch.inputs import collect_inputs
from offline_asr.batch.job import OnDone, Summary, run_job
from offline_asr.batch.lines import request_key
from offline_asr.batch.results import open_results
from offline_asr.batch.work import LocalRunner, Runner
from offline_asr.device import Device
from offline_asr.errors import OfflineAsrError
from offline_asr.progress import progress_bar
from offline_asr.registry.store import ModelStore
from offline_asr.transcriber import Transcriber


@dataclass(frozen=True)
class BatchRequest:
    inputs: list[Path]
    out: Path
    model_id: str
    options: DecodeOptions
    plan: WorkerPlan
    long_form_batch_size: int
    device: Device = "auto"
    full_verify: bool = False
    retry_errors: bool = False
    audit_log: Path | None = None
    ray_address: str | None = None


def run(store: ModelStore, request: BatchRequest) -> Summary:
    """Transcribe what the results file does not hold yet; returns what happened."""
    paths = collect_inputs(request.inputs)
    if not paths:
        raise OfflineAsrError("no audio files found in the inputs given")
    manifest = store.load()
    if request.model_id != "auto":
        store.get(manifest, request.model_id)  # an unknown id is bad usage, before any work
    key = request_key(manifest, request.model_id, request.options, request.long_form_batch_size)
    with (
        open_results(request.out) as results,
        _runner(store, request, key) as runner,
        _progress(len(paths)) as on_done,
    ):
        return run_job(paths, results, key, request.model_id, runner,
                       retry_errors=request.retry_errors, on_done=on_done)  # fmt: skip


@contextmanager
def _runner(store: ModelStore, request: BatchRequest, key: str) -> Iterator[Runner]:
    engine_options: dict[str, Any] = {
        "device": request.device,
        "threads": request.plan.threads,
        "workers": request.plan.workers,
        "long_form_batch_size": request.long_form_batch_size,
        "full_verify": request.full_verify,
    }
    if request.ray_address is not None:
        from offline_asr.cluster.batch import ray_runner

        with ray_runner(request.ray_address, store, request.model_id, request.options, key,
                        engine_options) as ray_runs:  # fmt: skip
            yield ray_runs
        return
    audit = AuditLog(request.audit_log) if request.audit_log else None
    transcriber = Transcriber(store, request.model_id, audit=audit, **engine_options)
    runner = LocalRunner(transcriber, request.options, key, request.plan.workers)
    try:
        yield runner
    finally:
        runner.stop()


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
