"""Is this Python environment the one `requirements.lock` describes, and what runtime does it see?

A transcript depends on more than the weights: the CTranslate2, ONNX Runtime and FFmpeg builds,
the CPU instruction set CTranslate2 dispatches to, and the CUDA libraries. `check_environment`
reports them all, fails on what breaks a locked install (wrong Python, missing or other-version
runtime packages) and says how to fix it. Packages beyond the lock are only listed: the dev tools
and the `models` extra live in the same venv on a development machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import os
import platform
import re
import shutil
import sys
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from packaging.markers import InvalidMarker, Marker
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from rich.table import Table
from rich.text import Text

from offline_asr.asr import pins
from offline_asr.errors import OfflineAsrError

Level = Literal["ok", "warn", "fail"]

PROJECT = "offline-asr"
# Only if the installed project has no metadata (a bare source tree on sys.path).
FALLBACK_REQUIRES_PYTHON = ">=3.11"
# The locked wheels of CTranslate2, ONNX Runtime and PyAV are CPython builds.
IMPLEMENTATION = "CPython"

WHEELHOUSE_FIX = (
    "install the locked runtime from the wheelhouse (`offline-asr env pack` on a connected "
    "machine): pip install --no-index --find-links wheelhouse --require-hashes -r requirements.lock"
)

# The flags CTranslate2's CPU dispatch cares about, and the flag each forced ISA needs.
CT2_CPU_FLAGS = ("sse4_1", "avx", "avx2", "fma", "avx512f")
ISA_NEEDS = {"GENERIC": None, "AVX": "avx", "AVX2": "avx2", "AVX512": "avx512f", "NEON": None}

# Room for one more large model in the store (large-v3 float16 is about 3.1 GB).
LOW_DISK_BYTES = 4 * 1024**3

# sonames as CTranslate2 and ONNX Runtime dlopen them; the first that loads is reported.
CUDA_DRIVER_LIBS = ("libcuda.so.1",)
CUDA_RUNTIME_LIBS = ("libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0", "libcudart.so")
CUDNN_LIBS = ("libcudnn.so.9", "libcudnn.so.8", "libcudnn.so")

_REQUIREMENT = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;\\]+)"
    r"\s*(?:;(?P<marker>[^\\]*))?"
)
# Versions the lock's python markers are probed with to tell "not for this Python" apart from
# "not for this platform".
_PROBE_PYTHONS = [f"3.{minor}" for minor in range(8, 21)]


@dataclass(frozen=True)
class LockedRequirement:
    """One `name==version ; marker` line of requirements.lock (name normalised per PEP 503)."""

    name: str
    version: str
    marker: str | None = None

    def applies(self, environment: dict[str, str] | None = None) -> bool:
        """Whether pip would install this line here (its marker holds, or it has none)."""
        return self.marker is None or Marker(self.marker).evaluate(environment)

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


def parse_lock(text: str) -> list[LockedRequirement]:
    """The pinned lines of a `uv export` / `pip-compile` file; hashes and comments skipped."""
    requirements = []
    for line in text.splitlines():
        match = _REQUIREMENT.match(line.strip())
        if match is None:
            continue
        marker = (match["marker"] or "").strip() or None
        if marker is not None:
            try:
                Marker(marker)
            except InvalidMarker as error:
                raise OfflineAsrError(
                    f"the lock line {line.strip()!r} has an invalid marker ({error}); regenerate "
                    "the lock with `make lock`"
                ) from error
        requirements.append(
            LockedRequirement(canonicalize_name(match["name"]), match["version"], marker)
        )
    return requirements


def read_lock(path: Path) -> list[LockedRequirement]:
    """`parse_lock` of a file, with an error that says where the lock should be."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise OfflineAsrError(
            f"cannot read the lock file {path} ({error.strerror}); pass --lock with the "
            "requirements.lock that came with the wheelhouse or the checkout"
        ) from error
    requirements = parse_lock(text)
    if not requirements:
        raise OfflineAsrError(
            f"{path} pins no packages (no `name==version` lines); it is not a requirements lock"
        )
    return requirements


@dataclass(frozen=True)
class Finding:
    """One line of the report; every `fail` carries the command or step that fixes it."""

    level: Level
    topic: str
    detail: str
    fix: str = ""


@dataclass
class PythonInfo:
    version: str
    implementation: str
    executable: str
    requires_python: str
    lock_requires_python: str | None  # from uv.lock beside the lock, when there is one


