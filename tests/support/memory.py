"""Peak memory (VmHWM) of a live process, and of work run in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Defines `peak()` (this process's VmHWM in MB) and `stop`, a callback that ends work early by
# raising `Enough`; the measured script sets `before = peak()` just before the work.
_PRELUDE = """
import json, sys
from pathlib import Path

def peak():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

class Enough(Exception):
    pass

def stop(*_):
    raise Enough
"""
_REPORT = """
print(json.dumps({"before": before, "after": peak()}))
"""


def peak_rss_mb(pid: int) -> float:
    """A live process's peak resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def peak_growth_mb(script: str, *args: str) -> float:
    """How far `script` (with `sys.argv[1:]` = `args`) raised the peak RSS of a fresh
    interpreter above its value at `before = peak()`, in MB."""
    run = subprocess.run(
        [sys.executable, "-c", _PRELUDE + script + _REPORT, *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    peak = json.loads(run.stdout)
    return float(peak["after"] - peak["before"])
