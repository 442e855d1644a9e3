"""Check this machine's Python environment against requirements.lock: same options as
`offline-asr env check`.

python scripts/check_env.py --json --lock requirements.lock
"""

from __future__ import annotations

import sys

from offline_asr.cli import app

if __name__ == "__main__":
    app(["env", "check", *sys.argv[1:]])
