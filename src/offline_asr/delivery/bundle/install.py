"""Install a checked bundle into a target and switch to it atomically; list, roll back, prune.

Layout of a target: `releases/v{N}/` (one per installed bundle), `current` (a symlink to one of
them, switched with a rename, so a reader sees the old or the new release, never a mix) and
`.install.lock`. Every change holds the lock, and first removes what killed installs and
rollbacks left: `releases/.staging-*` folders and `.current-PID` links (no live install can own
them while the lock is held). A `releases/v{N}` that a kill left complete but not current is
replaced by the next install of that bundle. `current` only ever moves to a release whose every
artifact was just verified against its manifest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from offline_asr.asr.release_check import release_problems
from offline_asr.delivery.bundle.contents import CONTENTS_NAME, MANIFEST_IN_BUNDLE, BundleFile
from offline_asr.delivery.bundle.errors import BundleError
from offline_asr.delivery.bundle.limits import SIDECAR_LIMIT, read_limited
from offline_asr.delivery.bundle.reader import check_bundle
from offline_asr.errors import OfflineAsrError
from offline_asr.fsutil import exclusive, fsync_dir, sha256_file

RELEASE = re.compile(r"^v(\d+)$")
INFO_NAME = ".bundle-info.json"
STAGING_PREFIX = ".staging-"
LINK_PREFIX = ".current-"
_LINK = re.compile(rf"^{re.escape(LINK_PREFIX)}\d+$")


@dataclass
class Release:
    version: int
    path: Path
    current: bool
    bundle: str | None
    installed_at: str | None


def leftovers(target: Path) -> list[Path]:
    """What killed installs and rollbacks leave: staging folders (which may hold a decrypted
    bundle) and temporary `current` links."""
    staging = sorted((target / "releases").glob(f"{STAGING_PREFIX}*"))
    links = sorted(p for p in target.glob(f"{LINK_PREFIX}*") if _LINK.fullmatch(p.name))
    return staging + links


@contextmanager
def _locked(target: Path) -> Iterator[list[Path]]:
    """Hold the install lock, and remove the leftovers of dead installs (yields what went)."""
    busy = OfflineAsrError(
        f"another install or rollback is running on {target}; wait for it to finish"
    )
    with exclusive(target / ".install.lock", busy):
        found = leftovers(target)
        for path in found:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        yield [path for path in found if not os.path.lexists(path)]


def switch_current(target: Path, release: Path) -> None:
    """Point `target/current` at `release` with one rename (atomic on POSIX)."""
    link = target / f"{LINK_PREFIX}{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(release.relative_to(target))
    link.replace(target / "current")
    fsync_dir(target)


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
    """Check the bundle while unpacking it into staging, verify the release as written, then
    switch `current` to it."""
    releases = target / "releases"
    with _locked(target):
        releases.mkdir(parents=True, exist_ok=True)
        staging = releases / f"{STAGING_PREFIX}{os.getpid()}"
        replaced = releases / f"{STAGING_PREFIX}replaced-{os.getpid()}"
        staging.mkdir()
        try:
            checked = check_bundle(
                bundle, public_key=public_key, identity=identity, scratch=staging, out=staging
            )
            contents = checked.contents
            (staging / CONTENTS_NAME).write_bytes(checked.raw_contents)
            if contents.base_manifest_version is not None:
                base = releases / f"v{contents.base_manifest_version}"
                if not base.is_dir():
                    raise BundleError(
                        f"{bundle.name} is a delta over manifest_version "
                        f"{contents.base_manifest_version}, which is not installed in {target}: "
                        "install the full bundle of that version first"
                    )
                _take_from_base(base, staging, contents.from_base)
            problems = release_problems(staging, contents.manifest_version)
            if problems:
                raise BundleError(
                    "the unpacked release does not match its manifest: " + "; ".join(problems)
                )
            (staging / INFO_NAME).write_text(json.dumps({
                "bundle": bundle.name, "sha256": checked.sha256,
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
                final.rename(replaced)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(replaced, ignore_errors=True)
        switch_current(target, final)
    return next(r for r in list_releases(target) if r.version == contents.manifest_version)


def _info(release: Path) -> dict[str, Any]:
    """The release's `.bundle-info.json`, or nothing when it is missing or unreadable."""
    try:
        info = json.loads(read_limited(release / INFO_NAME, SIDECAR_LIMIT, "release info"))
    except (OfflineAsrError, ValueError, RecursionError):
        return {}
    return info if isinstance(info, dict) else {}


def list_releases(target: Path) -> list[Release]:
    """Installed releases, oldest first, marking the one `current` points to."""
    current = (target / "current").resolve() if (target / "current").is_symlink() else None
    found = []
    for path in (target / "releases").glob("v*"):
        match = RELEASE.fullmatch(path.name)
        if match is None or not path.is_dir():
            continue
        info = _info(path)
        found.append(Release(int(match[1]), path, path.resolve() == current,
                             info.get("bundle"), info.get("installed_at")))  # fmt: skip
    return sorted(found, key=lambda r: r.version)


def rollback(target: Path) -> Release:
    """Switch `current` to the release before it, once every artifact of it is verified."""
    with _locked(target):
        releases = list_releases(target)
        index = next((i for i, r in enumerate(releases) if r.current), None)
        if index is None:
            raise OfflineAsrError(f"{target} has no current release; install a bundle first")
        if index == 0:
            oldest = releases[0].version
            raise OfflineAsrError(f"v{oldest} is the oldest release; nothing to roll back to")
        previous = releases[index - 1]
        problems = release_problems(previous.path, previous.version)
        if problems:
            raise BundleError(
                f"cannot roll back to v{previous.version}: " + "; ".join(problems)
                + f". Nothing was switched (current stays v{releases[index].version}); install "
                "that release's bundle again to replace the damaged copy"
            )  # fmt: skip
        switch_current(target, previous.path)
    return next(r for r in list_releases(target) if r.current)


def prune(target: Path, keep: int) -> tuple[list[int], list[Path]]:
    """Delete all but the newest `keep` releases (never the current one), and the leftovers of
    killed installs; returns the versions and leftovers removed."""
    with _locked(target) as removed:
        releases = list_releases(target)
        doomed = [r for r in releases[: max(0, len(releases) - keep)] if not r.current]
        for release in doomed:
            shutil.rmtree(release.path)
    return [r.version for r in doomed], removed


def target_manifest(target: Path) -> Path:
    """`--target DIR` means DIR/current/models/manifest.json."""
    current = target / "current"
    manifest = current / MANIFEST_IN_BUNDLE
    if manifest.is_file():
        return manifest
    if not current.is_symlink():
        raise OfflineAsrError(f"{target} has no current release: install a bundle into it first")
    raise OfflineAsrError(
        f"{manifest} is missing: the current release of {target} is incomplete; run "
        "`offline-asr bundle rollback --target` or install its bundle again"
    )
