"""Pin every source of machine dependence before the numeric libraries load, and describe it.

Measured on the development machine (README, "Reproducibility"): the decoded output changes with
CTranslate2's ISA and GEMM backend (`CT2_USE_MKL`, which CTranslate2 otherwise picks by CPU
vendor), oneDNN's own ISA ceiling, MKL's code path (`MKL_CBWR`), and, in feature extraction, with
NumPy's SIMD level and OpenBLAS's kernel and thread count (the core count). Every one of these is
read from the environment once, when its library loads, so `offline_asr/__init__.py` calls
`pin_runtime()` before anything imports numpy, CTranslate2 or onnxruntime, in every entry point;
subprocesses inherit the values. A value the user set is kept and recorded as theirs.

This module imports nothing but the standard library: it runs before the libraries it pins.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

ISA_ENV = "CT2_FORCE_CPU_ISA"
MKL_ENV = "CT2_USE_MKL"
OPENBLAS_THREADS_ENV = "OPENBLAS_NUM_THREADS"
PINNED_MARKER = "OFFLINE_ASR_PINNED"
"""Names of the variables offline-asr set itself: a child process inherits their values, and
must not mistake them for the user's."""

ISA_LEVELS = ("GENERIC", "AVX", "AVX2", "AVX512")
ISA_FLAG = {"AVX": "avx", "AVX2": "avx2", "AVX512": "avx512f"}
"""The CPU flag each CTranslate2 ISA needs (GENERIC needs none)."""
REPORTED_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f")
"""The CPU flags that decide which kernels the libraries can use."""

_NUMPY_ABOVE_AVX2 = "X86_V4 AVX512_ICL AVX512_SPR"
# For each ISA: the matching ceiling of the libraries that dispatch on their own.
_CEILINGS: dict[str, dict[str, str]] = {
    "AVX512": {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "MKL_CBWR": "AVX512,STRICT",
        "OPENBLAS_CORETYPE": "SkylakeX",
        "NPY_DISABLE_CPU_FEATURES": "AVX512_ICL AVX512_SPR",
    },
    "AVX2": {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "AVX2,STRICT",
        "OPENBLAS_CORETYPE": "Haswell",
        "NPY_DISABLE_CPU_FEATURES": _NUMPY_ABOVE_AVX2,
    },
    "AVX": {
        "ONEDNN_MAX_CPU_ISA": "AVX",
        "MKL_CBWR": "AVX,STRICT",
        "OPENBLAS_CORETYPE": "Sandybridge",
        "NPY_DISABLE_CPU_FEATURES": "X86_V3 " + _NUMPY_ABOVE_AVX2,
    },
    "GENERIC": {
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_CBWR": "SSE4_2,STRICT",
        "OPENBLAS_CORETYPE": "Nehalem",
        "NPY_DISABLE_CPU_FEATURES": "X86_V3 " + _NUMPY_ABOVE_AVX2,
    },
}
PINNED_LIBRARIES = ("numpy", "ctranslate2", "onnxruntime")
"""The libraries that read the pins when they load."""
_loaded_before_pins: list[str] = []
_checked_imports: list[bool] = []
PINNED_VARIABLES = (ISA_ENV, MKL_ENV, OPENBLAS_THREADS_ENV, *_CEILINGS["AVX2"])
"""Every variable `pin_runtime` may set (NPY_ENABLE_CPU_FEATURES, if the user set it, also
counts as theirs: NumPy refuses both at once)."""


def cpu_fields() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    return set(cpu_fields().get("flags", "").split())


def best_isa(flags: set[str]) -> str:
    """AVX2 where the CPU has it (with FMA), else AVX, else GENERIC.

    AVX-512 is never chosen by itself: AVX-512 machines join the AVX2 class, so their output
    matches every other AVX2 machine's.
    """
    if {"avx2", "fma"} <= flags:
        return "AVX2"
    return "AVX" if "avx" in flags else "GENERIC"


def _capped(isa: str, flags: set[str]) -> str:
    """The ISA the CPU can really run, at most `isa` (OpenBLAS would crash on a core it lacks)."""
    allowed = [level for level in ISA_LEVELS if level == "GENERIC" or ISA_FLAG[level] in flags]
    wanted = ISA_LEVELS.index(isa) if isa in ISA_LEVELS else 0
    return max((lvl for lvl in allowed if ISA_LEVELS.index(lvl) <= wanted), key=ISA_LEVELS.index)


def _set_by_us() -> set[str]:
    return set(filter(None, os.environ.get(PINNED_MARKER, "").split(",")))


def user_pins() -> dict[str, str]:
    """The pinned variables that the user (not offline-asr) set, with their values."""
    ours = _set_by_us()
    names = (*PINNED_VARIABLES, "NPY_ENABLE_CPU_FEATURES")
    return {name: os.environ[name] for name in names if name in os.environ and name not in ours}


