"""Helpers for the bundle tests: the CLI in-process, hand-made archives, install-target state."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest
import zstandard
from typer.testing import CliRunner

from offline_asr.cli import app
from offline_asr.delivery.bundle.contents import CONTENTS_NAME, BundleContents, BundleFile
from offline_asr.registry.store import ModelStore


@dataclass
class Outcome:
    """What one CLI run printed and returned."""

    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    @property
    def text(self) -> str:
        """stdout and stderr with every run of whitespace made one space (rich may wrap)."""
        return " ".join((self.stdout + "\n" + self.stderr).split())


def invoke(
    *args: str | Path, env: dict[str, str] | None = None, catch_exceptions: bool = False
) -> Outcome:
    """Run `offline-asr ARGS` in-process (no `--manifest` is added)."""
    result = CliRunner().invoke(
        app, [str(arg) for arg in args], env=env, catch_exceptions=catch_exceptions
    )
    return Outcome(result.exit_code, result.stdout, result.stderr, result.exception)


def sha256_of(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def copy_store(source: ModelStore, dest: Path, *, without: Iterable[str] = ()) -> ModelStore:
    """Copy a store (its folder's parent, so the CHANGELOG comes along), leaving out the model
    folders in `without` (paths relative to the store)."""
    skipped = {(source.root / folder).resolve() for folder in without}

    def ignore(folder: str, names: list[str]) -> set[str]:
        return {name for name in names if (Path(folder) / name).resolve() in skipped}

    shutil.copytree(source.root.parent, dest, ignore=ignore)
    return ModelStore(dest / source.root.name / source.manifest_path.name)


def snapshot(root: Path) -> dict[str, str]:
    """Every folder, file (with sha256) and symbolic link (with its target) under `root`."""
    state: dict[str, str] = {}
    for folder, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(folder, name)
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                state[relative] = "symlink -> " + path.readlink().as_posix()
            elif path.is_dir():
                state[relative] = "folder"
            else:
                state[relative] = sha256_of(path)
    return state


# --- hand-made archives ----------------------------------------------------------------------


@dataclass
class Member:
    """One tar entry and its bytes (or, for entries too big to hold, a stream of them); or
    `raw` tar blocks, written as they are (headers tarfile itself would not write)."""

    info: tarfile.TarInfo
    data: bytes = b""
    stream: Callable[[], BinaryIO] | None = None
    raw: bytes | None = None

    @property
    def name(self) -> str:
        return self.info.name

    def open(self) -> BinaryIO:
        return self.stream() if self.stream is not None else io.BytesIO(self.data)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        with self.open() as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()


class Padded(io.RawIOBase):
    """`head`, then the one byte `filler` repeated up to `size` bytes, made as it is read (zstd
    compresses the repetition to almost nothing: a 1 GiB entry is a few hundred kB on disk)."""

    def __init__(self, head: bytes, size: int, filler: bytes = b" ") -> None:
        assert len(filler) == 1 and len(head) <= size
        self.head, self.size, self.filler, self.position = head, size, filler, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        count = min(len(view), self.size - self.position)
        part = self.head[self.position : self.position + count]
        view[: len(part)] = part
        view[len(part) : count] = self.filler * (count - len(part))
        self.position += count
        return count


def padded(name: str, head: bytes, size: int, filler: bytes = b" ", kind: bytes = tarfile.REGTYPE
           ) -> Member:  # fmt: skip
    """An entry of `size` bytes: `head`, then `filler` repeated (`kind`: a regular file, or a
    pax header to make tarfile read it whole)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, 0o644, 0, kind
    return Member(info, stream=lambda: io.BufferedReader(Padded(head, size, filler), 1 << 20))


def read_members(bundle: Path) -> list[Member]:
    """Every entry of a plain (not encrypted) bundle, in archive order, with its bytes."""
    members = []
    with (
        bundle.open("rb") as raw,
        zstandard.ZstdDecompressor().stream_reader(raw) as zst,
        tarfile.open(fileobj=zst, mode="r|") as tar,
    ):
        for info in tar:
            stream = tar.extractfile(info)
            members.append(Member(info, stream.read() if stream is not None else b""))
    return members


def contents_of(bundle: Path) -> BundleContents:
    """bundle.json of a plain bundle (read without unpacking the rest)."""
    with (
        bundle.open("rb") as raw,
        zstandard.ZstdDecompressor().stream_reader(raw) as zst,
        tarfile.open(fileobj=zst, mode="r|") as tar,
    ):
        head = tar.next()
        assert head is not None and head.name == CONTENTS_NAME, head
        stream = tar.extractfile(head)
        assert stream is not None
        return BundleContents.model_validate_json(stream.read())


def regular(name: str, data: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    return Member(info, data)


def special(name: str, kind: bytes, linkname: str = "") -> Member:
    """A symbolic link, hard link, device or FIFO entry."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, 0o644, 0
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # /dev/null
    return Member(info, b"")


def raw_blocks(name: str, data: bytes) -> Member:
    """Tar blocks written as they are (see `tar_header`, `pax_header`)."""
    return Member(tarfile.TarInfo(name), raw=data)


def tar_header(
    name: str, kind: bytes, size: int = 0, patch: Callable[[bytearray], None] | None = None
) -> bytes:
    """One ustar header block, changed by `patch` before its checksum is computed."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode = kind, size, 0o644
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    if patch is not None:
        patch(block)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def pax_header(records: dict[str, str], kind: bytes = tarfile.XHDTYPE) -> bytes:
    """A pax extended (or, with XGLTYPE, global) header with its records, padded to blocks."""
    body = b""
    for key, value in records.items():
        record = f" {key}={value}\n".encode()
        length = len(record) + 1
        while len(str(length)) + len(record) != length:
            length += 1
        body += str(length).encode() + record
    return tar_header("././@PaxHeader", kind, len(body)) + body + b"\0" * (-len(body) % 512)


def relisted(members: list[Member], listed: list[Member] | None = None) -> list[Member]:
    """The members with a new bundle.json first, listing `listed` (default: every regular
    member after the head) with their real sha256 and size; other fields are kept."""
    head, rest = members[0], members[1:]
    contents = BundleContents.model_validate_json(head.data)
    chosen = listed if listed is not None else [m for m in rest if m.info.isfile() and not m.raw]
    files = [
        BundleFile.model_construct(path=m.name, sha256=m.sha256(), size=m.info.size) for m in chosen
    ]
    return [regular(CONTENTS_NAME, contents.model_copy(update={"files": files}).to_json().encode()),
            *rest]  # fmt: skip


def write_bundle(members: list[Member], out: Path) -> Path:
    """Write the members as a tar.zst at `out` with a matching `.sha256` sidecar."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        out.open("wb") as raw,
        zstandard.ZstdCompressor(write_checksum=True).stream_writer(raw, closefd=False) as zst,
        tarfile.open(fileobj=zst, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.copybufsize = 1 << 20  # type: ignore[attr-defined]  # 16 kB copies are slow
        for member in members:
            if member.raw is not None:
                assert tar.fileobj is not None and len(member.raw) % tarfile.BLOCKSIZE == 0
                for start in range(0, len(member.raw), 1 << 16):  # tarfile's buffer is 10 kB
                    tar.fileobj.write(member.raw[start : start + (1 << 16)])
                tar.offset += len(member.raw)
            elif member.info.isfile() or member.stream is not None:
                with member.open() as stream:
                    tar.addfile(member.info, stream)
            else:
                tar.addfile(member.info)
    write_sidecar(out)
    return out


def write_sidecar(bundle: Path) -> None:
    """A `.sha256` file that matches the bundle as it is now (for damaged copies)."""
    bundle.with_name(bundle.name + ".sha256").write_text(f"{sha256_of(bundle)}  {bundle.name}\n")


def copy_bundle(bundle: Path, folder: Path) -> Path:
    """Copy a bundle with its sidecars (.sha256, .sig when present) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in bundle.parent.glob(bundle.name + "*"):
        shutil.copy2(path, folder / path.name)
    return folder / bundle.name


# --- what a command costs ---------------------------------------------------------------------


@dataclass
class Cost:
    """Peak Python memory (tracemalloc) and bytes passed to write() by this process."""

    peak_bytes: int = 0
    written_bytes: int = 0


def _written() -> int:
    """`wchar` of /proc/self/io: bytes this process handed to write() and friends."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


@contextmanager
def measured() -> Iterator[Cost]:
    """Measure what the block costs (the CLI run in-process: its buffers are Python objects)."""
    cost = Cost()
    tracemalloc.start()
    before = _written()
    try:
        yield cost
    finally:
        cost.written_bytes = _written() - before
        cost.peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def prepare_retrained_gigaam(store: ModelStore, folder: Path, *args: str) -> None:
    """Register `gigaam-v3-ctc-testtiny` again in `store`, retrained (the next seed): one
    model changed, a new manifest_version. `args` go to `models prepare` (e.g. --no-smoke)."""
    from offline_asr import testmodel

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(testmodel, "SEED", testmodel.SEED + 1)
        testmodel.write_gigaam_test_model(folder)
    prepared = invoke("models", "prepare", "--engine", "gigaam", "--variant", "v3-ctc-testtiny",
                      "--id", "gigaam-v3-ctc-testtiny", "--from-dir", folder, *args,
                      "--manifest", store.manifest_path)  # fmt: skip
    assert prepared.exit_code == 0, prepared.text
