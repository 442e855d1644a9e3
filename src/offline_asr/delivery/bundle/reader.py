"""Read a bundle and check everything about it: the one path behind `bundle verify` and
`bundle install`, so that the two cannot disagree about a bundle.

In order: the public key (a bad one is bad input, exit 2), the `.sha256` sidecar, the
signature, decryption, then one pass over the archive: `bundle.json` (first entry: bounded,
schema, the signed hash), the manifest (second entry: bounded, schema, agreement with
`bundle.json`), free space, then every other entry, its size compared with `bundle.json` before
it is read and its sha256 while it is read (and, when installing, written); finally nothing
listed may be missing. Installing adds only what depends on the target: free disk, the delta's
base release, the current release.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeVar

import pyrage
import zstandard
from pydantic import BaseModel, ValidationError
from pydantic_core import SchemaValidator

from offline_asr.delivery.bundle.contents import (
    CONTENTS_NAME,
    MANIFEST_IN_BUNDLE,
    BundleContents,
    manifest_disagreements,
)
from offline_asr.delivery.bundle.errors import BundleError
from offline_asr.delivery.bundle.limits import (
    METADATA_LIMIT,
    SIDECAR_LIMIT,
    read_limited,
    too_large,
)
from offline_asr.delivery.bundle.signing import SIGNATURE_SUFFIX, load_public, verify
from offline_asr.errors import OfflineAsrError
from offline_asr.fsutil import sha256_bytes, sha256_file
from offline_asr.progress import byte_progress
from offline_asr.registry.archives import zstd_tar_stream
from offline_asr.registry.schemas import Manifest, check_store_path, describe_validation_error

AGE_MAGIC = b"age-encryption.org/v1"
CHUNK = 4 * 1024 * 1024
DECRYPTED_DIR = ".decrypted"
"""Where a decrypted archive is kept while it is read: a folder only its owner may enter."""
SHOWN_PROBLEMS = 5


@dataclass
class CheckedBundle:
    """A bundle that passed every check that does not depend on an install target."""

    sha256: str
    contents: BundleContents
    raw_contents: bytes


def is_encrypted(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(len(AGE_MAGIC)) == AGE_MAGIC


def check_sidecars(bundle: Path, public_key: Path | None) -> tuple[str, dict[str, Any] | None]:
    """The sha256 sidecar must match; with a public key, so must the signature.

    Returns the bundle's sha256 and the signed statement (None when no key is configured).
    The key is read first: a key that cannot be used is bad input, found before any hashing.
    """
    signer = None if public_key is None else (public_key, load_public(public_key))
    if not bundle.is_file():
        raise OfflineAsrError(f"{bundle}: no such bundle file")
    sidecar = bundle.with_name(bundle.name + ".sha256")
    if not sidecar.is_file():
        raise BundleError(f"{sidecar.name} is missing: copy it along with the bundle")
    fields = read_limited(sidecar, SIDECAR_LIMIT, "sha256 file", BundleError).split()
    if not fields:
        raise BundleError(f"{sidecar.name} is empty: copy it again along with the bundle")
    expected = fields[0].decode(errors="replace").lower()
    actual = sha256_file(bundle).sha256
    if actual != expected:
        raise BundleError(
            f"{bundle.name} has sha256 {actual}, its .sha256 file says {expected[:64]}: the copy "
            "is truncated or altered; copy it again from the source"
        )
    if signer is None:
        return actual, None
    statement = verify(bundle.with_name(bundle.name + SIGNATURE_SUFFIX), *signer)
    if statement.get("sha256") != actual:
        raise BundleError(f"the signature of {bundle.name} is for another file")
    return actual, statement


def _identities(identity: Path) -> list[pyrage.x25519.Identity]:
    text = read_limited(identity, SIDECAR_LIMIT, "age identity").decode(errors="replace")
    try:
        keys = [
            pyrage.x25519.Identity.from_str(line.strip())
            for line in text.splitlines()
            if line.strip().startswith("AGE-SECRET-KEY-")
        ]
    except pyrage.IdentityError as error:
        raise OfflineAsrError(f"cannot read the age identity {identity}: {error}") from error
    if not keys:
        raise OfflineAsrError(f"{identity} holds no AGE-SECRET-KEY line")
    return keys


@contextmanager
def plain_archive(bundle: Path, identity: Path | None, scratch: Path) -> Iterator[Path]:
    """The bundle's tar.zst; decrypted, when it is age-encrypted, into a folder of `scratch`
    that only the owner may enter (mode 0700, the file 0600), removed afterwards."""
    if not is_encrypted(bundle):
        yield bundle
        return
    if identity is None:
        raise OfflineAsrError(f"{bundle.name} is encrypted: pass --identity with the age key")
    keys = _identities(identity)
    folder = scratch / DECRYPTED_DIR
    try:
        folder.mkdir(mode=0o700)
        plain = folder / "bundle.tar.zst"
        os.close(os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
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
        shutil.rmtree(folder, ignore_errors=True)


def _member_path(member: tarfile.TarInfo) -> str:
    if not member.isfile():
        raise BundleError(f"refusing {member.name!r}: only regular files belong in a bundle")
    try:
        return check_store_path(member.name)
    except ValueError as error:
        raise BundleError(f"refusing {member.name!r}: {error}") from error


@contextmanager
def _sink(target: Path | None) -> Iterator[Callable[[bytes], object]]:
    """Where a member's bytes go: a new file, flushed to disk, or nowhere."""
    if target is None:
        yield lambda chunk: None
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("xb") as stream:
        yield stream.write
        stream.flush()
        os.fsync(stream.fileno())