def pin_runtime() -> str:
    """Set every pin that is not set yet; returns the CTranslate2 ISA. Safe to call again.

    Only x86-64 gets the ISA ceilings; elsewhere the GEMM backend and thread count are pinned.
    """
    if not _checked_imports:  # the first call in this process
        _checked_imports.append(True)
        _loaded_before_pins.extend(name for name in PINNED_LIBRARIES if name in sys.modules)
    ours = _set_by_us()
    flags = cpu_flags()

    def pin(name: str, value: str) -> None:
        if name not in os.environ:
            os.environ[name] = value
            ours.add(name)

    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if x86:
        pin(ISA_ENV, best_isa(flags))
    pin(MKL_ENV, "0")
    pin(OPENBLAS_THREADS_ENV, "1")
    if x86:
        ceilings = _CEILINGS[_capped(os.environ[ISA_ENV].upper(), flags)]
        for name, value in ceilings.items():
            if name == "NPY_DISABLE_CPU_FEATURES" and "NPY_ENABLE_CPU_FEATURES" in os.environ:
                continue
            pin(name, value)
    os.environ[PINNED_MARKER] = ",".join(sorted(ours))
    return os.environ.get(ISA_ENV, "")


def unpinned_environment(environ: dict[str, str]) -> dict[str, str]:
    """`environ` without the pins offline-asr set itself: for a process that must pin afresh
    (another ISA or backend); the user's own pins stay."""
    ours = set(environ.get(PINNED_MARKER, "").split(","))
    return {k: v for k, v in environ.items() if k not in ours and k != PINNED_MARKER}


def loaded_before_pins() -> list[str]:
    """Libraries this process imported before offline-asr pinned them: they ignore the pins."""
    return list(_loaded_before_pins)


def gemm_backend() -> str:
    """CTranslate2's GEMM library on the CPU, as pinned: `mkl` or `onednn`."""
    return (
        "mkl" if os.environ.get(MKL_ENV, "0").strip().lower() in ("1", "true", "on") else "onednn"
    )


def _numpy_simd() -> str:
    """The highest SIMD target NumPy dispatches to in this process (after the pins)."""
    import numpy

    umath = numpy._core._multiarray_umath  # type: ignore[attr-defined]
    enabled = [t for t in umath.__cpu_dispatch__ if umath.__cpu_features__.get(t)]
    return str((enabled or list(umath.__cpu_baseline__) or ["none"])[-1])


def _openblas() -> tuple[str, str]:
    """OpenBLAS's kernel family and thread count, asked from the copy NumPy loaded."""
    import numpy  # noqa: F401  # loads its OpenBLAS

    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8")
    except OSError:
        return "unknown", os.environ.get(OPENBLAS_THREADS_ENV, "unknown")
    paths = {line.split()[-1] for line in maps.splitlines() if "openblas" in line.lower()}
    for path in sorted(p for p in paths if p.startswith("/")):
        library = ctypes.CDLL(path)
        for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""),
                               ("openblas_", ""), ("openblas_", "64_")):  # fmt: skip
            corename = getattr(library, f"{prefix}get_corename{suffix}", None)
            threads = getattr(library, f"{prefix}get_num_threads{suffix}", None)
            if corename is not None and threads is not None:
                corename.restype = ctypes.c_char_p
                return corename().decode(), str(threads())
    return "unknown", os.environ.get(OPENBLAS_THREADS_ENV, "unknown")


def host_facts() -> dict[str, str]:
    """What this machine and process are: CPU, the pins in effect, and who set them."""
    fields = cpu_fields()
    flags = cpu_flags()
    facts = {
        "arch": platform.machine().lower().replace("amd64", "x86_64"),
        "cpu_vendor": fields.get("vendor_id", "unknown"),
        "cpu_model": fields.get("model name", platform.processor() or "unknown"),
        "cpu_flags": " ".join(f for f in REPORTED_FLAGS if f in flags) or "none",
        "cpu_cores": str(os.cpu_count() or 0),
        "numpy_simd": _numpy_simd(),
    }
    facts["openblas_core"], facts["openblas_threads"] = _openblas()
    facts["numpy"] = metadata.version("numpy")
    facts["libc"] = "-".join(platform.libc_ver()) or "unknown"
    if _loaded_before_pins:
        facts["loaded_before_pins"] = " ".join(_loaded_before_pins)
    pins = user_pins()
    if pins:
        facts["user_pins"] = " ".join(f"{name}={value}" for name, value in sorted(pins.items()))
    return facts


def ctranslate2_facts() -> dict[str, str]:
    """How CTranslate2 computes on the CPU here: its ISA, oneDNN's ceiling, the GEMM library."""
    facts = {
        "ct2_cpu_isa": os.environ.get(ISA_ENV, "default"),
        "onednn_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
        "gemm": gemm_backend(),
    }
    if facts["gemm"] == "mkl":
        facts["mkl_cbwr"] = os.environ.get("MKL_CBWR", "AUTO")
    return facts


def onnxruntime_kernels(flags: set[str] | None = None) -> str:
    """The kernel family onnxruntime's MLAS picks by itself (it has no switch to pin it)."""
    flags = cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        return "AVX512F"
    if {"avx2", "fma"} <= flags:
        return "AVX2"
    return "AVX" if "avx" in flags else "SSE2"
