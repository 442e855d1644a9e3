#!/usr/bin/env python3
"""Write a structural GigaAM v3 test model (random weights, NOT GigaAM) into OUT_DIR.

See ``offline_asr.testmodel`` for what the files are and why they exist. Needs numpy and
onnx. Prints each written file with its sha256; the float32 files are byte-identical on every
run.

Usage::

    python scripts/make_gigaam_test_model.py OUT_DIR                  # the CTC layout
    python scripts/make_gigaam_test_model.py OUT_DIR --kind e2e-rnnt  # or rnnt, e2e-ctc
    python scripts/make_gigaam_test_model.py OUT_DIR --published-export  # every layout, int8 too
    PYTHONPATH=src python scripts/make_gigaam_test_model.py OUT_DIR   # from a source tree
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

try:
    from offline_asr import testmodel
except ModuleNotFoundError:  # not installed and no PYTHONPATH=src: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from offline_asr import testmodel


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the model, print ``sha256  path`` per file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--kind", choices=testmodel.KINDS, default="ctc", help="the layout")
    parser.add_argument(
        "--published-export",
        action="store_true",
        help="every layout side by side, with int8 versions, like istupakov/gigaam-v3-onnx",
    )
    args = parser.parse_args(argv)
    if args.published_export:
        paths = testmodel.write_published_export(args.out_dir)
    else:
        paths = testmodel.write_gigaam_test_model(args.out_dir, args.kind)
    for path in paths:
        print(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
