"""The plan's entry point, kept working: `APP_MODEL_ID=whisper-tiny.en python app/main.py
--manifest models/manifest.json` is `offline-asr serve` with the same options."""

from __future__ import annotations

import sys

from offline_asr.cli import app

if __name__ == "__main__":
    app(["serve", *sys.argv[1:]])
