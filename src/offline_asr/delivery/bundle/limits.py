"""Upper bounds on every piece of bundle metadata that is read into memory.

A bundle comes from outside: its metadata is read with a limit, so a padded `bundle.json`,
manifest, sidecar or key file is refused after reading at most limit + 1 bytes (a 1 GiB
`bundle.json` of whitespace compresses to a few hundred kB). The README's bundle section lists
these numbers.
"""

from __future__ import annotations

from pathlib import Path

from offline_asr.errors import OfflineAsrError

METADATA_LIMIT = 4 << 20
"""`bundle.json` and the inner `models/manifest.json` (room for about 30,000 listed files), and
the lock files, which `doctor` reads. Parsed JSON takes several times its size in memory, and
an invalid one more (measured: up to 70 times), so this limit is also the memory bound."""
SIDECAR_LIMIT = 64 << 10
"""`.sha256`, `.sig`, key and identity files, a release's `.bundle-info.json`."""


def too_large(what: str, size: int, limit: int) -> str:
    return f"{what} is {size:,} bytes, larger than the {limit:,}-byte limit for it"


def read_limited(
    path: Path, limit: int, what: str, error: type[OfflineAsrError] = OfflineAsrError
) -> bytes:
    """The bytes of `path`; `error` if it cannot be read or holds more than `limit` bytes."""
    try:
        with path.open("rb") as stream:
            data = stream.read(limit + 1)
    except OSError as failure:
        raise error(f"cannot read the {what} {path}: {failure.strerror or failure}") from failure
    if len(data) > limit:
        raise error(too_large(str(path), _size(path, len(data)), limit) + f": not a {what}")
    return data


def _size(path: Path, at_least: int) -> int:
    try:
        return max(path.stat().st_size, at_least)
    except OSError:
        return at_least
