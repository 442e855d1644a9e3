"""Verify, decrypt, safely unpack and atomically switch to a bundle; list and roll back releases.

Layout of a target: `releases/v{N}/` (one per installed bundle), `current` (a symlink to one of
them, switched with a rename, so a reader sees the old or the new release, never a mix) and
`.install.lock`. A killed install leaves only a `releases/.staging-*` folder that the next
install removes (a `releases/v{N}` that a kill left complete but not current is replaced by the
next install of that bundle); `current` never moves before the new release is verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pyrage
import zstandard
from pydantic import ValidationError

from offline_asr.bundle.build import sha256_bytes
from offline_asr.bundle.contents import CONTENTS_NAME, BundleContents, BundleFile
from offline_asr.bundle.errors import BundleError
from offline_asr.bundle.signing import SIGNATURE_SUFFIX, verify
from offline_asr.errors import OfflineAsrError
from offline_asr.goldens import GoldenError, verify_manifest_golden
from offline_asr.locking import exclusive
from offline_asr.progress import byte_progress
from offline_asr.registry.integrity import sha256_file, verify_models
from offline_asr.registry.store import ModelStore
from offline_asr.schemas import check_store_path, describe_validation_error

AGE_MAGIC = b"age-encryption.org/v1"
RELEASE = re.compile(r"^v(\d+)$")
INFO_NAME = ".bundle-info.json"
CHUNK = 4 * 1024 * 1024


@dataclass
class Release:
    version: int
    path: Path
    current: bool
    bundle: str | None
    installed_at: str | None


def is_encrypted(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(len(AGE_MAGIC)) == AGE_MAGIC


def check_sidecars(bundle: Path, public_key: Path | None) -> tuple[str, dict[str, Any] | None]:
    """The sha256 sidecar must match; with a public key, so must the signature.

    Returns the bundle's sha256 and the signed statement (None when no key is configured).
    """
    if not bundle.is_file():
        raise OfflineAsrError(f"{bundle}: no such bundle file")
    sidecar = bundle.with_name(bundle.name + ".sha256")
    if not sidecar.is_file():
        raise BundleError(f"{sidecar.name} is missing: copy it along with the bundle")
    fields = sidecar.read_text(encoding="utf-8").split()
    if not fields:
        raise BundleError(f"{sidecar.name} is empty: copy it again along with the bundle")
    expected = fields[0].lower()
    actual = sha256_file(bundle).sha256
    if actual != expected:
        raise BundleError(
            f"{bundle.name} has sha256 {actual}, its .sha256 file says {expected}: the copy is "
            "truncated or altered; copy it again from the source"
        )
    if public_key is None:
        return actual, None
    statement = verify(bundle.with_name(bundle.name + SIGNATURE_SUFFIX), public_key)
    if statement.get("sha256") != actual:
        raise BundleError(f"the signature of {bundle.name} is for another file")
    return actual, statement


@contextmanager
def _plain_archive(bundle: Path, identity: Path | None, scratch: Path) -> Iterator[Path]:
    """The bundle's tar.zst, decrypted into `scratch` when it is age-encrypted."""
    if not is_encrypted(bundle):
        yield bundle
        return
    if identity is None:
        raise OfflineAsrError(f"{bundle.name} is encrypted: pass --identity with the age key")
    try:
        keys = [
            pyrage.x25519.Identity.from_str(line.strip())
            for line in identity.read_text(encoding="utf-8").splitlines()
            if line.strip().startswith("AGE-SECRET-KEY-")
        ]
    except (OSError, pyrage.IdentityError) as error:
        raise OfflineAsrError(f"cannot read the age identity {identity}: {error}") from error
    if not keys:
        raise OfflineAsrError(f"{identity} holds no AGE-SECRET-KEY line")
    plain = scratch / "bundle.tar.zst"
    try:
        try:
            pyrage.decrypt_file(str(bundle), str(plain), keys)
        except pyrage.DecryptError as error:
            raise BundleError(
                f"cannot decrypt {bundle.name} with {identity}: it was encrypted to another key"
            ) from error
        except OSError as error:
            raise BundleError(f"cannot decrypt {bundle.name} into {scratch}: {error}") from error
        yield plain
    finally:
        plain.unlink(missing_ok=True)


def _member_path(member: tarfile.TarInfo) -> str:
    if not member.isfile():
        raise BundleError(f"refusing {member.name!r}: only regular files belong in a bundle")
    try:
        return check_store_path(member.name)
    except ValueError as error:
        raise BundleError(f"refusing {member.name!r}: {error}") from error


