"""The project's own contracts: locks agree with pyproject, the plan's commands still work."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from support.helpers import REPO


def _uv() -> str:
    found = shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")
    if not Path(found).exists():
        pytest.fail("uv is missing: run `make setup`, which bootstraps it")
    return found


def test_uv_lock_agrees_with_pyproject() -> None:
    proc = subprocess.run(
        [_uv(), "lock", "--check", "--python", sys.executable],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"uv.lock is stale, run `make lock`:\n{proc.stderr}"


def _uncommented(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


@pytest.mark.parametrize(
    ("lock", "extras"), [("requirements.lock", []), ("requirements-ray.lock", ["--extra", "ray"])]
)
def test_requirements_locks_are_the_exports_of_uv_lock(lock: str, extras: list[str]) -> None:
    command = [_uv(), "export", "--frozen", "--no-dev", "--no-emit-project", *extras]
    exported = subprocess.run(
        [*command, "--format", "requirements-txt"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    committed = (REPO / lock).read_text()
    assert _uncommented(exported) == _uncommented(committed), "stale: run `make lock`"
    assert "--hash=sha256:" in committed
    # Ray is optional: only the cluster nodes' lock carries it.
    assert ("\nray==" in committed) == bool(extras)


def test_requirements_txt_lists_the_runtime_dependencies() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = [
        line.strip()
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert listed == pyproject["project"]["dependencies"]
    assert "do not edit" in (REPO / "requirements.txt").read_text().lower()


def test_prepare_models_script_keeps_the_plans_command(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "prepare_models.py"), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--engine", "--variant", "--from-package", "--hf-repo", "--from-url"):
        assert option in proc.stdout
