"""Live transcription (`/v1/realtime`) against the file API of the same server, same audio.

Model `whisper-tiny.en`; audio streamed as 16 kHz PCM16 in 100 ms chunks at the speed of speech
(a chunk every 100 ms), turns ended by the server's VAD (500 ms of silence).

1. Turn latency: en_short (4.5 s) then 1 s of silence, ROUNDS times, alternating with a POST of
   the very same turn audio (cut where the events say) to `/v1/audio/transcriptions`. Live:
   from sending the chunk that holds the turn's last sample (`audio_end_ms`) to receiving its
   `.completed`; file API: the request's latency. Median of the rounds; ratio = file / live.
   Run twice: with partial text (the default, a partial transcription every second of speech)
   and without (`OFFLINE_ASR_REALTIME_PARTIAL_INTERVAL_S=0`). Goal: live <= file API + 300 ms.
2. Time to first delta: a turn of 8 s (en_short, 0.3 s pause, en_second), from receiving
   `speech_started` to receiving the first `.delta`. Median of the rounds.
3. Sessions sustained at real-time speed: N sessions at once, each streaming en_short + 1 s,
   en_second + 1 s. A level is sustained when every turn's text arrives sooner after its last
   chunk than the turn lasts (so a speaker who goes on never builds a backlog). Levels 1..4;
   the first level that fails ends the search.
"""

from __future__ import annotations

from offline_asr.asr.pins import pin_runtime

pin_runtime()

import asyncio  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import wave  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx2  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from bench_service import CLIPS, _server  # noqa: E402
from offline_asr.service.turns import wav_bytes  # noqa: E402

RATE = 16_000
CHUNK = RATE // 10 * 2  # bytes per 100 ms
ROUNDS = 3
LEVELS = (1, 2, 3, 4)
TIMEOUT = 300.0


def _pcm(name: str, silence_s: float) -> bytes:
    with wave.open(str(CLIPS / name), "rb") as reader:
        speech = reader.readframes(reader.getnframes())
    return speech + bytes(int(silence_s * RATE) * 2)


async def _stream(url: str, pcm: bytes, turns: int) -> dict[str, Any]:
    """Stream at the speed of speech; times of every chunk and event (perf_counter)."""
    ws_url = url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    sent: list[float] = []
    events: list[tuple[float, dict[str, Any]]] = []
    async with connect(ws_url, max_size=None) as ws:
        session = {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": RATE},
            "transcription": {"model": "whisper-tiny.en"}}}}  # fmt: skip
        await ws.send(json.dumps({"type": "session.update", "session": session}))

        async def receive() -> None:
            done = 0
            while done < turns:
                event = json.loads(await ws.recv())
                events.append((time.perf_counter(), event))
                if event["type"] == "error":
                    raise RuntimeError(event["error"]["message"])
                done += event["type"].endswith(".completed")

        reader = asyncio.ensure_future(receive())
        start = time.perf_counter()
        for index in range(0, len(pcm), CHUNK):
            piece = base64.b64encode(pcm[index : index + CHUNK]).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))
            sent.append(time.perf_counter())
            await asyncio.sleep(max(0.0, start + len(sent) * 0.1 - time.perf_counter()))
        await asyncio.wait_for(reader, TIMEOUT)
    return {"sent": sent, "events": events}


