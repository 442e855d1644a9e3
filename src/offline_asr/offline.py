"""The offline and telemetry switches of the libraries offline-asr uses, owned in one place.

Each library reads its switch from the environment once, when it is imported or initialised,
so the switches go into `os.environ` before that, overriding whatever the environment said:

- telemetry is off from the moment the `offline_asr` package is imported. Every entry point
  (the `offline-asr` command, `app/main.py`, `scripts/*`) imports it before any engine, and
  every process it starts inherits the environment;
- the hub libraries go offline in every command of the air-gapped side: all but `models
  prepare` and `models sync`, which fetch from a hub or mirror when they are asked to.

The README's "Security" section states the guarantee; tests/test_egress.py traces the syscalls
of every entry point to prove it.
"""

from __future__ import annotations

import os
from typing import Final

TELEMETRY_OFF: Final = {
    # onnxruntime >= 1.29 on Linux sends 1DS telemetry to mobile.events.data.microsoft.com
    # (a DNS lookup every few seconds from import on) and keeps a device id and an event cache
    # under ~/.cache/Microsoft/DeveloperTools and a session file in TMPDIR. It reads this
    # variable once, when it initialises on import; with it set, it creates neither the
    # uploader nor the files (onnxruntime/core/platform/telemetry_environment.h; checked with
    # strace against 1.32).
    "ORT_DISABLE_TELEMETRY": "1",
    # huggingface_hub's usage reports (sent only when it downloads, i.e. `models prepare`).
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # The cross-tool opt-out that huggingface_hub, gradio and others also honour.
    "DO_NOT_TRACK": "1",
    # Ray's usage statistics, for a Ray cluster started from offline-asr.
    "RAY_USAGE_STATS_ENABLED": "0",
}

HUB_OFFLINE: Final = {
    # huggingface_hub (which faster-whisper and onnx-asr import) and transformers/datasets:
    # no download, no metadata request, local files only.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}

# The commands that may reach a hub, a mirror or an artifact server, when asked to.
FETCHING_COMMANDS: Final = frozenset({"prepare", "sync"})


def disable_telemetry() -> None:
    """Every library's telemetry off, for this process and the ones it starts."""
    os.environ.update(TELEMETRY_OFF)


def go_offline() -> None:
    """Hub libraries offline; must run before huggingface_hub is imported (it reads the switch
    into a constant on import)."""
    os.environ.update(HUB_OFFLINE)
