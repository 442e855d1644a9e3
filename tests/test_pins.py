"""The pins every entry point sets before numpy, CTranslate2 or onnxruntime load."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from offline_asr.asr import pins

# What a pinned ISA implies for the libraries that dispatch on their own.
CEILINGS = {
    "AVX2": {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "OPENBLAS_CORETYPE": "Haswell",
        "MKL_CBWR": "AVX2,STRICT",
    },
    "AVX": {
        "ONEDNN_MAX_CPU_ISA": "AVX",
        "OPENBLAS_CORETYPE": "Sandybridge",
        "MKL_CBWR": "AVX,STRICT",
    },
    "GENERIC": {"ONEDNN_MAX_CPU_ISA": "SSE41", "OPENBLAS_CORETYPE": "Nehalem"},
}

REPORT = """
import json, os, sys
{before}
import offline_asr
from offline_asr.asr import pins
facts = pins.host_facts() | pins.ctranslate2_facts()
print(json.dumps({{"env": {{k: os.environ.get(k) for k in pins.PINNED_VARIABLES}},
                  "facts": facts, "user": pins.user_pins()}}))
"""


def _report(env: dict[str, str], before: str = "") -> dict[str, dict[str, str]]:
    """What a new Python process that imports offline_asr sees, started with `env` added to a
    shell environment without any pin."""
    base = {k: v for k, v in os.environ.items() if k not in pins.PINNED_VARIABLES}
    base.pop(pins.PINNED_MARKER, None)
    proc = subprocess.run(
        [sys.executable, "-c", REPORT.format(before=before)], env=base | env,
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    report: dict[str, dict[str, str]] = json.loads(proc.stdout)
    return report


def test_every_pin_is_set_on_import_and_consistent_with_the_isa() -> None:
    report = _report({})
    isa = pins.best_isa(pins.cpu_flags())
    assert report["env"]["CT2_FORCE_CPU_ISA"] == isa
    assert report["env"]["CT2_USE_MKL"] == "0"
    assert report["env"]["OPENBLAS_NUM_THREADS"] == "1"
    for name, value in CEILINGS.get(isa, {}).items():
        assert report["env"][name] == value, name
    facts = report["facts"]
    assert facts["gemm"] == "onednn" and facts["ct2_cpu_isa"] == isa
    assert facts["openblas_threads"] == "1"  # effective: read back from OpenBLAS itself
    if isa == "AVX2":
        assert facts["openblas_core"] == "Haswell" and facts["numpy_simd"] == "X86_V3"
    assert report["user"] == {} and "user_pins" not in facts
    assert {"cpu_vendor", "cpu_model", "cpu_flags", "numpy", "arch"} <= facts.keys()


def test_a_value_the_user_set_is_kept_and_recorded_as_theirs() -> None:
    report = _report({"CT2_USE_MKL": "1", "OPENBLAS_NUM_THREADS": "2"})
    assert report["env"]["CT2_USE_MKL"] == "1" and report["env"]["OPENBLAS_NUM_THREADS"] == "2"
    assert report["user"] == {"CT2_USE_MKL": "1", "OPENBLAS_NUM_THREADS": "2"}
    facts = report["facts"]
    assert facts["gemm"] == "mkl" and facts["mkl_cbwr"].endswith(",STRICT")
    assert facts["user_pins"] == "CT2_USE_MKL=1 OPENBLAS_NUM_THREADS=2"


def test_a_child_process_inherits_the_pins_but_not_as_the_users() -> None:
    """A subprocess started by offline-asr (a server, a matrix worker) sees the values, but they
    are still offline-asr's."""
    child = "import subprocess, sys; print(subprocess.run([sys.executable, '-c', " + repr(
        REPORT.format(before="")
    ) + "], capture_output=True, text=True).stdout)"  # fmt: skip
    base = {k: v for k, v in os.environ.items() if k not in pins.PINNED_VARIABLES}
    base.pop(pins.PINNED_MARKER, None)
    proc = subprocess.run(
        [sys.executable, "-c", "import offline_asr\n" + child], env=base,
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    assert report["user"] == {} and report["env"]["CT2_USE_MKL"] == "0"


def test_a_library_imported_before_the_pins_is_recorded() -> None:
    facts = _report({}, before="import numpy")["facts"]
    assert facts["loaded_before_pins"] == "numpy"
    assert "loaded_before_pins" not in _report({})["facts"]


def test_this_test_process_was_pinned_before_numpy_loaded() -> None:
    facts = pins.host_facts()
    assert facts["openblas_threads"] == "1" and "loaded_before_pins" not in facts


def test_a_forced_isa_above_the_cpu_never_pins_a_library_beyond_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenBLAS would stop with an illegal instruction on a core type the CPU lacks."""
    monkeypatch.setattr(pins, "cpu_flags", lambda: {"sse4_1", "avx"})
    for name in pins.PINNED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(pins.ISA_ENV, "AVX2")
    monkeypatch.setenv(pins.PINNED_MARKER, "")
    assert pins.pin_runtime() == "AVX2"  # the user's choice is kept (env check fails it)
    assert os.environ["OPENBLAS_CORETYPE"] == "Sandybridge"
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX"
    assert pins.user_pins() == {pins.ISA_ENV: "AVX2"}


def test_best_isa_needs_fma_for_avx2_and_never_picks_avx512() -> None:
    assert pins.best_isa({"avx", "avx2", "fma", "avx512f"}) == "AVX2"
    assert pins.best_isa({"avx", "avx2"}) == "AVX"
    assert pins.best_isa(set()) == "GENERIC"
    assert pins.onnxruntime_kernels({"avx", "avx2", "fma", "avx512f"}) == "AVX512F"
