#!/usr/bin/env python3
"""Write the structural GigaAM v3 CTC test model (random weights, NOT GigaAM) into OUT_DIR.

See ``offline_asr.testmodel`` for what the files are and why they exist. Needs numpy and
onnx. Prints each written file with its sha256; the output is byte-identical on every run.

Usage::

    python scripts/make_gigaam_test_model.py OUT_DIR
    PYTHONPATH=src python scripts/make_gigaam_test_model.py OUT_DIR   # from a source tree
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

try:
    from offline_asr.testmodel import write_gigaam_test_model
except ModuleNotFoundError:  # not installed and no PYTHONPATH=src: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from offline_asr.testmodel import write_gigaam_test_model


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the model, print ``sha256  path`` per file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", type=Path, help="folder to write (created if missing)")
    args = parser.parse_args(argv)
    for path in write_gigaam_test_model(args.out_dir):
        print(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
