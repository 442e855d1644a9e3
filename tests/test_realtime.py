"""`/v1/realtime` against a real `offline-asr serve`: the official openai SDK's realtime client,
turns whose text is byte-for-byte the file API's for the same audio, every engine and `auto`,
bounded sessions, API keys, bad input, a client that vanishes, the audit log and metrics, and
`offline-asr listen`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from openai.types.realtime import RealtimeTranscriptionSessionCreateRequestParam
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from offline_asr.constants import CLIPS_DIR
from offline_asr.registry.store import ModelStore
from offline_asr.service.turns import wav_bytes
from support.audio_fixtures import read_wav, resample
from support.server import Server, running_server

pytestmark = pytest.mark.slow

REFERENCES: dict[str, str] = json.loads((CLIPS_DIR / "references.json").read_text())
CHUNK_S = 0.1
EVENT_TIMEOUT = 120.0
BUFFER_LIMIT = 400_000  # bytes: 12.5 s at 16 kHz
EXE = Path(sys.executable).with_name("offline-asr")


def pcm_of(name: str, rate: int = 16_000, silence_s: float = 0.0) -> bytes:
    samples, clip_rate = read_wav(CLIPS_DIR / name)
    if rate != clip_rate:
        samples = resample(samples, clip_rate, rate)
    quiet = np.zeros(int(silence_s * rate), np.int16)
    return np.concatenate([samples[0], quiet]).astype("<i2").tobytes()


def chunks(pcm: bytes, rate: int) -> Iterator[bytes]:
    size = int(rate * CHUNK_S) * 2
    return (pcm[i : i + size] for i in range(0, len(pcm), size))


def append(pcm: bytes) -> str:
    return json.dumps(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
    )


def update(**audio_input: Any) -> str:
    session = {"type": "transcription", "audio": {"input": audio_input}}
    return json.dumps({"type": "session.update", "session": session})


def file_api(server: Server, wav: bytes, model: str, **form: str) -> str:
    """The file API's text for the same audio, through the official client."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=form.pop("key", "unused"))
    result = client.audio.transcriptions.create(model=model, file=("turn.wav", wav), **form)  # type: ignore[call-overload]
    text: str = result.text
    return text


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"


def session(server: Server, **options: Any) -> ClientConnection:
    """A raw session whose `session.created` has been read."""
    ws: ClientConnection = connect(
        ws_url(server), open_timeout=30, max_size=None, legacy=True, **options
    )
    assert next_event(ws)["type"] == "session.created"
    return ws


