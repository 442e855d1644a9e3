"""Every change of `models/manifest.json` bumps `manifest_version` and is logged in CHANGELOG.md.

The store does both on every write (`ModelStore.save`); this check catches hand edits and
half-committed changes. It compares the working tree's manifest with the one in the previous
commit, `HEAD~1` (override with OFFLINE_ASR_MANIFEST_BASE, e.g. `origin/main`): on a fresh CI
clone that is the change under test, and for a pull request's merge commit `HEAD~1` is the tip
of the target branch, so the whole pull request is compared. A clone without that commit
(`actions/checkout` fetches depth 1 unless told `fetch-depth: 2`) or without git is skipped with
the reason, never passed silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from offline_asr.constants import CHANGELOG_NAME, DEFAULT_MANIFEST

BASE_ENV = "OFFLINE_ASR_MANIFEST_BASE"
DEFAULT_BASE = "HEAD~1"

# The headings `ModelStore` writes: `## Models: manifest_version 6 (2026-11-26)`.
_ENTRY = re.compile(r"^#{2,}\s.*\bmanifest_version\s+(\d+)\b", re.MULTILINE)


def changelog_versions(changelog: str) -> set[int]:
    """The manifest versions that have a CHANGELOG heading."""
    return {int(match) for match in _ENTRY.findall(changelog)}


def _version_of(data: object) -> int | None:
    if isinstance(data, dict):
        version = data.get("manifest_version")
        if isinstance(version, int) and not isinstance(version, bool):
            return version
    return None


def check_manifest_change(old: str | None, new: str, changelog: str) -> list[str]:
    """Problems with a manifest change from `old` (None: no manifest before) to `new`.

    Unchanged content (whitespace and key order aside) is fine. A change needs a higher
    `manifest_version` and a CHANGELOG heading for each version it moved through, as the store
    writes one per bump.
    """
    try:
        new_data = json.loads(new)
    except ValueError as error:
        return [f"models/manifest.json is not valid JSON ({error}); restore it from git"]
    new_version = _version_of(new_data)
    if new_version is None:
        return ["models/manifest.json has no integer manifest_version; restore it from git"]
    old_data: object = None
    if old is not None:
        try:
            old_data = json.loads(old)
        except ValueError:
            old_data = None  # a broken manifest before: any valid one now is a change
        if old_data == new_data:
            return []
    old_version = _version_of(old_data) or 0
    how = (
        "change models with `offline-asr models prepare/sync/remove`, which bump it and write "
        "the CHANGELOG entry, or"
    )
    if old is None:
        needed = [new_version] if new_version > 0 else []
    elif new_version <= old_version:
        return [
            f"models/manifest.json changed since the previous commit but manifest_version went "
            f"from {old_version} to {new_version}: {how} set manifest_version to "
            f"{old_version + 1} and add a `## Models: manifest_version {old_version + 1} "
            f"(YYYY-MM-DD)` entry to {CHANGELOG_NAME} saying what changed"
        ]
    else:
        needed = list(range(old_version + 1, new_version + 1))
    logged = changelog_versions(changelog)
    missing = [version for version in needed if version not in logged]
    if not missing:
        return []
    listed = ", ".join(f"`## Models: manifest_version {v} (YYYY-MM-DD)`" for v in missing)
    return [
        f"manifest_version went from {old_version if old is not None else 'none'} to "
        f"{new_version} but {CHANGELOG_NAME} has no entry for {', '.join(map(str, missing))}: "
        f"add {listed} with the models added, updated or removed and their sha256"
    ]


@dataclass(frozen=True)
class HistoryCheck:
    """The problems found, or why nothing could be compared (`skipped`)."""

    problems: list[str]
    skipped: str | None = None
    base: str | None = None  # the commit compared against

    @property
    def ok(self) -> bool:
        return not self.problems


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False, timeout=60
    )


def check_manifest_history(
    repo: Path, manifest: Path = DEFAULT_MANIFEST, *, base: str | None = None
) -> HistoryCheck:
    """`check_manifest_change` of the working tree's manifest against the one at `base`
    (default: OFFLINE_ASR_MANIFEST_BASE, else HEAD~1), with the working tree's CHANGELOG."""
    base = base or os.environ.get(BASE_ENV) or DEFAULT_BASE
    if shutil.which("git") is None:
        return HistoryCheck([], skipped="git is not installed")
    top = _git(repo, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        return HistoryCheck([], skipped=f"{repo} is not a git checkout: {top.stderr.strip()}")
    commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}")
    if commit.returncode != 0:
        shallow = _git(repo, "rev-parse", "--is-shallow-repository").stdout.strip() == "true"
        why = (
            "the clone is shallow: fetch at least 2 commits (actions/checkout `fetch-depth: 2`)"
            if shallow
            else "it is the first commit, or the revision is unknown"
        )
        return HistoryCheck([], skipped=f"no commit {base} to compare with: {why}")
    sha = commit.stdout.strip()
    path = (repo / manifest).resolve()
    relative = path.relative_to(Path(top.stdout.strip()).resolve()).as_posix()
    listed = _git(repo, "ls-tree", "--name-only", sha, "--", relative)
    old: str | None = None
    if listed.stdout.strip():
        shown = _git(repo, "show", f"{sha}:{relative}")
        if shown.returncode != 0:
            return HistoryCheck([], skipped=f"git show {sha}:{relative} failed: {shown.stderr}")
        old = shown.stdout
    if not path.is_file():
        if old is None:
            return HistoryCheck([], skipped=f"no {relative} now nor at {base}", base=sha)
        return HistoryCheck(
            [f"{relative} was deleted since {base}; restore it with `git checkout {relative}`"],
            base=sha,
        )
    changelog_path = Path(top.stdout.strip()) / CHANGELOG_NAME
    changelog = changelog_path.read_text(encoding="utf-8") if changelog_path.is_file() else ""
    problems = check_manifest_change(old, path.read_text(encoding="utf-8"), changelog)
    return HistoryCheck(problems, base=sha)
