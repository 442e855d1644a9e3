"""Build `offline_bundle_v{N}.tar.zst` strictly from the manifest, byte-identical on rebuild.

`bundle.json` comes first and the manifest second (so both are checked before anything else is
read), then the other entries sorted, with a fixed mtime (the manifest's `updated_at`), owner
and mode, and fixed zstd settings; files are streamed from disk, so memory does not grow with
the bundle.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyrage
import zstandard

from offline_asr.asr.goldens import verify_manifest_golden
from offline_asr.constants import CHECKSUM_NAME
from offline_asr.delivery.bundle.contents import (
    CONTENTS_NAME,
    MANIFEST_IN_BUNDLE,
    BundleContents,
    BundleFile,
)
from offline_asr.delivery.bundle.errors import BundleError
from offline_asr.delivery.bundle.signing import SIGNATURE_SUFFIX, load_private, sign
from offline_asr.errors import OfflineAsrError
from offline_asr.fsutil import sha256_bytes, sha256_file
from offline_asr.progress import Advance, byte_progress
from offline_asr.registry.integrity import artifact_problem, checksum_text
from offline_asr.registry.schemas import Manifest
from offline_asr.registry.store import ModelStore

ZSTD_LEVEL = 3
RAY_LOCK = "requirements-ray.lock"  # the runtime plus the optional `ray` extra (cluster nodes)
LOCK_FILES = ("requirements.lock", RAY_LOCK, "uv.lock")
INSTALL_TEXT = """\
offline-asr bundle v{version}

Install (on the air-gapped host, with offline-asr installed):

    offline-asr bundle verify {name} [--public-key signing.pub]
    offline-asr bundle install {name} --target /srv/offline-asr \\
        [--identity key.age] [--public-key signing.pub]
    offline-asr doctor --target /srv/offline-asr
    offline-asr serve --target /srv/offline-asr

