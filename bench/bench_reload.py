"""Memory of a live release switch (`serve --target`, `bundle install --notify URL`).

A switch loads the new release's models beside the old ones, so two releases are held until
the requests in flight on the old one end. Measured: the server's peak RSS during a switch
under load (2 clients transcribing whisper-tiny.en back to back) over its RSS just before,
against what one raw faster-whisper `WhisperModel` of the same weights costs to load and run
once in a fresh interpreter (the extra copy a switch should cost); and the RSS after the
switch against before (the old release unloaded).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx2

from bench_service import MANIFEST, MODEL

EXE = Path(sys.executable).with_name("offline-asr")
REPO = Path(__file__).resolve().parent.parent
CLIP = REPO / "src/offline_asr/data/clips/en_short.wav"

_RAW_LOAD = """
import json, sys
from pathlib import Path
from faster_whisper import WhisperModel, decode_audio
from offline_asr.registry.store import ModelStore

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024

audio = decode_audio(sys.argv[1])
store = ModelStore(Path(sys.argv[2]))
entry = store.get(store.load(), sys.argv[3])
before = status("VmRSS:")
model = WhisperModel(str(store.root / entry.path), compute_type=entry.compute_type)
list(model.transcribe(audio, beam_size=5)[0])
print(json.dumps({"growth": status("VmHWM:") - before}))
"""


def _cli(*args: str | Path) -> str:
    done = subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"offline-asr {args}: {done.stdout}{done.stderr}")
    return done.stdout


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for process {pid}")


def _bundles(work: Path) -> tuple[Path, Path]:
    """whisper-tiny.en at the store's manifest_version, and the same weights one version later
    (another model removed from a hard-linked copy of the store)."""
    older = work / "dist-a"
    _cli("bundle", "build", "--models", MODEL, "--out", older, "--locks-from", REPO,
         "--manifest", MANIFEST)  # fmt: skip
    copy = work / "store-b"
    shutil.copytree(MANIFEST.parent, copy / "models", copy_function=os.link)
    shutil.copy2(REPO / "CHANGELOG.md", copy / "CHANGELOG.md")
    _cli(
        "models",
        "remove",
        "gigaam-v3-e2e-rnnt-testtiny",
        "--manifest",
        copy / "models/manifest.json",
    )
    newer = work / "dist-b"
    _cli("bundle", "build", "--models", MODEL, "--out", newer, "--locks-from", REPO,
         "--manifest", copy / "models/manifest.json")  # fmt: skip
    return next(older.glob("*.tar.zst")), next(newer.glob("*.tar.zst"))


def _switch(work: Path, older: Path, newer: Path) -> tuple[float, float, float]:
    """(RSS before, peak RSS during the switch, RSS after), in MB."""
    target = work / "srv"
    _cli("bundle", "install", older, "--target", target)
    port = 18000 + os.getpid() % 1000
    url = f"http://127.0.0.1:{port}"
    log = (work / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(EXE), "serve", "--target", str(target), "--model", MODEL, "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    stop = threading.Event()

    def client() -> None:
        with httpx2.Client(base_url=url, timeout=120) as http:
            while not stop.is_set():
                http.post("/v1/audio/transcriptions", data={"model": MODEL},
                          files={"file": (CLIP.name, CLIP.read_bytes(), "audio/wav")})  # fmt: skip

    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx2.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx2.HTTPError:
                time.sleep(0.2)
        clients = [threading.Thread(target=client) for _ in range(2)]
        for thread in clients:
            thread.start()
        time.sleep(5)
        before = _status_mb(process.pid, "VmRSS:")
        Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # peak RSS := RSS now
        _cli("bundle", "install", newer, "--target", target, "--notify", url)
        peak = _status_mb(process.pid, "VmHWM:")
        stop.set()
        for thread in clients:
            thread.join()
        time.sleep(1)
        after = _status_mb(process.pid, "VmRSS:")
        return before, peak, after
    finally:
        stop.set()
        process.terminate()
        process.wait(timeout=30)
        log.close()


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        work = Path(tmp)
        older, newer = _bundles(work)
        before, peak, after = _switch(work, older, newer)
        raw = subprocess.run(
            [sys.executable, "-c", _RAW_LOAD, str(CLIP), str(MANIFEST), MODEL],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        one_model = float(json.loads(raw.stdout)["growth"])
    unit = "MB RSS (lower is better)"
    return [
        {"benchmark": "reload", "case": f"peak RSS growth during a switch, {MODEL}, 2 clients "
         "vs one raw WhisperModel loaded and run", "ours": peak - before, "baseline": one_model,
         "unit": unit, "ratio": (peak - before) / one_model,
         "note": f"RSS before {before:.0f} MB, peak {peak:.0f} MB"},
        {"benchmark": "reload", "case": "RSS after the switch vs before (the old release gone)",
         "ours": after, "baseline": before, "unit": unit, "ratio": after / before, "note": ""},
    ]  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