@dataclass
class PackageCheck:
    """Installed distributions against the lock's lines that apply to this interpreter."""

    locked: int
    matching: int
    missing: list[str] = field(default_factory=list)  # name==locked
    other_version: list[str] = field(default_factory=list)  # name: installed X, locked Y
    extra: list[str] = field(default_factory=list)  # name==installed, not in the lock
    uncovered: list[str] = field(default_factory=list)  # locked only for other Pythons


@dataclass
class CpuInfo:
    flags: dict[str, bool]
    ct2_isa: str
    isa_from: Literal["environment", "cpu flags"]
    pinned_before_import: bool
    pinned: dict[str, str] = field(default_factory=dict)  # every pin in effect, name -> value


@dataclass
class GpuInfo:
    cuda_devices: int
    cuda_driver: str | None
    cuda_runtime: str | None
    cudnn: str | None


@dataclass
class EnvReport:
    ok: bool
    findings: list[Finding]
    python: PythonInfo
    packages: PackageCheck
    libraries: dict[str, str]  # package or FFmpeg library -> version
    compute_types: dict[str, list[str]]  # CTranslate2 device -> supported compute types
    onnx_providers: list[str]
    cpu: CpuInfo
    gpu: GpuInfo
    store_root: str | None
    disk_free_bytes: int | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def render_table(self) -> Table:
        """One row per finding: level, topic, what was seen, and what to do about a failure."""
        verdict = Text("OK", style="green") if self.ok else Text("FAILED", style="red")
        table = Table(title=Text.assemble("Environment check: ", verdict), show_lines=True)
        table.add_column("", no_wrap=True)
        table.add_column("topic", no_wrap=True)
        table.add_column("detail")
        with_fix = any(finding.fix for finding in self.findings)
        if with_fix:
            table.add_column("fix")
        styles = {"ok": "green", "warn": "yellow", "fail": "bold red"}
        for finding in self.findings:
            cells = [Text(finding.level, style=styles[finding.level]), Text(finding.topic)]
            cells += (
                [Text(finding.detail), Text(finding.fix)] if with_fix else [Text(finding.detail)]
            )
            table.add_row(*cells)
        return table


def check_environment(lock: Path, store_root: Path | None) -> EnvReport:
    """Compare this interpreter and its packages with `lock`; probe the native runtimes.

    Pins CTranslate2's CPU ISA (`pins.pin_runtime`) before importing it, as every engine
    does, so the libraries reported are the ones a transcription in this process would use.
    """
    requirements = read_lock(lock)
    findings: list[Finding] = []
    python = _python_info(lock)
    findings += python_findings(python)
    packages = compare_packages(requirements, _installed_distributions())
    findings += package_findings(packages)
    cpu = cpu_info()
    findings += cpu_findings(cpu)
    libraries: dict[str, str] = {}
    compute_types: dict[str, list[str]] = {}
    cuda_devices, ct2_findings = _probe_ctranslate2(libraries, compute_types)
    findings += ct2_findings
    providers, ort_findings = _probe_onnxruntime(libraries, cuda_devices)
    findings += ort_findings
    findings += _probe_av(libraries)
    gpu = GpuInfo(
        cuda_devices=cuda_devices,
        cuda_driver=_library_version(CUDA_DRIVER_LIBS, "cuDriverGetVersion", _cuda_version),
        cuda_runtime=_library_version(CUDA_RUNTIME_LIBS, "cudaRuntimeGetVersion", _cuda_version),
        cudnn=_library_version(CUDNN_LIBS, "cudnnGetVersion", _cudnn_version),
    )
    findings += gpu_findings(gpu)
    free = _free_bytes(store_root) if store_root is not None else None
    findings += disk_findings(store_root, free)
    return EnvReport(
        ok=not any(f.level == "fail" for f in findings),
        findings=findings,
        python=python,
        packages=packages,
        libraries=libraries,
        compute_types=compute_types,
        onnx_providers=providers,
        cpu=cpu,
        gpu=gpu,
        store_root=str(store_root) if store_root is not None else None,
        disk_free_bytes=free,
    )


# Python


