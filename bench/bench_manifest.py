"""Large manifests: `models list` and `models verify` of 100,000 entries against the raw tools.

Each entry has one small artifact and its `checksum.txt` (the per-model cost is what grows;
hashing speed is `bench_hashing`). Cases, best of 2, alternating, the CLI in a subprocess with
its output going to /dev/null:
- list: `offline-asr models list` vs Python reading the same JSON and printing the same columns
  (time ratio, lower is better);
- verify: `offline-asr models verify` vs `sha256sum --quiet -c` over every artifact (time ratio);
- scaling: each command at 100,000 entries vs 10,000 (time ratio: 10 is linear; the quadratic
  uniqueness check and per-row rich rendering this replaces made it ~100).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROUNDS = 2
SIZES = (10_000, 100_000)
EXE = Path(sys.executable).with_name("offline-asr")

# The raw read of a manifest: parse the JSON, print the same eight columns.
RAW_LIST = """
import json, sys
manifest = json.load(open(sys.argv[1], encoding="utf-8"))
for m in manifest["models"]:
    size = sum(a["size"] for a in m["artifacts"])
    source = m["source"]["kind"] + ": " + (m["source"].get("path") or "")
    print(m["id"], m["engine"], m["variant"], m["precision"] + "/" + m["compute_type"], size,
          ",".join(m["languages"]), source, m["license"], sep="  ")
"""


def write_store(root: Path, count: int) -> Path:
    """A store of `count` models, one small file each; returns the manifest path."""
    models: list[dict[str, Any]] = []
    sums = []
    for i in range(count):
        folder = f"whisper/v{i:06d}"
        data = f"weights {i}\n".encode()
        sha = hashlib.sha256(data).hexdigest()
        (root / folder).mkdir(parents=True)
        (root / folder / "model.bin").write_bytes(data)
        (root / folder / "checksum.txt").write_text(f"{sha}  model.bin\n")
        sums.append(f"{sha}  {folder}/model.bin\n")
        models.append({
            "id": f"m{i:06d}", "engine": "whisper", "variant": f"v{i:06d}",
            "format": "ctranslate2", "precision": "float16", "compute_type": "int8",
            "languages": ["en"], "license": "MIT",
            "source": {"kind": "local", "path": "/media/usb"}, "path": folder,
            "artifacts": [{"path": f"{folder}/model.bin", "sha256": sha, "size": len(data)}],
        })  # fmt: skip
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"schema_version": 1, "manifest_version": 1, "models": models},
                                   indent=2))  # fmt: skip
    (root / "all.sha256").write_text("".join(sums))
    return manifest


def _timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def _best_pair(ours: list[str], tool: list[str], cwd: Path) -> tuple[float, float]:
    ours_times, tool_times = [], []
    for _ in range(ROUNDS):
        tool_times.append(_timed(tool, cwd))
        ours_times.append(_timed(ours, cwd))
    return min(ours_times), min(tool_times)


def _row(case: str, ours: float, baseline: float, unit: str) -> dict[str, Any]:
    return {"benchmark": "manifest", "case": case, "ours": ours, "baseline": baseline,
            "unit": unit, "ratio": ours / baseline}  # fmt: skip


def run() -> list[dict[str, Any]]:
    timings: dict[tuple[str, int], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in SIZES:
            root = Path(tmp, str(count))
            manifest = write_store(root, count)
            timings["list", count] = _best_pair(
                [str(EXE), "models", "list", "--manifest", str(manifest)],
                [sys.executable, "-c", RAW_LIST, str(manifest)], root,
            )  # fmt: skip
            timings["verify", count] = _best_pair(
                [str(EXE), "models", "verify", "--manifest", str(manifest)],
                ["sha256sum", "--quiet", "-c", "all.sha256"], root,
            )  # fmt: skip
    small, large = SIZES
    seconds = "s (ratio: ours/tool time, lower is better)"
    rows = [
        _row(f"list {large:,} entries vs json.load + print", *timings["list", large], seconds),
        _row(f"verify {large:,} entries vs sha256sum -c", *timings["verify", large], seconds),
    ]
    for command in ("list", "verify"):
        case = f"{command} {large:,} vs {small:,} entries (10 = linear)"
        ours, fewer = timings[command, large][0], timings[command, small][0]
        rows.append(_row(case, ours, fewer, "s (ratio: time at 100k / at 10k)"))
    return rows


if __name__ == "__main__":
    for result in run():
        print(result)
