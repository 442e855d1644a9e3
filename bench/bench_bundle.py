"""Bundles against the plain tools, on the same files in the same run (needs `zstd` and `tar`).

- build: `bundle build` of the whole store vs `tar -I 'zstd -T0 -3' -cf` of the same files
  (throughput ratio, > 1 is better);
- install: `bundle install` (streamed extract + hash of every file + `models verify` + switch)
  vs `tar -xf` then `sha256sum -c` in every model folder (throughput ratio, > 1 is better);
- delta: size of a delta bundle when one model of three changes vs the full bundle.
Best of 3, alternating.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from offline_asr.delivery.bundle.build import build_bundle
from offline_asr.delivery.bundle.install import install_bundle
from offline_asr.registry.store import ModelStore

ROUNDS = 3
REPO = Path(__file__).resolve().parents[1]
STORE = ModelStore(REPO / "models" / "manifest.json")


def _best(work: Callable[[], object], reset: Callable[[], object]) -> float:
    times = []
    for _ in range(ROUNDS):
        reset()
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def _files() -> list[str]:
    manifest = STORE.load()
    paths = [a.path for m in manifest.models for a in m.artifacts]
    paths += [f"{m.path}/checksum.txt" for m in manifest.models] + ["manifest.json"]
    return sorted(paths)


def _row(case: str, ours: float, baseline: float, size: int) -> dict[str, Any]:
    return {
        "benchmark": "bundle",
        "case": case,
        "ours": size / ours / 1e6,
        "baseline": size / baseline / 1e6,
        "unit": "MB/s (ratio: ours/tool throughput, higher is better)",
        "ratio": baseline / ours,
    }


def run() -> list[dict[str, Any]]:
    files = _files()
    size = sum((STORE.root / f).stat().st_size for f in files)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ours_dir, tool_dir = work / "ours", work / "tool"

        def fresh(*folders: Path) -> None:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()

        def build() -> object:
            return build_bundle(STORE, ours_dir, locks_dir=REPO)

        def tar_build() -> object:
            return subprocess.run(
                ["tar", "-I", "zstd -T0 -3", "-cf", str(tool_dir / "b.tar.zst"), "-C",
                 str(STORE.root), *files], check=True,
            )  # fmt: skip

        build_ours = _best(build, lambda: fresh(ours_dir))
        build_tool = _best(tar_build, lambda: fresh(tool_dir))
        bundle = next(ours_dir.glob("offline_bundle_v*.tar.zst"))
        target, unpacked = work / "target", work / "unpacked"

        def install() -> object:
            return install_bundle(bundle, target)

        def tar_install() -> object:
            subprocess.run(["tar", "-xf", str(tool_dir / "b.tar.zst"), "-C", str(unpacked)],
                           check=True)  # fmt: skip
            for model in STORE.load().models:
                subprocess.run(["sha256sum", "--quiet", "-c", "checksum.txt"],
                               cwd=unpacked / model.path, check=True)  # fmt: skip
            return None

        install_ours = _best(install, lambda: shutil.rmtree(target, ignore_errors=True))
        install_tool = _best(tar_install, lambda: fresh(unpacked))

        # Delta: the base lacks one model's weights (as if that model changed), so only its
        # files go in; the other two come from the installed base release.
        manifest = json.loads(STORE.manifest_path.read_text())
        changed = next(m for m in manifest["models"] if m["id"] == "whisper-tiny.en")
        for artifact in changed["artifacts"]:
            artifact["sha256"] = "0" * 64
        base = work / "base-manifest.json"
        base.write_text(json.dumps(manifest))
        delta = build_bundle(STORE, work / "delta", locks_dir=REPO, base_manifest=base)
        full_size = bundle.stat().st_size
    return [
        _row("build: bundle build vs tar -I 'zstd -T0 -3'", build_ours, build_tool, size),
        _row("install: bundle install vs tar -xf + sha256sum -c", install_ours, install_tool, size),
        {
            "benchmark": "bundle",
            "case": "delta (one model of three changed) vs full bundle",
            "ours": delta.size / 1e6,
            "baseline": full_size / 1e6,
            "unit": "MB (ratio: delta/full size, lower is better)",
            "ratio": delta.size / full_size,
        },
    ]
