#!/usr/bin/env bash
# The plan's packaging command, kept working: builds the offline bundle strictly from
# models/manifest.json. Extra arguments go to `offline-asr bundle build` (e.g. --sign-key,
# --recipient, --with-wheels, --base-manifest).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/offline-asr bundle build --out dist "$@"