def _turns(run: dict[str, Any]) -> list[dict[str, float]]:
    """Per turn: its audio span, the latency from its last chunk to its text, first delta."""
    turns: dict[str, dict[str, float]] = {}
    done: list[dict[str, float]] = []
    for at, event in run["events"]:
        kind, turn = event["type"], turns.setdefault(event.get("item_id", ""), {})
        if kind.endswith("speech_started"):
            turn.update(start_ms=event["audio_start_ms"], started_at=at)
        elif kind.endswith(".delta") and "first_delta_s" not in turn:
            turn["first_delta_s"] = at - turn["started_at"]
        elif kind.endswith("speech_stopped"):
            turn["end_ms"] = event["audio_end_ms"]
        elif kind.endswith(".completed"):
            last_chunk = run["sent"][min(len(run["sent"]) - 1, int(turn["end_ms"] // 100))]
            turn["latency_s"] = at - last_chunk
            done.append(turn)
    return done


def _file_api(client: httpx2.Client, url: str, wav: bytes) -> float:
    start = time.perf_counter()
    route, form = f"{url}/v1/audio/transcriptions", {"model": "whisper-tiny.en"}
    answer = client.post(route, files={"file": ("turn.wav", wav)}, data=form)
    answer.raise_for_status()
    return time.perf_counter() - start


def _latency_rows(url: str, partials: bool) -> list[dict[str, Any]]:
    pcm = _pcm("en_short.wav", 1.0)
    live, files = [], []
    with httpx2.Client(timeout=httpx2.Timeout(TIMEOUT)) as client:
        for _ in range(ROUNDS + 1):  # the first round warms both paths up
            turn = _turns(asyncio.run(_stream(url, pcm, 1)))[0]
            cut = pcm[
                int(turn["start_ms"]) * RATE // 1000 * 2 : int(turn["end_ms"]) * RATE // 1000 * 2
            ]
            live.append(turn["latency_s"])
            files.append(_file_api(client, url, wav_bytes(cut, RATE)))
    ours, base = statistics.median(live[1:]), statistics.median(files[1:])
    mode = "with partial text every 1 s" if partials else "without partial text"
    return [{
        "benchmark": "realtime", "case": f"turn latency, en_short, {mode}",
        "ours": ours * 1e3, "baseline": base * 1e3, "unit": "ms", "ratio": base / ours,
        "added_ms": (ours - base) * 1e3, "raw_live_ms": [round(v * 1e3) for v in live],
        "raw_file_api_ms": [round(v * 1e3) for v in files],
        "note": "last chunk -> .completed vs POST of the same audio; goal: added <= 300 ms",
    }]  # fmt: skip


def _first_delta_row(url: str) -> dict[str, Any]:
    pcm = _pcm("en_short.wav", 0.3) + _pcm("en_second.wav", 1.0)
    firsts = []
    for _ in range(ROUNDS):
        turns = _turns(asyncio.run(_stream(url, pcm, 1)))
        firsts.append(turns[0].get("first_delta_s", float("nan")))
    ours = statistics.median(firsts)
    return {
        "benchmark": "realtime", "case": "time to first delta after speech starts, 8 s turn",
        "ours": ours * 1e3, "baseline": 1e3, "unit": "ms", "ratio": 1.0 / ours,
        "raw_ms": [round(v * 1e3) for v in firsts],
        "note": "baseline: the 1 s of speech the first partial waits for",
    }  # fmt: skip


async def _level(url: str, sessions: int) -> list[dict[str, float]]:
    pcm = _pcm("en_short.wav", 1.0) + _pcm("en_second.wav", 1.0)
    runs = await asyncio.gather(*(_stream(url, pcm, 2) for _ in range(sessions)))
    return [turn for run in runs for turn in _turns(run)]


def _sessions_row(url: str) -> dict[str, Any]:
    sustained, detail = 0, {}
    for level in LEVELS:
        turns = asyncio.run(_level(url, level))
        worst = max(t["latency_s"] / ((t["end_ms"] - t["start_ms"]) / 1e3) for t in turns)
        latencies = [round(t["latency_s"] * 1e3) for t in turns]
        detail[str(level)] = {"worst_latency_over_turn_length": round(worst, 2),
                              "latencies_ms": latencies}  # fmt: skip
        if worst >= 1.0:
            break
        sustained = level
    return {
        "benchmark": "realtime", "case": "live sessions sustained at real-time speed",
        "ours": float(sustained), "baseline": 1.0, "unit": "sessions", "ratio": float(sustained),
        "levels": detail,
        "note": "sustained: every turn's text arrives sooner after its end than the turn lasts",
    }  # fmt: skip


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        logs = Path(folder)
        with _server(2, logs / "partials.log") as server:
            rows += _latency_rows(server.url, partials=True)
            rows.append(_first_delta_row(server.url))
            rows.append(_sessions_row(server.url))
        with _server(2, logs / "plain.log", OFFLINE_ASR_REALTIME_PARTIAL_INTERVAL_S="0") as server:
            rows += _latency_rows(server.url, partials=False)
    return rows


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
