"""A tarball that installs offline-asr's locked runtime on a machine without network.

`envs/python311_cpu.tar.gz` holds `wheelhouse/` (one wheel per line of requirements.lock that
applies here, checked against the lock's sha256 by pip, plus the project's own wheel),
`requirements.lock` and `INSTALL.txt`; a `.sha256` file in sha256sum format sits beside it.
The archive is deterministic (sorted entries, fixed owner, mode and mtime, gzip mtime 0), so
packing the same lock twice gives the same bytes and the same checksum.

Wheels are downloaded with `pip download` run by a CPython of this interpreter's version: pip
evaluates the lock's environment markers (`python_full_version < '3.12'`, ...) with the
interpreter that runs it, even when given `--python-version`, so a pip of another version would
fetch the wrong wheels. The uv venvs of this project have no pip, hence the search in
`find_pip`.
"""

from __future__ import annotations

import collections
import gzip
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from offline_asr.delivery.envcheck import LockedRequirement, read_lock
from offline_asr.errors import OfflineAsrError
from offline_asr.fsutil import sha256_file, write_atomic
from offline_asr.progress import progress_bar

Flavour = Literal["cpu", "cuda12"]
FLAVOURS: tuple[Flavour, ...] = ("cpu", "cuda12")
PROJECT_WHEEL_GLOB = "offline_asr-*.whl"
# Fixed metadata of every archive entry: same inputs, same bytes.
ARCHIVE_MTIME = 0
_PIP_TAIL_LINES = 25


@dataclass(frozen=True)
class PackResult:
    archive: Path
    checksum_file: Path
    sha256: str
    size: int
    flavour: Flavour
    python_tag: str  # e.g. python311
    wheels: list[str]  # file names in wheelhouse/, sorted
    pip: str  # the interpreter whose pip downloaded the wheels

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.update(archive=str(self.archive), checksum_file=str(self.checksum_file))
        return data


def pack_environment(lock: Path, out_dir: Path, *, platform_tag: str | None = None) -> PackResult:
    """Write `out_dir/python{XY}_{cpu|cuda12}.tar.gz` and its `.sha256` for this interpreter.

    `platform_tag` is `cpu` or `cuda12`; by default `cuda12` when CTranslate2 sees a CUDA
    device, else `cpu`. The wheels are the same for both (the PyPI wheels of CTranslate2 carry
    their CUDA 12 code; the CUDA and cuDNN libraries come from the machine); the tag names the
    target and INSTALL.txt says what it needs. The project's wheel is built from the checkout
    that holds `lock` (its `pyproject.toml`).
    """
    requirements = read_lock(lock)
    applicable = [r for r in requirements if r.applies()]
    project = lock.resolve().parent
    if not (project / "pyproject.toml").is_file():
        raise OfflineAsrError(
            f"no pyproject.toml beside {lock}: pack from a checkout of offline-asr, whose "
            "requirements.lock sits next to pyproject.toml"
        )
    flavour = _flavour(platform_tag)
    python_tag = f"python{sys.version_info.major}{sys.version_info.minor}"
    name = f"{python_tag}_{flavour}"
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"{name}.tar.gz"
    with tempfile.TemporaryDirectory(prefix=".envpack-", dir=out_dir) as tmp:
        work = Path(tmp)
        pip = find_pip(work / "pip-venv")
        stage = work / name
        wheelhouse = stage / "wheelhouse"
        wheelhouse.mkdir(parents=True)
        _pip_download(pip, lock, wheelhouse, expected=len(applicable))
        _check_wheelhouse(wheelhouse, applicable)
        project_wheel = build_project_wheel(project, wheelhouse, pip)
        wheels = sorted(path.name for path in wheelhouse.glob("*.whl"))
        shutil.copyfile(lock, stage / "requirements.lock")
        (stage / "INSTALL.txt").write_text(
            install_text(name, flavour, project_wheel.name), encoding="utf-8"
        )
        partial = work / archive.name
        write_deterministic_tar(stage, partial)
        digest = sha256_file(partial).sha256
        # Never an archive beside the checksum of an earlier one, even if interrupted here.
        checksum_file = archive.with_name(archive.name + ".sha256")
        checksum_file.unlink(missing_ok=True)
        partial.replace(archive)
        write_atomic(checksum_file, f"{digest}  {archive.name}\n")
    return PackResult(
        archive=archive,
        checksum_file=checksum_file,
        sha256=digest,
        size=archive.stat().st_size,
        flavour=flavour,
        python_tag=python_tag,
        wheels=wheels,
        pip=pip[0],
    )


