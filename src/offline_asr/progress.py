"""Rich progress bars on stderr for long work; silent when stderr is not a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

stderr_console = Console(stderr=True)

Advance = Callable[[int], None]


def progress_bar(*columns: ProgressColumn) -> Progress:
    """A bar on stderr that disappears when done and stays silent when stderr is no terminal."""
    return Progress(
        *columns, console=stderr_console, transient=True, disable=not stderr_console.is_terminal
    )


@contextmanager
def byte_progress(description: str, total: int | None) -> Iterator[Advance]:
    """Yield a callback that advances one bar by a number of bytes (thread-safe)."""
    with progress_bar(
        TextColumn("{task.description}", markup=False),  # file names may hold `[...]`
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


@contextmanager
def step_progress(description: str, total: int) -> Iterator[Callable[[str], None]]:
    """Yield a callback that counts one step done and names the next."""
    with progress_bar(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda name: progress.update(task, advance=1, description=f"{description}: {name}")


class TranscriptionProgress:
    """Seconds of audio transcribed so far, driven by the segments as they come."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def start(self, duration: float) -> None:
        self._progress.update(self._task, total=duration)

    def advance(self, segment: HasEnd) -> None:
        self._progress.update(self._task, completed=segment.end)


class HasEnd(Protocol):
    end: float


@contextmanager
def transcription_progress(name: str) -> Iterator[TranscriptionProgress]:
    with progress_bar(
        TextColumn("{task.description}", markup=False),  # file names may hold `[...]`
        BarColumn(),
        MofNCompleteColumn(),  # seconds done / in total ("?" until the audio is decoded)
        TextColumn("s"),
        TimeRemainingColumn(),
    ) as progress:
        yield TranscriptionProgress(progress, progress.add_task(f"transcribing {name}", total=None))