def _hash_stream(source: IO[bytes], target: Path | None) -> str:
    """sha256 of a member, written to `target` on the way when given."""
    digest = hashlib.sha256()
    if target is None:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
        return digest.hexdigest()
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as sink:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            sink.write(chunk)
        sink.flush()
        os.fsync(sink.fileno())
    return digest.hexdigest()


def _read_contents(tar: tarfile.TarFile) -> tuple[BundleContents, bytes]:
    first = tar.next()
    if first is None or first.name != CONTENTS_NAME or not first.isfile():
        raise BundleError(f"not an offline-asr bundle: its first entry must be {CONTENTS_NAME}")
    stream = tar.extractfile(first)
    assert stream is not None
    raw = stream.read()
    try:
        return BundleContents.model_validate_json(raw), raw
    except ValidationError as error:
        raise BundleError(
            f"{CONTENTS_NAME} is not valid:\n{describe_validation_error(error)}"
        ) from error


def _space_needed(contents: BundleContents) -> int:
    """Bytes the release takes on disk: each file rounded up to 4 KiB blocks, plus 1 MiB."""
    files = [*contents.files, *contents.from_base]
    return sum(-(-f.size // 4096) * 4096 for f in files) + (1 << 20)


def unpack(
    archive: Path, out: Path | None, *, free_bytes: int | None = None
) -> tuple[BundleContents, bytes]:
    """Stream the archive, checking every entry against bundle.json; write into `out` if given.

    Refuses absolute paths, `..`, links, devices, duplicates and unlisted files, and a bundle
    that lacks a listed file; with `free_bytes`, refuses one that would not fit.
    """
    try:
        with (
            archive.open("rb") as raw,
            zstandard.ZstdDecompressor().stream_reader(raw) as zst,
            tarfile.open(fileobj=zst, mode="r|") as tar,
        ):
            contents, raw_contents = _read_contents(tar)
            needed = _space_needed(contents)
            if free_bytes is not None and needed > free_bytes:
                raise BundleError(
                    f"not enough disk space: the release needs about {needed:,} bytes, "
                    f"{free_bytes:,} are free"
                )
            listed = {f.path: f for f in contents.files}
            seen: set[str] = set()
            with byte_progress(f"unpacking {archive.name}", contents.size) as advance:
                while (member := tar.next()) is not None:
                    path = _member_path(member)
                    if path in seen:
                        raise BundleError(f"{path} appears twice in the bundle")
                    if path not in listed:
                        raise BundleError(f"{path} is in the archive but not in {CONTENTS_NAME}")
                    seen.add(path)
                    source = tar.extractfile(member)
                    assert source is not None
                    digest = _hash_stream(source, None if out is None else out / path)
                    advance(member.size)
                    if digest != listed[path].sha256 or member.size != listed[path].size:
                        raise BundleError(f"{path} differs from its sha256 in {CONTENTS_NAME}")
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as error:
        raise BundleError(f"{archive.name} is damaged or truncated: {error}") from error
    except OSError as error:
        raise BundleError(
            f"cannot write the release ({error.strerror}); nothing was switched"
        ) from error
    missing = sorted(set(listed) - seen)
    if missing:
        raise BundleError(f"the bundle lacks {', '.join(missing)}, which {CONTENTS_NAME} lists")
    return contents, raw_contents


def verify_bundle(
    bundle: Path, *, public_key: Path | None = None, identity: Path | None = None
) -> BundleContents | None:
    """Check hash, signature and (when readable) every file; None if encrypted without identity."""
    _, statement = check_sidecars(bundle, public_key)
    if is_encrypted(bundle) and identity is None:
        return None
    # Decrypted copies go to a temporary folder: the bundle may sit on read-only media.
    with (
        tempfile.TemporaryDirectory(prefix="offline-asr-verify-") as scratch,
        _plain_archive(bundle, identity, Path(scratch)) as archive,
    ):
        contents, raw = unpack(archive, None)
    _check_signed_contents(statement, raw)
    return contents


def _check_signed_contents(statement: dict[str, Any] | None, raw: bytes) -> None:
    if statement is not None and sha256_bytes(raw) != statement.get("contents_sha256"):
        raise BundleError(f"the signed {CONTENTS_NAME} differs from the one in the bundle")


def _install_lock(target: Path) -> AbstractContextManager[None]:
    busy = OfflineAsrError(
        f"another install or rollback is running on {target}; wait for it to finish"
    )
    return exclusive(target / ".install.lock", busy)


def switch_current(target: Path, release: Path) -> None:
    """Point `target/current` at `release` with one rename (atomic on POSIX)."""
    link = target / f".current-{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(release.relative_to(target))
    link.replace(target / "current")
    dir_fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _take_from_base(base: Path, staging: Path, files: list[BundleFile]) -> None:
    """Hard-link (or copy) a delta's unchanged files from the base release, then check them."""
    for item in files:
        source, target = base / item.path, staging / item.path
        if not source.is_file():
            raise BundleError(f"the base release {base.name} lacks {item.path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
        if sha256_file(target).sha256 != item.sha256:
            raise BundleError(f"{item.path} in the base release {base.name} was altered")


def install_bundle(
    bundle: Path,
    target: Path,
    *,
    public_key: Path | None = None,
    identity: Path | None = None,
) -> Release:
    """Verify, unpack into staging, check every artifact, then switch `current` to it."""
    digest, statement = check_sidecars(bundle, public_key)
    releases = target / "releases"
    with _install_lock(target):
        releases.mkdir(parents=True, exist_ok=True)
        for stale in releases.glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = releases / f".staging-{os.getpid()}"
        staging.mkdir()
        try:
            with _plain_archive(bundle, identity, staging) as archive:
                free = shutil.disk_usage(releases).free
                contents, raw = unpack(archive, staging, free_bytes=free)
            _check_signed_contents(statement, raw)
            (staging / CONTENTS_NAME).write_bytes(raw)
            if contents.base_manifest_version is not None:
                base = releases / f"v{contents.base_manifest_version}"
                if not base.is_dir():
                    raise BundleError(
                        f"{bundle.name} is a delta over manifest_version "
                        f"{contents.base_manifest_version}, which is not installed in {target}: "
                        "install the full bundle of that version first"
                    )
                _take_from_base(base, staging, contents.from_base)
            store = ModelStore(staging / "models" / "manifest.json")
            models = store.load().models
            broken = [r for r in verify_models(store.root, models) if not r.ok]
            if broken:
                raise BundleError(
                    "the unpacked release does not match its manifest: "
                    + "; ".join(f"{p.path} {p.problem}" for r in broken for p in r.problems)
                )
            for model in models:
                try:
                    verify_manifest_golden(store.root, model)
                except GoldenError as error:
                    raise BundleError(f"the unpacked release is not usable: {error}") from error
            (staging / INFO_NAME).write_text(json.dumps({
                "bundle": bundle.name, "sha256": digest,
                "installed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }, indent=2) + "\n")  # fmt: skip
            final = releases / f"v{contents.manifest_version}"
            if final.exists():
                if final.resolve() == (target / "current").resolve():
                    raise OfflineAsrError(
                        f"release v{contents.manifest_version} is already the current one in "
                        f"{target}; nothing to do"
                    )
                # An earlier install died before switching, or it was rolled back from: the
                # freshly verified copy replaces it.
                final.rename(releases / f".staging-replaced-{os.getpid()}")
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(releases / f".staging-replaced-{os.getpid()}", ignore_errors=True)
        switch_current(target, final)
    return next(r for r in list_releases(target) if r.version == contents.manifest_version)


def list_releases(target: Path) -> list[Release]:
    """Installed releases, oldest first, marking the one `current` points to."""
    current = (target / "current").resolve() if (target / "current").is_symlink() else None
    found = []
    for path in (target / "releases").glob("v*"):
        match = RELEASE.fullmatch(path.name)
        if match is None or not path.is_dir():
            continue
        info_path = path / INFO_NAME
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        found.append(Release(int(match[1]), path, path.resolve() == current,
                             info.get("bundle"), info.get("installed_at")))  # fmt: skip
    return sorted(found, key=lambda r: r.version)


def rollback(target: Path) -> Release:
    """Switch `current` to the release before it."""
    with _install_lock(target):
        releases = list_releases(target)
        index = next((i for i, r in enumerate(releases) if r.current), None)
        if index is None:
            raise OfflineAsrError(f"{target} has no current release; install a bundle first")
        if index == 0:
            oldest = releases[0].version
            raise OfflineAsrError(f"v{oldest} is the oldest release; nothing to roll back to")
        switch_current(target, releases[index - 1].path)
    return next(r for r in list_releases(target) if r.current)


def prune(target: Path, keep: int) -> list[int]:
    """Delete all but the newest `keep` releases (never the current one); returns versions."""
    with _install_lock(target):
        releases = list_releases(target)
        doomed = [r for r in releases[: max(0, len(releases) - keep)] if not r.current]
        for release in doomed:
            shutil.rmtree(release.path)
    return [r.version for r in doomed]


def target_manifest(target: Path) -> Path:
    """`--target DIR` means DIR/current/models/manifest.json."""
    manifest = target / "current" / "models" / "manifest.json"
    if not manifest.is_file():
        raise OfflineAsrError(f"{target} has no current release: install a bundle into it first")
    return manifest