Models: {models}
{delta}"""


@dataclass
class Entry:
    """One archive member: where it goes, and either a file on disk or bytes made here."""

    arcname: str
    source: Path | None = None
    data: bytes | None = None
    expected_sha256: str | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else (self.source or Path()).stat().st_size


@dataclass
class BuildResult:
    path: Path
    sha256: str
    size: int
    contents: BundleContents
    signature: Path | None


def bundle_name(manifest_version: int, *, encrypted: bool) -> str:
    return f"offline_bundle_v{manifest_version}.tar.zst" + (".age" if encrypted else "")


def _entries(
    store: ModelStore,
    manifest: Manifest,
    base: Manifest | None,
    locks_dir: Path,
    wheels: Path | None,
) -> tuple[list[Entry], list[BundleFile]]:
    """Everything but bundle.json, and the artifacts a delta takes from its base."""
    base_hashes = {a.path: a.sha256 for m in (base.models if base else []) for a in m.artifacts}
    entries = [Entry(MANIFEST_IN_BUNDLE, data=manifest.to_json().encode())]
    from_base = []
    for model in manifest.models:
        entries.append(
            Entry(f"models/{model.path}/{CHECKSUM_NAME}", data=checksum_text(model).encode())
        )
        if model.smoke is not None and model.smoke.golden is not None:
            verify_manifest_golden(store.root, model)
            golden = model.smoke.golden
            entries.append(Entry(f"models/{golden}", source=store.root / golden))
        for artifact in model.artifacts:
            if base_hashes.get(artifact.path) == artifact.sha256:
                from_base.append(BundleFile(path=f"models/{artifact.path}", sha256=artifact.sha256,
                                            size=artifact.size))  # fmt: skip
                continue
            entries.append(Entry(f"models/{artifact.path}", source=store.root / artifact.path,
                                 expected_sha256=artifact.sha256))  # fmt: skip
    for name in LOCK_FILES:
        lock = locks_dir / name
        if not lock.is_file():
            raise OfflineAsrError(
                f"{lock} not found: a bundle carries the lock files; run from the checkout "
                "or pass --locks-from DIR"
            )
        entries.append(Entry(f"locks/{name}", source=lock))
    if wheels is not None:
        entries.extend(Entry(f"wheels/{w.name}", source=w) for w in sorted(wheels.glob("*.whl")))
    return entries, from_base


def _archive_order(entry: Entry) -> tuple[bool, str]:
    """The manifest first (after bundle.json), then by name."""
    return entry.arcname != MANIFEST_IN_BUNDLE, entry.arcname


class _HashingReader:
    """Reads a file for tarfile while hashing it and advancing the progress bar."""

    def __init__(self, stream: BinaryIO, advance: Advance) -> None:
        self.stream = stream
        self.advance = advance
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        self.digest.update(chunk)
        self.advance(len(chunk))
        return chunk


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _file_hashes(entries: list[Entry]) -> Iterator[BundleFile]:
    for entry in entries:
        if entry.data is not None:
            digest = sha256_bytes(entry.data)
        elif entry.expected_sha256 is not None:
            digest = entry.expected_sha256  # checked against the bytes while packing
        else:
            assert entry.source is not None
            digest = sha256_file(entry.source).sha256
        yield BundleFile(path=entry.arcname, sha256=digest, size=entry.size)


def write_archive(entries: list[Entry], contents: BundleContents, out: Path, mtime: int) -> None:
    """Stream bundle.json and the entries into a deterministic tar.zst."""
    total = sum(entry.size for entry in entries)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1, write_checksum=True)
    head = contents.to_json().encode()
    with (
        out.open("wb") as raw,
        compressor.stream_writer(raw, closefd=False) as zst,
        tarfile.open(fileobj=zst, mode="w|", format=tarfile.PAX_FORMAT) as tar,
        byte_progress(f"packing {out.name}", total) as advance,
    ):
        tar.addfile(_tarinfo(CONTENTS_NAME, len(head), mtime), io.BytesIO(head))
        for entry in entries:
            info = _tarinfo(entry.arcname, entry.size, mtime)
            if entry.data is not None:
                tar.addfile(info, io.BytesIO(entry.data))
                advance(entry.size)
                continue
            assert entry.source is not None
            with entry.source.open("rb") as stream:
                reader = _HashingReader(stream, advance)
                tar.addfile(info, reader)
            if entry.expected_sha256 and reader.digest.hexdigest() != entry.expected_sha256:
                raise BundleError(
                    f"{entry.arcname} does not match its sha256 in the manifest; run "
                    "`models verify` and fix the store before building a bundle"
                )


def _encrypt(plain: Path, out: Path, recipients: list[str]) -> None:
    try:
        keys = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
    except pyrage.RecipientError as error:
        raise OfflineAsrError(f"bad age recipient ({error}): expected age1...") from error
    pyrage.encrypt_file(str(plain), str(out), keys)


def build_bundle(
    store: ModelStore,
    out_dir: Path,
    *,
    model_ids: list[str] | None = None,
    recipients: list[str] | None = None,
    sign_key: Path | None = None,
    base_manifest: Path | None = None,
    locks_dir: Path = Path(),
    wheels: Path | None = None,
) -> BuildResult:
    """Pack exactly what the manifest lists (and locks, wheels), checking every artifact.

    Nothing is left behind on failure: the archive is written under a temporary name.
    """
    key = load_private(sign_key) if sign_key is not None else None
    full = store.load()
    chosen = [store.get(full, i) for i in model_ids] if model_ids else full.models
    if not chosen:
        raise OfflineAsrError(f"{store.manifest_path} lists no models: nothing to bundle")
    # Every artifact is hashed while it is packed and must match the manifest (write_archive):
    # one read of each file, not a verification pass and then a packing pass.
    for model in chosen:
        for artifact in model.artifacts:
            if (problem := artifact_problem(store.root, artifact)) is not None:
                raise BundleError(
                    f"model {model.id!r}: {problem.sentence()}; run `offline-asr models verify`"
                )
    manifest = full.model_copy(update={"models": chosen})
    base = None
    if base_manifest is not None:
        try:
            base = Manifest.model_validate_json(base_manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise OfflineAsrError(
                f"cannot read the base manifest {base_manifest}: {error}"
            ) from error
    entries, from_base = _entries(store, manifest, base, locks_dir, wheels)
    name = bundle_name(manifest.manifest_version, encrypted=bool(recipients))
    delta = base.manifest_version if base else None
    entries.append(Entry("INSTALL.txt", data=_install_text(name, manifest, delta).encode()))
    entries.sort(key=_archive_order)
    contents = BundleContents(
        manifest_version=manifest.manifest_version,
        models=[m.id for m in chosen],
        base_manifest_version=base.manifest_version if base else None,
        files=list(_file_hashes(entries)),
        from_base=from_base,
    )
    mtime = int(manifest.updated_at.timestamp()) if manifest.updated_at else 0
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / name
    partial = out_dir / f".{final.name}.partial"
    try:
        write_archive(entries, contents, partial, mtime)
        if recipients:
            encrypted = partial.with_name(partial.name + ".age")
            _encrypt(partial, encrypted, recipients)
            partial.unlink()
            partial = encrypted
        partial.replace(final)
    finally:
        for leftover in out_dir.glob(f".{final.name}.partial*"):
            leftover.unlink()
    digest = sha256_file(final).sha256
    final.with_name(final.name + ".sha256").write_text(f"{digest}  {final.name}\n")
    signature = None
    if key is not None:
        signature = final.with_name(final.name + SIGNATURE_SUFFIX)
        statement = {
            "bundle": final.name,
            "sha256": digest,
            "contents_sha256": sha256_bytes(contents.to_json().encode()),
            "manifest_version": manifest.manifest_version,
        }
        sign(statement, key, signature)
    return BuildResult(final, digest, final.stat().st_size, contents, signature)


def _install_text(name: str, manifest: Manifest, base_version: int | None) -> str:
    delta = (
        f"Delta over manifest_version {base_version}: install that release first.\n"
        if base_version is not None
        else ""
    )
    models = ", ".join(m.id for m in manifest.models)
    return INSTALL_TEXT.format(
        version=manifest.manifest_version, name=name, models=models, delta=delta
    )
