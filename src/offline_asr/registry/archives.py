"""Safe extraction of tar / tar.gz / tar.zst / zip archives: regular files and folders only."""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import zstandard

from offline_asr.errors import SourceError
from offline_asr.registry.schemas import check_store_path

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".zip")
HEADER_LIMIT = 64 << 10
"""Largest pax or GNU long-name header read (real ones hold a path and a few numbers)."""
HEADER_CHAIN_LIMIT = 4
"""Extended headers in a row before a member (tarfile follows such a chain recursively)."""
GLOBAL_KEYS_LIMIT = 64
"""pax global header keys kept (tarfile keeps them for the rest of the archive)."""
_EXTENDED_HEADERS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                     tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)  # fmt: skip
_CHAIN = "_offline_asr_header_chain"


class UnsafeTarError(tarfile.TarError):
    """A tar header that tarfile would turn into unbounded memory or recursion."""


class BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that keeps tarfile's header parsing bounded, whatever the archive holds.

    tarfile reads a pax or GNU long-name header whole, follows chains of them recursively,
    keeps pax global keys for the rest of the archive and builds sparse maps of any length:
    each is refused (before the read) past a small limit, and sparse files are not accepted.
    """

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafeTarError(f"{self.name!r} is a sparse file; those are not accepted")
        if self.type in _EXTENDED_HEADERS:
            chain = getattr(archive, _CHAIN, 0) + 1
            setattr(archive, _CHAIN, chain)
            if self.size > HEADER_LIMIT:
                raise UnsafeTarError(
                    f"a tar header of {self.size:,} bytes, larger than the {HEADER_LIMIT:,}-byte "
                    "limit for one"
                )
            if chain > HEADER_CHAIN_LIMIT:
                raise UnsafeTarError(f"more than {HEADER_CHAIN_LIMIT} tar headers in a row")
            if self.type == tarfile.XGLTYPE and len(archive.pax_headers) > GLOBAL_KEYS_LIMIT:
                raise UnsafeTarError(f"more than {GLOBAL_KEYS_LIMIT} pax global header keys")
        else:
            setattr(archive, _CHAIN, 0)
        # tarfile.py names _proc_member as the point to override; typeshed does not list it.
        member: tarfile.TarInfo = super()._proc_member(archive)  # type: ignore[misc]
        if member.sparse is not None:
            raise UnsafeTarError(f"{member.name!r} is a sparse file; those are not accepted")
        return member

    def _proc_gnusparse_10(self, *args: object) -> None:
        """GNU sparse 1.0 keeps its map in the member's data, read without a bound: refused."""
        raise UnsafeTarError("a GNU sparse 1.0 file; sparse files are not accepted")


class StreamingTarFile(tarfile.TarFile):
    """A tar read as a stream of bounded members, none of them kept once passed (tarfile keeps
    every member it has read, each with a copy of its pax headers)."""

    tarinfo = BoundedTarInfo

    def next(self) -> tarfile.TarInfo | None:
        member = super().next()
        self.members.clear()  # type: ignore[attr-defined]  # in tarfile.py, not in typeshed
        return member


@contextmanager
def zstd_tar_stream(archive: Path) -> Iterator[tarfile.TarFile]:
    """Read a .tar.zst as a stream of bounded members."""
    with (
        archive.open("rb") as raw,
        zstandard.ZstdDecompressor().stream_reader(raw) as zst,
        StreamingTarFile.open(fileobj=zst, mode="r|") as stream,
    ):
        yield stream


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _member_path(name: str, archive: Path) -> str:
    cleaned = name.removeprefix("./").rstrip("/")
    try:
        return check_store_path(cleaned)
    except ValueError as error:
        raise SourceError(f"{archive}: refusing entry {name!r}: {error}") from error


def _extract_tar(stream: tarfile.TarFile, archive: Path, out: Path) -> None:
    seen: set[str] = set()
    for member in stream:
        relative = _member_path(member.name, archive)
        if member.isdir():
            (out / relative).mkdir(parents=True, exist_ok=True)
            continue
        if not member.isfile():
            raise SourceError(
                f"{archive}: refusing {member.name!r}: only regular files are allowed"
            )
        if relative in seen:
            raise SourceError(f"{archive}: {member.name!r} appears twice")
        seen.add(relative)
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        source = stream.extractfile(member)
        assert source is not None
        with source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink, 4 * 1024 * 1024)


def extract_archive(archive: Path, out: Path) -> None:
    """Extract into `out`, refusing absolute paths, `..`, links, devices and duplicates."""
    name = archive.name.lower()
    out.mkdir(parents=True, exist_ok=True)
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as stream:
                names = [_member_path(info.filename, archive) for info in stream.infolist()]
                if len(set(names)) != len(names):
                    raise SourceError(f"{archive}: an entry appears twice")
                for info, relative in zip(stream.infolist(), names, strict=True):
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise SourceError(f"{archive}: refusing symbolic link {info.filename!r}")
                    target = out / relative
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with stream.open(info) as source, target.open("wb") as sink:
                        shutil.copyfileobj(source, sink, 4 * 1024 * 1024)
        elif name.endswith((".tar.zst", ".tzst")):
            with zstd_tar_stream(archive) as stream:
                _extract_tar(stream, archive, out)
        else:
            with StreamingTarFile.open(archive, mode="r|*") as stream:
                _extract_tar(stream, archive, out)
    except (tarfile.TarError, zipfile.BadZipFile, zstandard.ZstdError, EOFError) as error:
        raise SourceError(f"{archive} is not a readable archive: {error}") from error