def _flavour(platform_tag: str | None) -> Flavour:
    if platform_tag is None:
        try:
            import ctranslate2

            return "cuda12" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        except (ImportError, OSError, RuntimeError):
            return "cpu"
    for flavour in FLAVOURS:
        if platform_tag == flavour:
            return flavour
    raise OfflineAsrError(
        f"unknown platform tag {platform_tag!r}: use {' or '.join(FLAVOURS)} (default: cuda12 "
        "when a CUDA device is visible, else cpu)"
    )


# pip


def _pip_version_ok(python: str) -> bool:
    """`python` runs, has pip, and is this interpreter's major.minor."""
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        proc = subprocess.run(
            [python, "-c", "import sys, pip; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError:
        return False
    return proc.returncode == 0 and proc.stdout.strip() == want


def find_pip(bootstrap_dir: Path) -> list[str]:
    """`[python, -m, pip]` for a CPython of this version: this interpreter, the one its venv was
    made from, `pythonX.Y` on PATH, or else a throw-away venv made with `ensurepip` (offline)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = getattr(sys, "_base_executable", None)
    candidates = [
        sys.executable,
        base if isinstance(base, str) else None,
        str(Path(sys.base_prefix) / "bin" / f"python{version}"),
        shutil.which(f"python{version}"),
    ]
    seen: set[str] = set()
    for candidate in candidates:
        if not candidate or candidate in seen or not Path(candidate).exists():
            continue
        seen.add(candidate)
        if _pip_version_ok(candidate):
            return [candidate, "-m", "pip"]
    python = bootstrap_dir / "bin" / "python"
    proc = subprocess.run(
        [sys.executable, "-m", "venv", str(bootstrap_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0 and _pip_version_ok(str(python)):
        return [str(python), "-m", "pip"]
    raise OfflineAsrError(
        f"no pip for Python {version}: this venv has none, and neither does its base "
        f"interpreter ({sys.base_prefix}) nor python{version} on PATH; `python -m venv` failed "
        f"too ({proc.stderr.strip() or 'no ensurepip'}). Install pip for Python {version} "
        f"(e.g. apt-get install python{version}-venv, or python{version} -m ensurepip) and "
        "run again"
    )


def download_wheels(lock: Path, wheelhouse: Path) -> Path:
    """Download the wheel of every lock line that applies to this interpreter into `wheelhouse`
    (hash-checked against the lock, binary only) and return the folder."""
    applicable = [r for r in read_lock(lock) if r.applies()]
    wheelhouse.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="offline-asr-pip-") as tmp:
        pip = find_pip(Path(tmp) / "pip-venv")
        _pip_download(pip, lock, wheelhouse, expected=len(applicable))
    _check_wheelhouse(wheelhouse, applicable)
    return wheelhouse


def _pip_download(pip: list[str], lock: Path, wheelhouse: Path, *, expected: int) -> None:
    """`pip download` every locked wheel, hash-checked, binary only; a bar counts them."""
    command = [
        *pip,
        "download",
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        "--progress-bar",
        "off",
        "-r",
        str(lock),
        "-d",
        str(wheelhouse),
    ]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1"}
    tail: collections.deque[str] = collections.deque(maxlen=_PIP_TAIL_LINES)
    with progress_bar(
        TextColumn("downloading wheels"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as progress:
        task = progress.add_task("wheels", total=expected)
        with subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line.rstrip())
                if line.startswith(("Saved ", "File was already downloaded")):
                    progress.advance(task)
        returncode = proc.wait()
    if returncode != 0:
        output = "\n".join(tail)
        if "DO NOT MATCH THE HASHES" in output:
            hint = (
                "a downloaded file has another sha256 than the lock pins: the index or mirror "
                "(PIP_INDEX_URL, pip.conf) serves other files, or the lock is stale (`make lock`)"
            )
        elif "No matching distribution" in output or "Could not find a version" in output:
            hint = (
                "a locked version has no wheel for this platform and Python, or the index is "
                "unreachable; check PIP_INDEX_URL and the network, or pack on a machine like "
                "the target"
            )
        else:
            hint = (
                "check the connection to the package index (or PIP_INDEX_URL) and run again; "
                "pip's cache keeps what was already downloaded"
            )
        raise OfflineAsrError(
            f"pip download failed (exit {returncode}): {hint}. Last lines of pip:\n{output}"
        )


def _check_wheelhouse(wheelhouse: Path, applicable: list[LockedRequirement]) -> None:
    """Every lock line that applies here has its wheel (pip's exit code alone is not proof)."""
    found: set[tuple[str, str]] = set()
    for path in wheelhouse.glob("*.whl"):
        try:
            name, version, _, _ = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        found.add((canonicalize_name(name), str(version)))
    missing = [str(r) for r in applicable if (r.name, r.version) not in found]
    if missing:
        raise OfflineAsrError(
            f"the wheelhouse lacks wheels for {', '.join(missing)}; pip reported success, so "
            "the versions it saved differ from the lock: run `make lock` and pack again"
        )


def build_project_wheel(project: Path, wheelhouse: Path, pip: list[str]) -> Path:
    """Build offline-asr's wheel into `wheelhouse`: `uv build` (offline first: the build backend
    is usually cached), else `pip wheel`."""
    uv = shutil.which("uv") or str(project / ".tools" / "bin" / "uv")
    attempts: list[list[str]] = []
    if Path(uv).exists():
        build = [uv, "build", "--wheel", "--python", sys.executable, "--out-dir"]
        attempts += [[*build[:1], "--offline", *build[1:]], build]
    attempts.append([*pip, "wheel", "--no-deps", "--wheel-dir"])
    errors = []
    for attempt in attempts:
        # Fresh folder per attempt: `uv build` also writes a .gitignore into --out-dir.
        with tempfile.TemporaryDirectory(prefix=".wheel-", dir=wheelhouse.parent) as out:
            proc = subprocess.run(
                [*attempt, out, str(project)], capture_output=True, text=True, check=False
            )
            wheels = sorted(Path(out).glob(PROJECT_WHEEL_GLOB))
            if proc.returncode == 0 and len(wheels) == 1:
                return Path(shutil.move(wheels[0], wheelhouse / wheels[0].name))
            errors.append(f"$ {' '.join(attempt[:3])} ...: {proc.stderr.strip()[-500:]}")
    raise OfflineAsrError(
        "cannot build the offline-asr wheel; install uv (`make setup` bootstraps it) or make "
        "sure hatchling can be fetched. Tried:\n" + "\n".join(errors)
    )


def install_text(name: str, flavour: Flavour, project_wheel: str) -> str:
    """INSTALL.txt: the commands for the target machine, no network needed."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    needs = (
        "For the GPU the machine needs an NVIDIA driver for CUDA 12 and the CUDA 12 runtime,\n"
        "cuBLAS and cuDNN 9 libraries (the base image of docker/Dockerfile has them); without\n"
        "them, transcribe with --device cpu."
        if flavour == "cuda12"
        else "Nothing else is needed: transcription runs on the CPU."
    )
    return f"""\
offline-asr runtime for CPython {version} on {sysconfig.get_platform()} ({flavour})

Check and unpack the archive (sha256sum -c needs the .sha256 file beside it):

    sha256sum -c {name}.tar.gz.sha256
    tar -xzf {name}.tar.gz
    cd {name}

Install, without network (pip checks every wheel against the sha256 pinned in
requirements.lock):

    python{version} -m venv .venv \\
      && .venv/bin/pip install --no-index --find-links wheelhouse --require-hashes \\
           -r requirements.lock \\
      && .venv/bin/pip install --no-index --find-links wheelhouse wheelhouse/{project_wheel}
    .venv/bin/offline-asr env check --lock requirements.lock

The wheels are for CPython {version} on {sysconfig.get_platform()} only.
{needs}

Models are not included: carry the model store (models/) separately and check it with
`offline-asr models verify`.
"""


# Archive


def write_deterministic_tar(folder: Path, archive: Path) -> None:
    """`folder` as a .tar.gz whose bytes depend only on file names and contents.

    Entries sorted by path under `folder.name/`, uid/gid 0 without names, mode 644 (755 for
    folders), mtime 0; the gzip header carries mtime 0 and no file name.
    """
    paths = sorted([folder, *folder.rglob("*")], key=lambda p: p.relative_to(folder).as_posix())
    with (
        archive.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=ARCHIVE_MTIME) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in paths:
            arcname = (Path(folder.name) / path.relative_to(folder)).as_posix()
            info = tar.gettarinfo(str(path), arcname=arcname)
            if not (info.isfile() or info.isdir()):
                raise OfflineAsrError(f"{path} is neither a file nor a folder; cannot pack it")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = ARCHIVE_MTIME
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isfile():
                with path.open("rb") as stream:
                    tar.addfile(info, stream)
            else:
                tar.addfile(info)
