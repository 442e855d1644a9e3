"""Which files a batch job transcribes: folders (recursively), list files, or audio files."""

from __future__ import annotations

from pathlib import Path

from offline_asr.errors import OfflineAsrError

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
"""An input with one of these suffixes lists audio paths, one a line (# starts a comment)."""
MEDIA_SUFFIXES = frozenset({
    ".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".amr", ".aif",
    ".aiff", ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".3gp", ".caf", ".spx",
})  # fmt: skip
"""Files a folder contributes: what FFmpeg reads as audio or as a video's sound track."""


def collect_inputs(inputs: list[Path]) -> list[Path]:
    """Absolute paths of every file to transcribe, each once, in a stable order.

    A folder gives its media files (by suffix, recursively, hidden entries skipped); a list
    file gives the paths it names (relative ones from the list's folder), which need not have a
    media suffix; any other file is itself an input. A missing input is bad usage.
    """
    found: list[Path] = []
    for given in inputs:
        if given.is_dir():
            found.extend(sorted(_media_in(given)))
        elif given.suffix.lower() in LIST_SUFFIXES and given.is_file():
            found.extend(_listed(given))
        elif given.exists():
            found.append(given)
        else:
            raise OfflineAsrError(f"{given}: no such file or folder; check the path")
    return list(dict.fromkeys(path.resolve() for path in found))


def _media_in(folder: Path) -> list[Path]:
    return [
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in MEDIA_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]


def _listed(list_file: Path) -> list[Path]:
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise OfflineAsrError(f"cannot read the list file {list_file}: {error}") from error
    lines = (line.strip() for line in text.splitlines())
    return [list_file.parent / line for line in lines if line and not line.startswith("#")]