def next_event(ws: ClientConnection, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
    return event


def until(ws: ClientConnection, *types: str) -> list[dict[str, Any]]:
    """Events up to and including the first of `types`."""
    seen = []
    while True:
        event = next_event(ws)
        seen.append(event)
        if event["type"] in types:
            return seen


def ends_with(ws: ClientConnection, code: str, close_code: int) -> None:
    """The next error event has `code`, then the server closes with `close_code`."""
    assert until(ws, "error")[-1]["error"]["code"] == code
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == close_code


def health(server: Server) -> bool:
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as answer:
        return bool(answer.status == 200)


def audit_lines(server: Server) -> list[dict[str, Any]]:
    text = server.log.with_name("audit.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def metric(server: Server, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{wanted}}}" if labels else name):
            return float(value)
    return 0.0


def _server(
    store: ModelStore, factory: pytest.TempPathFactory, name: str, *args: str, **env: str
) -> Iterator[Server]:
    """`offline-asr serve` with these settings, its audit log beside its log."""
    log = factory.mktemp(name) / "server.log"
    env["OFFLINE_ASR_AUDIT_LOG"] = str(log.with_name("audit.jsonl"))
    with running_server(store.manifest_path, *args, env=env, log=log) as server:
        yield server


@pytest.fixture(scope="module")
def live(full_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """At most two live sessions, a small buffer; whisper-tiny.en first (the default)."""
    yield from _server(
        full_store, tmp_path_factory, "live", "--model", "whisper-tiny.en",
        "--model", "gigaam-v3-ctc-testtiny", OFFLINE_ASR_REALTIME_MAX_SESSIONS="2",
        OFFLINE_ASR_REALTIME_MAX_BUFFER_BYTES=str(BUFFER_LIMIT),
    )  # fmt: skip


@pytest.fixture(scope="module")
def guarded(full_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """API keys, one allowed foreign origin, sessions of at most 3 s."""
    yield from _server(
        full_store, tmp_path_factory, "guarded", OFFLINE_ASR_API_KEYS="sesame",
        OFFLINE_ASR_CORS_ORIGINS="https://intranet.example",
        OFFLINE_ASR_REALTIME_MAX_SESSION_S="3",
    )  # fmt: skip


# -- the official SDK ------------------------------------------------------------------------


async def sdk_turns(server: Server, pcm: bytes, rate: int) -> list[Any]:
    """Stream through the SDK's realtime client in 100 ms chunks; the events of every turn."""
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused")
    events: list[Any] = []
    update: RealtimeTranscriptionSessionCreateRequestParam = {
        "type": "transcription",
        "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "whisper-tiny.en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
        }},
    }  # fmt: skip
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(session=update)
        for piece in chunks(pcm, rate):
            await conn.input_audio_buffer.append(audio=base64.b64encode(piece).decode())
        committed = done = 0
        async for event in conn:
            events.append(event)
            committed += event.type == "input_audio_buffer.committed"
            done += event.type == "conversation.item.input_audio_transcription.completed"
            if event.type == "error":
                raise AssertionError(event)
            if committed == 2 and done == 2:
                break
    return events


def test_sdk_client_streams_turns_whose_text_is_the_file_apis(live: Server) -> None:
    rate = 24_000
    pcm = pcm_of("en_short.wav", rate, 1.0) + pcm_of("en_second.wav", rate, 1.0)
    events = asyncio.run(asyncio.wait_for(sdk_turns(live, pcm, rate), 600))
    assert [e.type for e in events[:2]] == ["session.created", "session.updated"]
    items = list(dict.fromkeys(e.item_id for e in events[2:]))
    assert len(items) == 2
    for item in items:  # each turn in order (the next may start before this one's text)
        assert [e.type for e in events if getattr(e, "item_id", None) == item and not
                e.type.endswith(".delta")] == [
            "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed",
        ]  # fmt: skip
    started = [e for e in events if e.type == "input_audio_buffer.speech_started"]
    stopped = [e for e in events if e.type == "input_audio_buffer.speech_stopped"]
    completed = [e for e in events if e.type.endswith(".completed")]
    for begin, end, done in zip(started, stopped, completed, strict=True):
        assert begin.item_id == end.item_id == done.item_id
        # The turn's audio, cut where the events say, sent to the file API: the same text.
        turn = pcm[begin.audio_start_ms * rate // 1000 * 2 : end.audio_end_ms * rate // 1000 * 2]
        assert done.transcript == file_api(live, wav_bytes(turn, rate), "whisper-tiny.en")
    assert "weather" in completed[0].transcript and "kitchen" in completed[1].transcript


def test_two_sessions_get_their_own_text_and_a_third_is_refused(live: Server) -> None:
    first, second = session(live), session(live)
    third = connect(ws_url(live), open_timeout=30, legacy=True)
    ends_with(third, "session_limit_reached", 1013)

    results: dict[str, str] = {}

    def run(ws: ClientConnection, clip: str) -> None:
        ws.send(update(turn_detection=None, format={"type": "audio/pcm", "rate": 16000}))
        for piece in chunks(pcm_of(clip), 16_000):
            ws.send(append(piece))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        done = until(ws, "conversation.item.input_audio_transcription.completed")[-1]
        results[clip] = done["transcript"]
        ws.close()

    threads = [threading.Thread(target=run, args=pair)
               for pair in ((first, "en_short.wav"), (second, "en_second.wav"))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    for clip in ("en_short.wav", "en_second.wav"):
        assert results[clip] == file_api(live, (CLIPS_DIR / clip).read_bytes(), "whisper-tiny.en")
    # both places are free again
    session(live).close()


# -- the same text as the file API, for every engine ------------------------------------------


@pytest.mark.parametrize(
    ("model", "clip"),
    [("whisper-tiny.en", "en_short.wav"), ("gigaam-v3-ctc-testtiny", "ru_short.wav"),
     ("auto", "ru_short.wav")],
)  # fmt: skip
def test_a_committed_turn_is_the_file_apis_transcription_of_the_same_file(
    live: Server, model: str, clip: str
) -> None:
    with session(live) as ws:
        ws.send(update(
            turn_detection=None, format={"type": "audio/pcm", "rate": 16000},
            transcription={"model": model},
        ))  # fmt: skip
        assert until(ws, "session.updated", "error")[-1]["type"] == "session.updated"
        for piece in chunks(pcm_of(clip), 16_000):
            ws.send(append(piece))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = until(ws, "conversation.item.input_audio_transcription.completed", "error")
    done = events[-1]
    assert done["type"].endswith(".completed"), done
    data = (CLIPS_DIR / clip).read_bytes()
    assert done["transcript"] == file_api(live, data, model)
    assert done["usage"] == {
        "type": "duration",
        "seconds": pytest.approx(4.49 if "en" in clip else 4.057, abs=0.01),
    }
    # The audit line names the turn's audio by the sha256 the file API logs for the file.
    line = next(a for a in audit_lines(live) if a.get("item_id") == done["item_id"])
    assert line["event"] == "transcription" and line["outcome"] == "ok"
    assert line["audio_sha256"] == hashlib.sha256(data).hexdigest()
    assert line["session_id"].startswith("sess_") and line["fingerprint"].startswith("sha256:")
    assert isinstance(line["manifest_version"], int) and line["model_id"] != "auto"


def test_deltas_come_while_speaking_and_add_up_to_the_final_text(live: Server) -> None:
    """Streamed at the speed of speech, one long turn gets partial text before it ends."""
    pcm = pcm_of("en_short.wav", silence_s=0.3) + pcm_of("en_second.wav")
    with session(live) as ws:
        ws.send(update(turn_detection=None, format={"type": "audio/pcm", "rate": 16000}))
        until(ws, "session.updated")
        started = time.monotonic()
        for index, piece in enumerate(chunks(pcm, 16_000)):
            ws.send(append(piece))
            time.sleep(max(0.0, started + (index + 1) * CHUNK_S - time.monotonic()))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = until(ws, "conversation.item.input_audio_transcription.completed")
    deltas = [e["delta"] for e in events if e["type"].endswith(".delta")]
    committed = next(i for i, e in enumerate(events) if e["type"].endswith(".committed"))
    assert any(e["type"].endswith(".delta") for e in events[:committed]), "no delta while speaking"
    assert "".join(deltas) == events[-1]["transcript"]
    assert events[-1]["transcript"] == file_api(live, wav_bytes(pcm, 16_000), "whisper-tiny.en")


# -- bad input --------------------------------------------------------------------------------

BAD_EVENTS = [
    ("not json {", "invalid_json"),
    ("[1, 2]", "invalid_event"),
    (json.dumps({"type": "response.create"}), "invalid_value"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "%%%not base64"}), "invalid_base64"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}),
     "invalid_audio_length"),
    (json.dumps({"type": "input_audio_buffer.append"}), "invalid_value"),
    (json.dumps({"type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty"),
    (update(format={"type": "audio/pcm", "rate": 44100}), "invalid_value"),
    (update(format={"type": "audio/pcmu"}), "invalid_value"),
    (update(transcription={"model": "whisper-1"}), "model_not_found"),
    (update(transcription={"model": "whisper-tiny.en", "language": "ru"}), "unsupported_language"),
    (update(turn_detection={"type": "semantic_vad"}), "invalid_value"),
    (update(color="blue"), "invalid_value"),
    (json.dumps({"type": "session.update", "session": {"type": "realtime"}}), "invalid_value"),
]  # fmt: skip


def test_bad_input_gets_an_error_event_and_the_session_goes_on(live: Server) -> None:
    with session(live) as ws:
        for frame, code in BAD_EVENTS:
            ws.send(frame)
            event = next_event(ws)
            assert event["type"] == "error", (frame, event)
            assert event["error"]["code"] == code, (frame, event)
            assert event["error"]["message"]
        ws.send(b"\x00\x01binary")
        assert next_event(ws)["error"]["code"] == "invalid_event"
        ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "mine-1"}))
        assert next_event(ws)["error"]["event_id"] == "mine-1"  # names the event at fault
        # the session's configuration is untouched and it still transcribes
        ws.send(update(turn_detection=None, format={"type": "audio/pcm", "rate": 16000}))
        assert next_event(ws)["type"] == "session.updated"
        for piece in chunks(pcm_of("en_second.wav"), 16_000):
            ws.send(append(piece))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        done = until(ws, "conversation.item.input_audio_transcription.completed")[-1]
    assert "kitchen" in done["transcript"]
    assert health(live)


