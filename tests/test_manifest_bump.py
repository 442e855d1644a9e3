"""A change of models/manifest.json needs a manifest_version bump and a CHANGELOG entry."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from offline_asr.registry.manifest_history import (
    changelog_versions,
    check_manifest_change,
    check_manifest_history,
)
from support.helpers import REPO

MANIFEST = {
    "schema_version": 1,
    "manifest_version": 6,
    "updated_at": "2026-11-26T05:39:32Z",
    "models": [{"id": "whisper-tiny.en", "artifacts": [{"path": "a", "sha256": "1" * 64}]}],
}
CHANGELOG_6 = """# Changelog

## Models: manifest_version 6 (2026-11-26)

- added `whisper-tiny.en`
"""
CHANGELOG = CHANGELOG_6.replace(
    "## Models: manifest_version 6",
    "## Models: manifest_version 7 (2026-11-27)\n\n- updated `whisper-tiny.en`\n\n"
    "## Models: manifest_version 6",
)


def _json(**changes: object) -> str:
    return json.dumps({**MANIFEST, **changes}, indent=2)


def _changed(version: int) -> str:
    model = {"id": "whisper-tiny.en", "artifacts": [{"path": "a", "sha256": "2" * 64}]}
    return _json(manifest_version=version, models=[model])


def test_unchanged_manifest_is_fine_even_reformatted() -> None:
    assert check_manifest_change(_json(), _json(), "") == []
    assert check_manifest_change(_json(), json.dumps(MANIFEST, separators=(",", ":")), "") == []


def test_change_without_bump_is_a_problem() -> None:
    [problem] = check_manifest_change(_json(), _changed(6), CHANGELOG)
    assert "manifest_version went from 6 to 6" in problem
    assert "set manifest_version to 7" in problem and "CHANGELOG.md" in problem


def test_lower_version_is_a_problem() -> None:
    [problem] = check_manifest_change(_json(), _changed(5), CHANGELOG)
    assert "from 6 to 5" in problem


def test_bump_without_changelog_entry_is_a_problem() -> None:
    [problem] = check_manifest_change(_json(), _changed(7), CHANGELOG_6)
    assert "no entry for 7:" in problem
    assert "## Models: manifest_version 7 (YYYY-MM-DD)" in problem


def test_bump_with_changelog_entry_is_fine() -> None:
    assert check_manifest_change(_json(), _changed(7), CHANGELOG) == []


def test_every_skipped_version_needs_its_entry() -> None:
    [problem] = check_manifest_change(_json(), _changed(8), CHANGELOG)
    assert "no entry for 8:" in problem
    [problem] = check_manifest_change(_json(), _changed(8), CHANGELOG_6)
    assert "no entry for 7, 8:" in problem


def test_a_mention_in_prose_is_not_an_entry() -> None:
    prose = "# Changelog\n\nSee manifest_version 7 for details.\n"
    assert check_manifest_change(_json(), _changed(7), prose) != []
    assert changelog_versions(CHANGELOG) == {6, 7}


def test_new_manifest_needs_an_entry_for_its_version() -> None:
    assert check_manifest_change(None, _json(), CHANGELOG) == []
    [problem] = check_manifest_change(None, _json(manifest_version=9), CHANGELOG)
    assert "no entry for 9" in problem
    assert check_manifest_change(None, _json(manifest_version=0, models=[]), "") == []


def test_broken_manifest_is_a_problem() -> None:
    [problem] = check_manifest_change(_json(), "{not json", CHANGELOG)
    assert "not valid JSON" in problem
    [problem] = check_manifest_change(_json(), json.dumps({"models": []}), CHANGELOG)
    assert "manifest_version" in problem


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_history_wrapper_on_a_scratch_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    _git(repo, "init", "-q")
    manifest = repo / "models" / "manifest.json"
    manifest.write_text(_json())
    (repo / "CHANGELOG.md").write_text(CHANGELOG_6)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first")

    first = check_manifest_history(repo, base="HEAD~1")
    assert first.skipped is not None and "first commit" in first.skipped

    (repo / "README").write_text("x\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "second")
    assert check_manifest_history(repo, base="HEAD~1").problems == []

    manifest.write_text(_changed(6))  # a hand edit in the working tree
    edited = check_manifest_history(repo, base="HEAD~1")
    assert edited.skipped is None and not edited.ok
    assert "went from 6 to 6" in edited.problems[0]

    manifest.write_text(_changed(7))
    (repo / "CHANGELOG.md").write_text(CHANGELOG)
    assert check_manifest_history(repo, base="HEAD~1").ok


def test_committed_manifest_was_bumped_and_logged() -> None:
    """The real check on this checkout: the working tree against HEAD~1 (or against
    OFFLINE_ASR_MANIFEST_BASE); skipped with the reason on a shallow clone or without git."""
    result = check_manifest_history(REPO)
    if result.skipped is not None:
        pytest.skip(result.skipped)
    assert result.problems == [], "\n".join(result.problems)
