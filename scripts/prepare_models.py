"""The plan's command, kept working: same options as `offline-asr models prepare`.

python scripts/prepare_models.py --engine whisper --variant large-v3
"""

from __future__ import annotations

import sys

from offline_asr.cli import app

if __name__ == "__main__":
    app(["models", "prepare", *sys.argv[1:]])