def test_audio_before_session_update_uses_the_announced_defaults(live: Server) -> None:
    """OpenAI's defaults: 24 kHz, server VAD; the model is the server's first one."""
    rate = 24_000
    pcm = pcm_of("en_short.wav", rate, 1.0)
    with connect(ws_url(live), open_timeout=30, legacy=True) as ws:
        created = next_event(ws)
        settings = created["session"]["audio"]["input"]
        assert settings["format"] == {"type": "audio/pcm", "rate": 24000}
        assert settings["transcription"]["model"] == "whisper-tiny.en"
        assert settings["turn_detection"]["type"] == "server_vad"
        for piece in chunks(pcm, rate):
            ws.send(append(piece))
        events = until(ws, "conversation.item.input_audio_transcription.completed")
    begin = next(e for e in events if e["type"].endswith("speech_started"))["audio_start_ms"]
    end = next(e for e in events if e["type"].endswith("speech_stopped"))["audio_end_ms"]
    turn = pcm[begin * rate // 1000 * 2 : end * rate // 1000 * 2]
    assert events[-1]["transcript"] == file_api(live, wav_bytes(turn, rate), "whisper-tiny.en")


def test_a_client_vanishing_mid_turn_leaves_the_server_and_other_sessions_unaffected(
    live: Server,
) -> None:
    other = session(live)
    vanishing = session(live)
    vanishing.send(update(turn_detection=None, format={"type": "audio/pcm", "rate": 16000}))
    until(vanishing, "session.updated")
    for piece in chunks(pcm_of("en_short.wav"), 16_000):
        vanishing.send(append(piece))
    vanishing.send(json.dumps({"type": "input_audio_buffer.commit"}))
    until(vanishing, "input_audio_buffer.committed")
    ident = vanishing.id  # gone without a close frame, in the middle of its turn
    vanishing.socket.shutdown(socket.SHUT_RDWR)
    vanishing.socket.close()
    assert health(live)
    # the other session is unaffected, and the vanished one's place comes free
    other.send(update(turn_detection=None, format={"type": "audio/pcm", "rate": 16000}))
    for piece in chunks(pcm_of("en_second.wav"), 16_000):
        other.send(append(piece))
    other.send(json.dumps({"type": "input_audio_buffer.commit"}))
    assert (
        "kitchen"
        in until(other, "conversation.item.input_audio_transcription.completed")[-1]["transcript"]
    )
    deadline = time.monotonic() + 120
    while True:
        newcomer = connect(ws_url(live), open_timeout=30, legacy=True)
        if next_event(newcomer)["type"] == "session.created":
            break
        newcomer.close()
        assert time.monotonic() < deadline, f"the place of {ident} was never freed"
        time.sleep(0.5)
    newcomer.close()
    other.close()
    ended = [a for a in audit_lines(live) if a["event"] == "realtime_session"]
    assert any(a["outcome"] == "ok" and a["turns"] <= 1 for a in ended)


def test_a_full_buffer_gets_an_error_event_and_a_clean_close(live: Server) -> None:
    with session(live) as ws:
        ws.send(update(turn_detection=None, format={"type": "audio/pcm", "rate": 16000}))
        until(ws, "session.updated")
        piece = bytes(32_000)  # a second of silence
        for _ in range(BUFFER_LIMIT // len(piece) + 1):
            ws.send(append(piece))
        ends_with(ws, "input_audio_buffer_too_large", 1009)
    assert health(live)
    session(live).close()


def test_metrics_count_sessions_turns_and_turn_latency(live: Server) -> None:
    turns = metric(live, "offline_asr_realtime_turns_total", model="whisper-tiny.en", outcome="ok")
    latency = metric(
        live, "offline_asr_realtime_turn_latency_seconds_count", model="whisper-tiny.en"
    )
    with session(live) as ws:
        ws.send(update(turn_detection=None, format={"type": "audio/pcm", "rate": 16000}))
        ws.send(append(pcm_of("en_second.wav")))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        until(ws, "conversation.item.input_audio_transcription.completed")
        assert metric(live, "offline_asr_realtime_sessions") >= 1
    assert metric(live, "offline_asr_realtime_turns_total", model="whisper-tiny.en",
                  outcome="ok") == turns + 1  # fmt: skip
    assert metric(live, "offline_asr_realtime_turn_latency_seconds_count",
                  model="whisper-tiny.en") == latency + 1  # fmt: skip
    assert metric(live, "offline_asr_realtime_sessions_ended_total", reason="client_closed") >= 1


# -- keys, origins, session length --------------------------------------------------------------


def test_api_key_by_header_or_by_the_browsers_subprotocol(guarded: Server) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(guarded), open_timeout=30)
    assert refused.value.response.status_code == 401
    assert b"invalid_api_key" in refused.value.response.body
    with pytest.raises(InvalidStatus):
        connect(ws_url(guarded), additional_headers={"Authorization": "Bearer wrong"})
    with session(guarded, additional_headers={"Authorization": "Bearer sesame"}) as ws:
        ws.send(update(turn_detection=None))
        assert next_event(ws)["type"] == "session.updated"
    offered = ["realtime", "openai-insecure-api-key.sesame"]
    with session(guarded, subprotocols=offered) as ws:
        assert ws.subprotocol == "realtime"  # never the one that carries the key
    refusals = [a for a in audit_lines(guarded) if a.get("error_code") == "invalid_api_key"]
    assert len(refusals) == 2 and all("sesame" not in json.dumps(a) for a in audit_lines(guarded))


def test_pages_of_other_origins_cannot_open_sessions(guarded: Server) -> None:
    key = {"Authorization": "Bearer sesame"}
    with pytest.raises(InvalidStatus):
        connect(ws_url(guarded), additional_headers={**key, "Origin": "https://evil.example"})
    session(guarded, additional_headers={**key, "Origin": "https://intranet.example"}).close()
    session(guarded, additional_headers={**key, "Origin": guarded.url}).close()


def test_a_session_ends_at_its_maximum_length_with_an_error_event(guarded: Server) -> None:
    with session(guarded, additional_headers={"Authorization": "Bearer sesame"}) as ws:
        ends_with(ws, "session_expired", 1000)
    assert health(guarded)


# -- offline-asr listen -----------------------------------------------------------------------


def test_listen_prints_each_turn_as_the_server_transcribes_it(live: Server, tmp_path: Path) -> None:
    recording = tmp_path / "two.wav"
    recording.write_bytes(
        wav_bytes(pcm_of("en_short.wav", silence_s=1.0) + pcm_of("en_second.wav"), 16_000)
    )
    done = subprocess.run(
        [str(EXE), "listen", str(recording), "--url", live.url, "--speed", "0"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and "weather" in lines[0] and "kitchen" in lines[1]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [(["--model", "nope"], 2, "does not exist"),
     (["--url", "http://127.0.0.1:9"], 1, "cannot reach")],
)  # fmt: skip
def test_listen_says_what_is_wrong(live: Server, args: list[str], code: int, message: str) -> None:
    done = subprocess.run(
        [str(EXE), "listen", str(CLIPS_DIR / "en_short.wav"), "--url", live.url, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == code and message in done.stderr, done.stderr
