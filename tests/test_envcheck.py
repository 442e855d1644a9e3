"""The environment check on this venv and on crafted locks; the Dockerfile and its workflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # pyyaml ships no stubs; types-PyYAML is not locked
from rich.console import Console

from offline_asr.asr import pins
from offline_asr.delivery.envcheck import (
    CpuInfo,
    GpuInfo,
    LockedRequirement,
    PythonInfo,
    _cuda_version,
    _cudnn_version,
    check_environment,
    compare_packages,
    cpu_findings,
    cpu_info,
    gpu_findings,
    package_findings,
    parse_lock,
    python_findings,
)
from offline_asr.errors import OfflineAsrError
from support.helpers import REPO

DOCKERFILE = REPO / "docker" / "Dockerfile"
WORKFLOW = REPO / ".github" / "workflows" / "env-check.yml"


@pytest.fixture(autouse=True)
def _restore_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    """`check_environment` pins CT2_FORCE_CPU_ISA like an engine does; undo it after each test."""
    original = os.environ.get(pins.ISA_ENV)
    monkeypatch.setenv(pins.ISA_ENV, original or "")
    if original is None:
        monkeypatch.delenv(pins.ISA_ENV)


def _render(table: Any) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_this_venv_matches_the_lock(tmp_path: Path) -> None:
    report = check_environment(REPO / "requirements.lock", tmp_path)

    fails = [f for f in report.findings if f.level == "fail"]
    assert report.ok, fails
    assert report.packages.missing == [] and report.packages.other_version == []
    assert report.packages.matching == report.packages.locked > 40
    # Dev tools share the venv: listed, not failed.
    assert any(extra.startswith("pytest==") for extra in report.packages.extra)
    extra = next(f for f in report.findings if f.topic == "extra packages")
    assert extra.level == "ok" and "informational" in extra.detail
    assert report.libraries["ctranslate2"] == version("ctranslate2")
    assert report.libraries["onnxruntime"] == version("onnxruntime")
    assert report.libraries["av"] == version("av")
    assert "libavcodec" in report.libraries
    assert "int8" in report.compute_types["cpu"]
    assert "CPUExecutionProvider" in report.onnx_providers
    assert report.cpu.ct2_isa == os.environ[pins.ISA_ENV]
    assert report.disk_free_bytes is not None and report.disk_free_bytes > 0
    cuda = next(f for f in report.findings if f.topic == "cuda")
    if report.gpu.cuda_devices == 0:
        assert "CPU only" in cuda.detail
    json.dumps(report.to_dict())
    assert "Environment check: OK" in _render(report.render_table())


def test_wrong_version_and_missing_package_fail_with_a_fix(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# a crafted lock\n"
        "rich==0.0.1 \\\n"
        "    --hash=sha256:0000000000000000000000000000000000000000000000000000000000000000\n"
        "    # via typer\n"
        "not-a-real-package==1.0 \\\n"
        "    --hash=sha256:1111111111111111111111111111111111111111111111111111111111111111\n"
        f"packaging=={version('packaging')}\n"
        "colorama==0.4.6 ; sys_platform == 'win32'\n"
    )

    report = check_environment(lock, None)

    assert not report.ok
    assert report.packages.missing == ["not-a-real-package==1.0"]
    assert report.packages.other_version == [f"rich: installed {version('rich')}, locked 0.0.1"]
    assert report.packages.locked == 3  # colorama is for Windows only
    fails = [f for f in report.findings if f.level == "fail"]
    assert {f.topic for f in fails} == {"packages"}
    for finding in fails:
        assert "--require-hashes -r requirements.lock" in finding.fix
        assert "--no-index" in finding.fix
    assert report.disk_free_bytes is None
    text = _render(report.render_table())
    assert "FAILED" in text and "not-a-real-package==1.0" in text and "--require-hashes" in text


def test_python_outside_requires_python_or_not_cpython_fails() -> None:
    info = PythonInfo("3.10.14", "CPython", "/usr/bin/python3.10", ">=3.11", ">=3.11")
    [finding] = python_findings(info)
    assert finding.level == "fail"
    assert "3.10.14 is outside requires-python >=3.11" in finding.detail
    assert "python3.11 -m venv" in finding.fix

    pypy = PythonInfo("3.11.9", "PyPy", "/usr/bin/pypy3", ">=3.11", None)
    [finding] = python_findings(pypy)
    assert finding.level == "fail" and "not CPython" in finding.detail

    fine = PythonInfo("3.11.7", "CPython", "/usr/bin/python3.11", ">=3.11", ">=3.11")
    assert [f.level for f in python_findings(fine)] == ["ok"]


def test_a_lock_only_for_other_pythons_fails_but_other_platforms_are_skipped() -> None:
    requirements = [
        LockedRequirement("numpy", "9.9.9", "python_full_version >= '3.19'"),
        LockedRequirement("httpx2-jsfetch", "1.0", "sys_platform == 'emscripten'"),
    ]
    check = compare_packages(requirements, {"numpy": "2.4.6"})
    assert check.uncovered == ["numpy"] and check.locked == 0
    findings = package_findings(check)
    assert any(f.level == "fail" and "numpy" in f.detail and f.fix for f in findings)


def test_parse_lock_reads_pins_markers_and_normalises_names() -> None:
    text = (
        "# header\n"
        "Typing_Extensions==4.16.0 \\\n    --hash=sha256:ab\n"
        "av==18.1.0 ; python_full_version < '3.12' \\\n    --hash=sha256:cd\n"
        "onnx-asr[cpu]==0.12.0\n"
        "    # via offline-asr\n"
        "-e .\n"
    )
    assert parse_lock(text) == [
        LockedRequirement("typing-extensions", "4.16.0"),
        LockedRequirement("av", "18.1.0", "python_full_version < '3.12'"),
        LockedRequirement("onnx-asr", "0.12.0"),
    ]


def test_missing_lock_says_to_pass_one(tmp_path: Path) -> None:
    with pytest.raises(OfflineAsrError, match="--lock"):
        check_environment(tmp_path / "nope.lock", None)


def test_a_forced_isa_the_cpu_lacks_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pins, "cpu_flags", lambda: {"sse4_1", "avx"})
    flags = {"sse4_1": True, "avx": True, "avx2": False, "fma": False, "avx512f": False}
    forced = CpuInfo(flags, "AVX2", "environment", pinned_before_import=True)
    [finding] = cpu_findings(forced)
    assert finding.level == "fail" and "no avx2" in finding.detail
    assert finding.fix == f"unset {pins.ISA_ENV} or set it to AVX"

    # Unset, the pin follows the CPU: what the engines would use. (`cpu_info` pins without
    # importing ctranslate2, so this process's CTranslate2 keeps its real ISA.)
    monkeypatch.delenv(pins.ISA_ENV, raising=False)
    info = cpu_info()
    assert info.ct2_isa == "AVX" and info.isa_from == "cpu flags"
    assert not info.flags["avx2"]
    assert next(f.level for f in cpu_findings(info) if f.topic == "cpu isa") == "ok"


def test_an_unpinned_import_is_a_warning() -> None:
    flags = dict.fromkeys(("sse4_1", "avx", "avx2", "fma"), True) | {"avx512f": False}
    findings = cpu_findings(CpuInfo(flags, "AVX2", "cpu flags", pinned_before_import=False))
    assert [f.level for f in findings] == ["ok", "warn"]
    assert "in its own process" in findings[1].fix


def test_a_gpu_without_cudnn_9_is_a_warning_with_a_fix() -> None:
    [finding] = gpu_findings(GpuInfo(1, "12.4 (libcuda.so.1)", "12.4 (libcudart.so.12)", None))
    assert finding.level == "warn" and "cuDNN: not present" in finding.detail
    assert "cuDNN 9" in finding.fix and "--device cpu" in finding.fix
    [finding] = gpu_findings(GpuInfo(0, None, None, None))
    assert finding.level == "ok" and "CPU only" in finding.detail
    assert _cudnn_version(90100) == "9.1.0" and _cudnn_version(8907) == "8.9.7"
    assert _cuda_version(12040) == "12.4"


def test_check_env_script_runs_the_env_check_command() -> None:
    from offline_asr.cli import app

    groups = {group.name for group in app.registered_groups}
    if "env" not in groups:
        pytest.skip("`offline-asr env` is not wired into cli.py yet")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_env.py"), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--json" in proc.stdout and "--lock" in proc.stdout


# The image and its workflow (neither Docker nor GitHub runs here: lint and structure only).


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    proc = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = []
    current = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            if current.strip():
                joined.append(current.strip())
            current = ""
    return [(item.split(None, 1)[0].upper(), item.split(None, 1)[1]) for item in joined]


def test_dockerfile_installs_from_the_lock_and_mounts_models() -> None:
    instructions = _instructions(DOCKERFILE.read_text())
    froms = [args for name, args in instructions if name == "FROM"]
    assert froms and all(
        a.startswith("nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04") for a in froms
    )
    runs = " ".join(args for name, args in instructions if name == "RUN")
    assert "--require-hashes" in runs and "-r requirements.lock" in runs
    assert "python install 3.11" in runs
    copies = [args for name, args in instructions if name == "COPY"]
    # The lock is copied (and installed) before the sources: a code change keeps that layer.
    lock_copy = next(i for i, args in enumerate(copies) if args.startswith("requirements.lock"))
    assert lock_copy < next(i for i, args in enumerate(copies) if args.startswith("src"))
    assert not any("models" in args for args in copies), "models must be mounted, not baked in"
    env = " ".join(args for name, args in instructions if name == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "MODEL_REGISTRY_PATH=/models/manifest.json" in env
    users = [args for name, args in instructions if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert ("VOLUME", '["/models"]') in instructions
    assert ("EXPOSE", "8000") in instructions
    [health] = [args for name, args in instructions if name == "HEALTHCHECK"]
    assert "/health" in health
    [entrypoint] = [args for name, args in instructions if name == "ENTRYPOINT"]
    assert json.loads(entrypoint) == [
        "offline-asr", "serve", "--host", "0.0.0.0", "--manifest", "/models/manifest.json"
    ]  # fmt: skip


def test_workflow_builds_the_image_checks_it_and_records_the_digest() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    job = workflow["jobs"]["env-check"]
    steps = job["steps"]
    uses = [step.get("uses", "") for step in steps]
    assert any(u.startswith("docker/setup-buildx-action@") for u in uses)
    [build] = [s for s in steps if s.get("uses", "").startswith("docker/build-push-action@")]
    assert build["with"]["file"] == "docker/Dockerfile"
    assert build["with"]["load"] is True
    scripts = "\n".join(step.get("run", "") for step in steps)
    assert "env check --json" in scripts and "--network none" in scripts
    assert "models/image-digest.txt" in scripts
    [upload] = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert "models/image-digest.txt" in upload["with"]["path"]