def _python_info(lock: Path) -> PythonInfo:
    try:
        requires = importlib.metadata.metadata(PROJECT)["Requires-Python"]
    except importlib.metadata.PackageNotFoundError:
        requires = None
    lock_requires = None
    uv_lock = lock.parent / "uv.lock"
    if uv_lock.is_file():
        with contextlib.suppress(OSError, tomllib.TOMLDecodeError):
            value = tomllib.loads(uv_lock.read_text(encoding="utf-8")).get("requires-python")
            lock_requires = value if isinstance(value, str) else None
    return PythonInfo(
        version=platform.python_version(),
        implementation=platform.python_implementation(),
        executable=sys.executable,
        requires_python=requires or FALLBACK_REQUIRES_PYTHON,
        lock_requires_python=lock_requires,
    )


def python_findings(info: PythonInfo) -> list[Finding]:
    """Fail outside `requires-python` or the lock's range, or on another implementation."""
    fix = (
        f"create the venv with a CPython that satisfies {info.requires_python} (e.g. "
        "python3.11 -m venv .venv), then install from the wheelhouse"
    )
    problems = []
    for what, spec in (
        ("requires-python", info.requires_python),
        ("uv.lock", info.lock_requires_python),
    ):
        if spec is None:
            continue
        try:
            allowed = SpecifierSet(spec)
        except InvalidSpecifier:
            problems.append(f"{what} {spec!r} is not a version specifier")
            continue
        if not allowed.contains(info.version, prereleases=True):
            problems.append(f"Python {info.version} is outside {what} {spec}")
    if info.implementation != IMPLEMENTATION:
        problems.append(
            f"{info.implementation} is not CPython; the locked CTranslate2, ONNX Runtime and "
            "PyAV wheels are CPython builds"
        )
    if problems:
        return [Finding("fail", "python", "; ".join(problems), fix)]
    lock_range = f", lock {info.lock_requires_python}" if info.lock_requires_python else ""
    return [
        Finding(
            "ok",
            "python",
            f"{info.implementation} {info.version} ({info.executable}) within requires-python "
            f"{info.requires_python}{lock_range}",
        )
    ]


# Packages


def _installed_distributions() -> dict[str, str]:
    """Normalised name -> version of what this interpreter imports (first on sys.path wins)."""
    installed: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            installed.setdefault(canonicalize_name(name), dist.version)
    return installed


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _python_only_gap(entries: list[LockedRequirement]) -> bool:
    """True when a name is locked for this platform but only for other Python versions."""
    for probe in _PROBE_PYTHONS:
        environment = {"python_version": probe, "python_full_version": f"{probe}.0"}
        if any(entry.applies(environment) for entry in entries):
            return True
    return False


def compare_packages(
    requirements: list[LockedRequirement], installed: dict[str, str]
) -> PackageCheck:
    """Missing, other-version and extra distributions; lines for other platforms are skipped."""
    by_name: dict[str, list[LockedRequirement]] = {}
    for requirement in requirements:
        by_name.setdefault(requirement.name, []).append(requirement)
    check = PackageCheck(locked=0, matching=0)
    for name, entries in sorted(by_name.items()):
        applicable = [entry for entry in entries if entry.applies()]
        if not applicable:
            if _python_only_gap(entries):
                check.uncovered.append(name)
            continue
        wanted = applicable[0]
        check.locked += 1
        have = installed.get(name)
        if have is None:
            check.missing.append(str(wanted))
        elif not _same_version(have, wanted.version):
            check.other_version.append(f"{name}: installed {have}, locked {wanted.version}")
        else:
            check.matching += 1
    own = canonicalize_name(PROJECT)
    check.extra = [
        f"{name}=={version}"
        for name, version in sorted(installed.items())
        if name not in by_name and name != own
    ]
    return check


