"""The environment pack: deterministic archive, and a venv installed from it without an index."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from offline_asr import __version__
from offline_asr.delivery.envpack import (
    download_wheels,
    find_pip,
    install_text,
    pack_environment,
    write_deterministic_tar,
)
from offline_asr.errors import OfflineAsrError
from support.helpers import REPO

LOCK = REPO / "requirements.lock"
# Extras a fresh `python -m venv` brings along; anything else in the packed venv is a leak.
VENV_TOOLS = {"pip", "setuptools", "wheel"}


def _folder(root: Path, mtime: int) -> Path:
    folder = root / "python311_cpu"
    (folder / "wheelhouse").mkdir(parents=True)
    (folder / "wheelhouse" / "b-1.0-py3-none-any.whl").write_bytes(b"wheel b")
    (folder / "wheelhouse" / "a-1.0-py3-none-any.whl").write_bytes(b"wheel a")
    (folder / "requirements.lock").write_text("a==1.0\nb==1.0\n")
    (folder / "INSTALL.txt").write_text("install\n")
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (mtime, mtime))
    (folder / "INSTALL.txt").chmod(0o600)
    return folder


def test_archive_bytes_depend_only_on_names_and_contents(tmp_path: Path) -> None:
    first, second = tmp_path / "1.tar.gz", tmp_path / "2.tar.gz"
    write_deterministic_tar(_folder(tmp_path / "x", 1_000_000_000), first)
    write_deterministic_tar(_folder(tmp_path / "y", 1_700_000_000), second)

    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "python311_cpu",
        "python311_cpu/INSTALL.txt",
        "python311_cpu/requirements.lock",
        "python311_cpu/wheelhouse",
        "python311_cpu/wheelhouse/a-1.0-py3-none-any.whl",
        "python311_cpu/wheelhouse/b-1.0-py3-none-any.whl",
    ]
    for member in members:
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert member.mtime == 0
        assert member.mode == (0o755 if member.isdir() else 0o644)
    assert gzip.decompress(first.read_bytes())  # a plain gzip stream


def test_pip_is_found_for_this_python(tmp_path: Path) -> None:
    pip = find_pip(tmp_path / "bootstrap")
    proc = subprocess.run([*pip, "--version"], capture_output=True, text=True, check=True)
    assert f"(python {sys.version_info.major}.{sys.version_info.minor})" in proc.stdout


def _lock_block(name: str) -> str:
    """The lines of one requirement (pin and hashes) from the committed lock."""
    lines = LOCK.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}=="))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
    return "\n".join(lines[start:end]) + "\n"


def test_download_wheels_fills_a_wheelhouse_for_the_bundle(tmp_path: Path) -> None:
    """`offline-asr bundle build --with-wheels` calls this with a lock and a folder."""
    lock = tmp_path / "requirements.lock"
    lock.write_text(_lock_block("packaging") + "colorama==0.4.6 ; sys_platform == 'win32'\n")
    wheelhouse = download_wheels(lock, tmp_path / "wheels")
    assert wheelhouse == tmp_path / "wheels"
    assert [p.name for p in wheelhouse.iterdir()] == ["packaging-26.4-py3-none-any.whl"]

    # Every pinned hash wrong: pip refuses the download, and says so.
    lock.write_text(re.sub(r"sha256:[0-9a-f]{64}", "sha256:" + "0" * 64, _lock_block("packaging")))
    with pytest.raises(OfflineAsrError, match="another sha256 than the lock pins"):
        download_wheels(lock, tmp_path / "other")


def test_unknown_platform_tag_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OfflineAsrError, match="cpu or cuda12"):
        pack_environment(LOCK, tmp_path, platform_tag="rocm")
    assert list(tmp_path.iterdir()) == []


def test_install_text_has_the_offline_commands() -> None:
    text = install_text("python311_cuda12", "cuda12", "offline_asr-0.1.0-py3-none-any.whl")
    assert "sha256sum -c python311_cuda12.tar.gz.sha256" in text
    assert "--no-index --find-links wheelhouse --require-hashes" in text
    assert "-r requirements.lock" in text
    assert "wheelhouse/offline_asr-0.1.0-py3-none-any.whl" in text
    assert "cuDNN 9" in text


def _network_blocker() -> list[str]:
    """`unshare -n` (a network namespace with only loopback) where allowed, else nothing:
    --no-index plus a dead index URL already keep pip off the network."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    probe = subprocess.run([unshare, "-n", "true"], capture_output=True, check=False)
    return [unshare, "-n"] if probe.returncode == 0 else []


def _offline_env() -> dict[str, str]:
    """No pip configuration from this machine (its find-links and extra indexes), no index."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_INDEX_URL="http://127.0.0.1:9/",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return env


@pytest.mark.slow
def test_packed_environment_installs_without_an_index(tmp_path: Path) -> None:
    result = pack_environment(LOCK, tmp_path / "envs", platform_tag="cpu")

    python_tag = f"python{sys.version_info.major}{sys.version_info.minor}"
    assert result.archive == tmp_path / "envs" / f"{python_tag}_cpu.tar.gz"
    digest = hashlib.sha256(result.archive.read_bytes()).hexdigest()
    assert result.sha256 == digest
    assert result.checksum_file.read_text() == f"{digest}  {result.archive.name}\n"
    if shutil.which("sha256sum"):
        subprocess.run(
            ["sha256sum", "--check", "--strict", result.checksum_file.name],
            cwd=result.archive.parent,
            check=True,
            capture_output=True,
        )
    project_wheel = f"offline_asr-{__version__}-py3-none-any.whl"
    assert project_wheel in result.wheels

    with tarfile.open(result.archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    root = tmp_path / "unpacked" / f"{python_tag}_cpu"
    assert (root / "INSTALL.txt").is_file()
    assert (root / "requirements.lock").read_bytes() == LOCK.read_bytes()

    # A new venv of the same Python (the wheels are cp311), then only the wheelhouse.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    offline = [*_network_blocker()]
    env = _offline_env()
    pip = [
        *offline,
        str(venv / "bin" / "pip"),
        "install",
        "--no-index",
        "--find-links",
        "wheelhouse",
    ]

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(command), cwd=root, env=env, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"{command}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    run(*pip, "--require-hashes", "-r", "requirements.lock")
    run(*pip, f"wheelhouse/{project_wheel}")
    version = run(*offline, str(venv / "bin" / "offline-asr"), "--version")
    assert version.stdout.strip() == f"offline-asr {__version__}"

    # The installed venv is exactly the lock: nothing missing, nothing else but venv tooling.
    script = (
        "import json, pathlib;"
        "from offline_asr.delivery.envcheck import check_environment;"
        "r = check_environment(pathlib.Path('requirements.lock'), None);"
        "print(json.dumps({'ok': r.ok, 'extra': r.packages.extra}))"
    )
    checked = json.loads(run(*offline, str(venv / "bin" / "python"), "-c", script).stdout)
    assert checked["ok"] is True
    assert {extra.split("==")[0] for extra in checked["extra"]} <= VENV_TOOLS