def _copy(source: IO[bytes], target: Path | None, size: int) -> str:
    """sha256 of the first `size` bytes of `source` (never more), written to `target` if given."""
    digest = hashlib.sha256()
    with _sink(target) as sink:
        remaining = size
        while remaining > 0 and (chunk := source.read(min(CHUNK, remaining))):
            digest.update(chunk)
            sink(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def _read_metadata(tar: tarfile.TarFile, name: str, position: str) -> bytes:
    member = tar.next()
    if member is None or member.name != name or not member.isfile():
        raise BundleError(
            f"not an offline-asr bundle of this version: its {position} entry must be {name} "
            "(rebuild it with this offline-asr)"
        )
    if member.size > METADATA_LIMIT:
        raise BundleError(too_large(name, member.size, METADATA_LIMIT))
    stream = tar.extractfile(member)
    assert stream is not None
    return stream.read(member.size)


Parsed = TypeVar("Parsed", bound=BaseModel)


def _stop_at_first_error(schema: Any) -> None:
    """Mark every list, set, tuple and dict in a pydantic core schema fail-fast, in place."""
    if isinstance(schema, dict):
        if schema.get("type") in ("list", "set", "tuple", "dict"):
            schema["fail_fast"] = True
        for value in schema.values():
            _stop_at_first_error(value)
    elif isinstance(schema, list):
        for value in schema:
            _stop_at_first_error(value)


@functools.cache
def _fail_fast(model: type[BaseModel]) -> SchemaValidator:
    """`model`'s validator, stopping at the first bad element of any collection.

    pydantic otherwise builds one error per bad element: 1 MiB of `{}` in a manifest's model
    list is 3.8 million errors and gigabytes of memory.
    """
    schema = copy.deepcopy(model.__pydantic_core_schema__)
    _stop_at_first_error(schema)
    return SchemaValidator(schema)


def _parse(model: type[Parsed], raw: bytes, what: str) -> Parsed:
    try:
        parsed: Parsed = _fail_fast(model).validate_json(raw)
        return parsed
    except ValidationError as error:
        lines = describe_validation_error(error).splitlines()
        more = len(lines) - SHOWN_PROBLEMS
        shown = lines[:SHOWN_PROBLEMS] + ([f"  and {more} more"] if more > 0 else [])
        raise BundleError(f"{what}:\n" + "\n".join(shown)) from error


class _Head(NamedTuple):
    contents: BundleContents
    raw_contents: bytes
    raw_manifest: bytes


def _read_head(tar: tarfile.TarFile, statement: dict[str, Any] | None) -> _Head:
    """bundle.json and the manifest, checked against each other before anything else is read."""
    raw = _read_metadata(tar, CONTENTS_NAME, "first")
    contents = _parse(BundleContents, raw, f"{CONTENTS_NAME} is not valid")
    if statement is not None and sha256_bytes(raw) != statement.get("contents_sha256"):
        raise BundleError(f"the signed {CONTENTS_NAME} differs from the one in the bundle")
    manifest_raw = _read_metadata(tar, MANIFEST_IN_BUNDLE, "second")
    listed = next(f for f in contents.files if f.path == MANIFEST_IN_BUNDLE)
    if sha256_bytes(manifest_raw) != listed.sha256:
        raise BundleError(f"{MANIFEST_IN_BUNDLE} differs from its sha256 in {CONTENTS_NAME}")
    manifest = _parse(
        Manifest, manifest_raw, f"{MANIFEST_IN_BUNDLE} in the bundle breaks the manifest schema"
    )
    problems = manifest_disagreements(contents, manifest)
    if problems:
        more = len(problems) - SHOWN_PROBLEMS
        raise BundleError(
            f"the bundle's {MANIFEST_IN_BUNDLE} and {CONTENTS_NAME} describe different releases: "
            + "; ".join(problems[:SHOWN_PROBLEMS])
            + (f"; and {more} more" if more > 0 else "")
        )
    return _Head(contents, raw, manifest_raw)


def _space_needed(contents: BundleContents) -> int:
    """Bytes the release takes on disk: each file rounded up to 4 KiB blocks, plus 1 MiB."""
    files = [*contents.files, *contents.from_base]
    return sum(-(-f.size // 4096) * 4096 for f in files) + (1 << 20)


def unpack(
    archive: Path,
    out: Path | None,
    *,
    statement: dict[str, Any] | None = None,
    free_bytes: int | None = None,
) -> tuple[BundleContents, bytes]:
    """Stream the archive, checking every entry against bundle.json; write into `out` if given.

    Refuses absolute paths, `..`, links, devices, duplicates, unlisted files and entries whose
    size differs from bundle.json (before reading them), and a bundle that lacks a listed file;
    with `free_bytes`, refuses one that would not fit.
    """
    try:
        with zstd_tar_stream(archive) as tar:
            head = _read_head(tar, statement)
            contents = head.contents
            needed = _space_needed(contents)
            if free_bytes is not None and needed > free_bytes:
                raise BundleError(
                    f"not enough disk space: the release needs about {needed:,} bytes, "
                    f"{free_bytes:,} are free"
                )
            listed = {f.path: f for f in contents.files}
            seen = {MANIFEST_IN_BUNDLE}
            if out is not None:
                raw_manifest = head.raw_manifest
                _copy(io.BytesIO(raw_manifest), out / MANIFEST_IN_BUNDLE, len(raw_manifest))
            with byte_progress(f"unpacking {archive.name}", contents.size) as advance:
                while (member := tar.next()) is not None:
                    path = _member_path(member)
                    if path in seen:
                        raise BundleError(f"{path} appears twice in the bundle")
                    if path not in listed:
                        raise BundleError(f"{path} is in the archive but not in {CONTENTS_NAME}")
                    seen.add(path)
                    expected = listed[path]
                    if member.size != expected.size:
                        raise BundleError(
                            f"{path} is {member.size:,} bytes in the archive, {CONTENTS_NAME} "
                            f"says {expected.size:,}"
                        )
                    source = tar.extractfile(member)
                    assert source is not None
                    digest = _copy(source, None if out is None else out / path, expected.size)
                    advance(expected.size)
                    if digest != expected.sha256:
                        raise BundleError(f"{path} differs from its sha256 in {CONTENTS_NAME}")
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as error:
        raise BundleError(f"{archive.name} is damaged or truncated: {error}") from error
    except OSError as error:
        raise BundleError(
            f"cannot write the release ({error.strerror}); nothing was switched"
        ) from error
    missing = sorted(set(listed) - seen)
    if missing:
        more = f" and {len(missing) - SHOWN_PROBLEMS} more" if len(missing) > SHOWN_PROBLEMS else ""
        shown = ", ".join(missing[:SHOWN_PROBLEMS])
        raise BundleError(f"the bundle lacks {shown}{more}, which {CONTENTS_NAME} lists")
    return head.contents, head.raw_contents


def check_bundle(
    bundle: Path,
    *,
    public_key: Path | None,
    identity: Path | None,
    scratch: Path,
    out: Path | None = None,
) -> CheckedBundle:
    """Every check of the bundle itself. With `out`, its files are written there on the way,
    after checking that they fit in the free space left once the bundle is decrypted."""
    digest, statement = check_sidecars(bundle, public_key)
    with plain_archive(bundle, identity, scratch) as archive:
        free = None if out is None else shutil.disk_usage(out).free
        contents, raw = unpack(archive, out, statement=statement, free_bytes=free)
    return CheckedBundle(digest, contents, raw)


def verify_bundle(
    bundle: Path, *, public_key: Path | None = None, identity: Path | None = None
) -> CheckedBundle | None:
    """`check_bundle` without a target; None (sha256 and signature checked, contents not) for
    an encrypted bundle when no identity is given."""
    if identity is None and bundle.is_file() and is_encrypted(bundle):
        check_sidecars(bundle, public_key)
        return None
    # Decrypted copies go to a temporary folder: the bundle may sit on read-only media.
    with tempfile.TemporaryDirectory(prefix="offline-asr-verify-") as scratch:
        return check_bundle(bundle, public_key=public_key, identity=identity, scratch=Path(scratch))
