"""Run every `bench/bench_*.py` and write `bench/results/latest.json` and `latest.md`.

Each module has `run() -> list[dict]`; a row has `benchmark`, `case`, `ours`, `baseline`,
`unit` and `ratio` (ours relative to the baseline measured in the same run; each row's `unit`
says which way is better: throughput ratios want > 1, time ratios < 1).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def main() -> None:
    selected = set(sys.argv[1:])
    sys.path.insert(0, str(HERE))  # benchmarks share helpers (e.g. bench_service's server)
    rows: list[dict[str, Any]] = []
    for path in sorted(HERE.glob("bench_*.py")):
        if selected and path.stem not in selected:
            continue
        print(f"running {path.stem} ...", flush=True)
        rows.extend(_load(path).run())
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    payload = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor(),
            "cores": os.cpu_count(),
        },
        "results": rows,
    }
    (results / "latest.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    lines = [
        "| benchmark | case | ours | baseline | unit | ratio |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['benchmark']} | {r['case']} | {r['ours']:.3g} | {r['baseline']:.3g} | "
            f"{r['unit']} | {r['ratio']:.2f} |"
            for r in rows
        ),
    ]
    (results / "latest.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