def _short_list(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def package_findings(check: PackageCheck) -> list[Finding]:
    findings = []
    if check.uncovered:
        findings.append(
            Finding(
                "fail",
                "python",
                "the lock pins these packages only for other Python versions: "
                f"{_short_list(check.uncovered)}",
                "use a Python the lock was resolved for (see requires-python), or re-resolve "
                "with `make lock` on this Python",
            )
        )
    if check.missing:
        findings.append(
            Finding(
                "fail",
                "packages",
                f"{len(check.missing)} locked runtime packages are not installed: "
                f"{_short_list(check.missing)}",
                WHEELHOUSE_FIX,
            )
        )
    if check.other_version:
        findings.append(
            Finding(
                "fail",
                "packages",
                f"{len(check.other_version)} packages differ from the lock: "
                f"{_short_list(check.other_version)}",
                WHEELHOUSE_FIX + " (in a fresh venv, so nothing else is upgraded)",
            )
        )
    if not check.missing and not check.other_version:
        findings.append(
            Finding(
                "ok",
                "packages",
                f"all {check.locked} locked runtime packages are installed at the locked version",
            )
        )
    if check.extra:
        findings.append(
            Finding(
                "ok",
                "extra packages",
                f"{len(check.extra)} installed packages are not in the lock (informational, not "
                "a failure: dev tools and the `models` extra share a development venv; a "
                f"wheelhouse install has none): {_short_list(check.extra)}",
            )
        )
    return findings


# CPU and CTranslate2


def cpu_info() -> CpuInfo:
    """Pin as the package does on import (without importing ctranslate2) and report it."""
    flags = pins.cpu_flags()
    isa = pins.pin_runtime()
    return CpuInfo(
        flags={flag: flag in flags for flag in CT2_CPU_FLAGS},
        ct2_isa=isa,
        isa_from="environment" if pins.ISA_ENV in pins.user_pins() else "cpu flags",
        pinned_before_import="ctranslate2" not in pins.loaded_before_pins(),
        pinned={name: os.environ[name] for name in pins.PINNED_VARIABLES if name in os.environ},
    )


def cpu_findings(cpu: CpuInfo) -> list[Finding]:
    """A forced ISA the CPU lacks would crash CTranslate2 (illegal instruction)."""
    present = ", ".join(f"{flag} {'yes' if has else 'no'}" for flag, has in cpu.flags.items())
    detail = f"{pins.ISA_ENV}={cpu.ct2_isa} (from the {cpu.isa_from}); CPU flags: {present}"
    findings = []
    isa = cpu.ct2_isa.upper()
    if isa not in ISA_NEEDS:
        findings.append(
            Finding(
                "fail",
                "cpu isa",
                f"{detail}; {cpu.ct2_isa!r} is not an ISA CTranslate2 knows "
                f"({', '.join(ISA_NEEDS)})",
                f"unset {pins.ISA_ENV} (AVX2 is chosen where the CPU has it)",
            )
        )
    elif (needed := ISA_NEEDS[isa]) is not None and cpu.flags.get(needed) is False:
        best = pins.best_isa({flag for flag, has in cpu.flags.items() if has})
        findings.append(
            Finding(
                "fail",
                "cpu isa",
                f"{detail}; this CPU has no {needed}, so CTranslate2 would stop with an illegal "
                "instruction",
                f"unset {pins.ISA_ENV} or set it to {best}",
            )
        )
    else:
        findings.append(Finding("ok", "cpu isa", detail))
    if cpu.pinned:
        listed = ", ".join(f"{name}={value}" for name, value in sorted(cpu.pinned.items()))
        findings.append(Finding("ok", "pins", f"determinism pins in effect: {listed}"))
    if not cpu.pinned_before_import:
        findings.append(
            Finding(
                "warn",
                "cpu isa",
                "ctranslate2 was imported in this process before the ISA was pinned, so it may "
                "dispatch to another ISA here; new processes use the pin",
                "run `offline-asr env check` in its own process",
            )
        )
    return findings


def _probe_ctranslate2(
    libraries: dict[str, str], compute_types: dict[str, list[str]]
) -> tuple[int, list[Finding]]:
    """Version, CUDA devices and compute types; import after `cpu_info` pinned the ISA."""
    try:
        import ctranslate2
    except (ImportError, OSError) as error:
        return 0, [
            Finding("fail", "ctranslate2", f"cannot import ctranslate2: {error}", WHEELHOUSE_FIX)
        ]
    libraries["ctranslate2"] = str(ctranslate2.__version__)
    try:
        devices = int(ctranslate2.get_cuda_device_count())
    except RuntimeError:
        devices = 0
    compute_types["cpu"] = sorted(ctranslate2.get_supported_compute_types("cpu"))
    if devices:
        try:
            compute_types["cuda"] = sorted(ctranslate2.get_supported_compute_types("cuda"))
        except RuntimeError as error:
            compute_types["cuda"] = []
            return devices, [
                Finding(
                    "warn",
                    "ctranslate2",
                    f"{devices} CUDA device(s) but no CUDA compute types: {error}",
                    "update the NVIDIA driver for CUDA 12, or transcribe with --device cpu",
                )
            ]
    cuda = ", ".join(compute_types["cuda"]) if devices else "no CUDA device"
    return devices, [
        Finding(
            "ok",
            "ctranslate2",
            f"{ctranslate2.__version__}; CUDA devices: {devices}; compute types cpu: "
            f"{', '.join(compute_types['cpu'])}; cuda: {cuda}",
        )
    ]


def _probe_onnxruntime(
    libraries: dict[str, str], cuda_devices: int
) -> tuple[list[str], list[Finding]]:
    try:
        import onnxruntime
    except (ImportError, OSError) as error:
        return [], [
            Finding("fail", "onnxruntime", f"cannot import onnxruntime: {error}", WHEELHOUSE_FIX)
        ]
    libraries["onnxruntime"] = str(onnxruntime.__version__)
    providers = [str(p) for p in onnxruntime.get_available_providers()]
    detail = f"{onnxruntime.__version__}; providers: {', '.join(providers)}"
    if cuda_devices and "CUDAExecutionProvider" not in providers:
        detail += " (the locked CPU build: GigaAM runs on the CPU even with a GPU present)"
    return providers, [Finding("ok", "onnxruntime", detail)]


def _probe_av(libraries: dict[str, str]) -> list[Finding]:
    try:
        import av
    except (ImportError, OSError) as error:
        return [Finding("fail", "pyav", f"cannot import av: {error}", WHEELHOUSE_FIX)]
    libraries["av"] = str(av.__version__)
    ffmpeg = {
        str(name): ".".join(str(part) for part in version)
        for name, version in sorted(av.library_versions.items())
    }
    libraries.update(ffmpeg)
    listed = ", ".join(f"{name} {version}" for name, version in ffmpeg.items())
    return [Finding("ok", "pyav", f"{av.__version__}; FFmpeg {listed}")]


# CUDA libraries


def _cuda_version(value: int) -> str:
    """CUDA encodes 12.4 as 12040."""
    return f"{value // 1000}.{value % 1000 // 10}"


def _cudnn_version(value: int) -> str:
    """cuDNN 9 encodes 9.1.0 as 90100; cuDNN 8 encoded 8.9.7 as 8907."""
    major, rest = (
        (value // 10000, value % 10000) if value >= 90000 else (value // 1000, value % 1000)
    )
    return f"{major}.{rest // 100}.{rest % 100}"


def _library_version(
    sonames: Iterable[str], function: str, decode: Callable[[int], str]
) -> str | None:
    """`<version> (<soname>)` of the first library that loads, or None (best effort)."""
    for soname in sonames:
        try:
            library = ctypes.CDLL(soname)
        except OSError:
            continue
        try:
            getter = getattr(library, function)
            if function == "cudnnGetVersion":
                getter.restype = ctypes.c_size_t
                return f"{decode(int(getter()))} ({soname})"
            value = ctypes.c_int(0)
            if getter(ctypes.byref(value)) == 0:
                return f"{decode(value.value)} ({soname})"
        except (AttributeError, OSError):
            pass
        return f"unknown version ({soname})"
    return None


def gpu_findings(gpu: GpuInfo) -> list[Finding]:
    """Without a device the CUDA libraries are informational; with one, cuDNN must be there."""
    seen = (
        f"CUDA driver: {gpu.cuda_driver or 'not present'}; CUDA runtime: "
        f"{gpu.cuda_runtime or 'not present'}; cuDNN: {gpu.cudnn or 'not present'}"
    )
    if gpu.cuda_devices == 0:
        return [Finding("ok", "cuda", f"no CUDA device visible, CPU only. {seen}")]
    if gpu.cudnn is None or not gpu.cudnn.startswith("9."):
        return [
            Finding(
                "warn",
                "cuda",
                f"{gpu.cuda_devices} CUDA device(s), but no cuDNN 9: Whisper on cuda will fail "
                f"to load. {seen}",
                "install cuDNN 9 for CUDA 12 (the docker image's base has it), or use --device cpu",
            )
        ]
    return [Finding("ok", "cuda", f"{gpu.cuda_devices} CUDA device(s). {seen}")]


# Disk


def _free_bytes(path: Path) -> int:
    """Free space on the file system that holds `path` (or would, once created)."""
    probe = path.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def disk_findings(store_root: Path | None, free: int | None) -> list[Finding]:
    if store_root is None or free is None:
        return []
    detail = f"{free / 1e9:.1f} GB free at {store_root}"
    if free < LOW_DISK_BYTES:
        return [
            Finding(
                "warn",
                "disk",
                f"{detail}; a large model needs about {LOW_DISK_BYTES / 1e9:.0f} GB",
                "free space there, or point MODEL_REGISTRY_PATH at a store on a larger disk",
            )
        ]
    return [Finding("ok", "disk", detail)]
