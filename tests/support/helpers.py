"""Helpers shared by the tests: paths, a CLI result type, store snapshots, tiny model folders."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from offline_asr.asr.pins import unpinned_environment
from offline_asr.registry.store import ModelStore

REPO = Path(__file__).resolve().parents[2]
COMMITTED_MANIFEST = REPO / "models" / "manifest.json"
PREPARE_TINY = ("models", "prepare", "--engine", "whisper", "--variant", "tiny.en")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


Cli = Callable[..., CliResult]


def write_ct2_model(folder: Path, *, weights: bytes = b"\x00\x3c" * 4, extra: bool = True) -> Path:
    """A tiny but well-formed CTranslate2 Whisper folder (one float16 variable)."""
    folder.mkdir(parents=True, exist_ok=True)

    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<H", len(data) + 1) + data + b"\x00"

    body = struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<II", 3, 1)
    body += string("encoder/w") + struct.pack("<BI", 1, len(weights) // 2)
    body += struct.pack("<BI", 4, len(weights)) + weights + struct.pack("<I", 0)
    (folder / "model.bin").write_bytes(body)
    (folder / "config.json").write_text('{"suppress_ids": []}\n')
    (folder / "tokenizer.json").write_text('{"model": {}}\n')
    if extra:
        (folder / "vocabulary.txt").write_text("a\nb\n")
        (folder / "README.md").write_text("not part of the model\n")
    return folder


def run_cli(
    *args: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    cpus: set[int] | None = None,
) -> CliResult:
    """Run the installed console script in a subprocess (for signals and real exit codes).

    With `env`, the process starts as from a new shell with these variables added: offline-asr
    pins afresh (the test process's own pins are not inherited). `cpus` limits it to those CPUs,
    as on a machine with fewer cores.
    """
    exe = Path(sys.executable).with_name("offline-asr")
    environment = None if env is None else unpinned_environment(dict(os.environ)) | env
    proc = subprocess.run(
        [str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=1200,
        check=False, env=environment,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    )  # fmt: skip
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def state_of(store: ModelStore) -> dict[str, str]:
    """Every file of the store and the CHANGELOG with its sha256 (staging area aside)."""
    files: dict[str, str] = {}
    for base in (store.root, store.changelog_path):
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in paths:
            if path.name == ".manifest.lock" or ".staging" in path.parts:
                continue
            files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files
