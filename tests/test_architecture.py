"""The layers contract (pyproject.toml, `[tool.importlinter]`): stages import downward only,
and the check catches a module that imports from a stage above it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from support.helpers import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` with the project's contract over the package found in `src`."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=REPO, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip


def test_stages_import_downward_only() -> None:
    result = _lint_imports(REPO / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout, result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """The registry importing the service (a stage above it) is caught, naming both."""
    shutil.copytree(REPO / "src" / "offline_asr", tmp_path / "offline_asr",
                    ignore=shutil.ignore_patterns("__pycache__", "data", "static"))  # fmt: skip
    store = tmp_path / "offline_asr" / "registry" / "store.py"
    store.write_text(store.read_text() + "\nfrom offline_asr.service import pool  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "offline_asr.registry is not allowed to import offline_asr.service" in result.stdout
    assert "offline_asr.registry.store -> offline_asr.service.pool" in result.stdout
