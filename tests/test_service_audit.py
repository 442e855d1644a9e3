"""The audit trail of a real server: one line per API request, with the answer the client got.

About 150 requests of every kind (200, 400, 401, 404, 413, 429, malformed multipart, 504 and
clients that leave) go to one server with API keys, one slot, no queue and a 1-s time limit;
each carries its own X-Request-ID. Then each must have exactly one request line, whose status
and error code are the ones the client saw, and whose key id is the HMAC of the key under the
server's secret. A transcription stopped by the time limit is logged as the 504 it was, and its
worker's end as a separate `cancellation` line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from offline_asr.asr.audit import load_secret
from offline_asr.constants import CLIPS_DIR
from offline_asr.errors import OfflineAsrError
from offline_asr.registry.store import ModelStore
from support.audio_fixtures import long_speech_wav
from support.server import Server, running_server

pytestmark = pytest.mark.slow

FAST = "gigaam-v3-ctc-testtiny"  # about 0.1 s per short clip
SLOW = "whisper-tiny.en"  # minutes of speech: far over the time limit
KEYS = ("sk-audit-5c1e0b2a-first-key", "sk-audit-9d7f3e61-second-key")
WRONG_KEY = "sk-audit-00aa11bb-wrong-key"
MAX_UPLOAD = 8_000_000
TIME_LIMIT_S = 1.0
TRANSCRIPTIONS = "/v1/audio/transcriptions"
SHORT = (CLIPS_DIR / "ru_short.wav").read_bytes()
REQUEST_LINES = ("request", "transcription")


def auth(key: str = KEYS[0]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Audited:
    server: Server
    audit: Path
    env: dict[str, str]
    long_wav: bytes

    def entries(self) -> list[dict[str, Any]]:
        lines = self.audit.read_text("utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def _server(store: ModelStore, folder: Path, env: dict[str, str], name: str) -> Any:
    return running_server(store.manifest_path, "--model", FAST, "--model", SLOW, env=env,
                          log=folder / f"{name}.log")  # fmt: skip


@pytest.fixture(scope="module")
def audited(full_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    folder = tmp_path_factory.mktemp("audited")
    env = {
        "OFFLINE_ASR_API_KEYS": ",".join(KEYS),
        "OFFLINE_ASR_AUDIT_LOG": str(folder / "audit.jsonl"),
        "OFFLINE_ASR_MAX_CONCURRENCY": "1",
        "OFFLINE_ASR_MAX_QUEUE": "0",
        "OFFLINE_ASR_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "OFFLINE_ASR_REQUEST_TIMEOUT_S": str(TIME_LIMIT_S),
    }
    long_wav = long_speech_wav(folder / "five-minutes.wav", 300).read_bytes()
    with _server(full_store, folder, env, "server") as server:
        yield Audited(server, folder / "audit.jsonl", env, long_wav)


# --- what the clients saw ----------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    request_id: str
    kind: str
    status: int | None  # None: the client gave up before an answer
    code: str | None  # the OpenAI error code in the answer, if any
    key: str | None = None  # the key sent, when it was a valid one


def _code(response: httpx.Response) -> str | None:
    """The error code of a JSON error body or of a stream's error event."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            event = json.loads(line.removeprefix("data: ")) if line.startswith("data: ") else {}
            if "error" in event:
                return str(event["error"]["code"])
        return None
    if response.status_code < 400:
        return None
    code = response.json()["error"]["code"]
    return None if code is None else str(code)


class Mix:
    """Sends requests, each with its own X-Request-ID, and remembers what came back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._count = 0

    def _id(self, kind: str) -> str:
        with self._lock:
            self._count += 1
            return f"mix-{self._count:03d}-{kind}"

    def send(self, kind: str, method: str, path: str, *, key: str | None = KEYS[0],
             timeout: float = 60, **kwargs: Any) -> Seen:  # fmt: skip
        request_id = self._id(kind)
        headers = {"X-Request-ID": request_id, **kwargs.pop("headers", {})}
        if key is not None:
            headers.update(auth(key))
        valid_key = key if key in KEYS else None
        try:
            with httpx.Client(base_url=self.url, timeout=timeout, trust_env=False) as client:
                response = client.request(method, path, headers=headers, **kwargs)
            seen = Seen(request_id, kind, response.status_code, _code(response), valid_key)
        except httpx.TimeoutException:
            seen = Seen(request_id, kind, None, None, valid_key)
        with self._lock:
            self.seen.append(seen)
        return seen

    def transcribe(self, kind: str, data: dict[str, str], file: bytes = SHORT,
                   **kwargs: Any) -> Seen:  # fmt: skip
        files = {"file": ("audio.wav", file, "audio/wav")}
        return self.send(kind, "POST", TRANSCRIPTIONS, data=data, files=files, **kwargs)

    def raw(self, kind: str, content_type: str, body: bytes) -> Seen:
        return self.send(kind, "POST", TRANSCRIPTIONS, content=body,
                         headers={"content-type": content_type})  # fmt: skip


def _multipart(boundary: str) -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{FAST}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + SHORT
        + f"\r\n--{boundary}--\r\n".encode()
    )


def _chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 65_536):
        yield body[start : start + 65_536]


def in_flight(url: str) -> float:
    text = httpx.get(f"{url}/metrics", headers=auth(), timeout=10, trust_env=False).text
    values = [line.split()[-1] for line in text.splitlines() if line.startswith("offline_asr_in_")]
    return float(values[0])


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def send_mix(audited: Audited) -> Mix:
    mix = Mix(audited.server.url)
    formats = ("json", "text", "srt", "verbose_json", "vtt")
    for index in range(20):
        data = {"model": FAST, "response_format": formats[index % 5]}
        mix.transcribe("ok", data, key=KEYS[index % 2])
    for _ in range(5):
        mix.transcribe("ok-stream", {"model": FAST, "stream": "true"})
        mix.send("ok-models", "GET", "/v1/models", key=KEYS[1])
    for index in range(10):
        bad = (b"not a recording\n" * 99, b"", SHORT[: len(SHORT) // 2])[index % 3]
        mix.transcribe("bad-audio", {"model": FAST}, file=bad)
    for _ in range(5):
        mix.transcribe("bad-value", {"model": FAST, "temperature": "3"})
        mix.transcribe("bad-audio-stream", {"model": FAST, "stream": "true"}, file=SHORT[:9000])
    for index in range(10):
        mix.transcribe("no-key", {"model": FAST}, key=None)
        path = "/v1/models" if index % 2 else "/v1/no-such-route"
        mix.send("wrong-key", "GET", path, key=WRONG_KEY)
    for index in range(10):
        mix.transcribe("unknown-model", {"model": "whisper-nonexistent"})
        mix.send("unknown-route", ("GET", "POST")[index % 2], f"/v1/unknown/{index}")
    big = os.urandom(MAX_UPLOAD + 500_000)
    for _ in range(10):
        mix.transcribe("too-large", {"model": FAST}, file=big)
    for _ in range(3):
        body = _multipart("chunkb0undary").replace(SHORT, big)
        chunked = {"content-type": "multipart/form-data; boundary=chunkb0undary"}
        mix.send("too-large-chunked", "POST", TRANSCRIPTIONS, content=_chunks(body),
                 headers=chunked)  # fmt: skip
    for _ in range(4):
        mix.raw("malformed", "multipart/form-data; boundary=expected", _multipart("different"))
        mix.raw("malformed", "multipart/form-data", _multipart("b0undary"))
        mix.raw("malformed", "multipart/form-data; boundary=b0undary", _multipart("b0undary")[:300])
    mix.raw("malformed", "application/json", json.dumps({"model": FAST}).encode())
    for _ in range(2):
        _over_the_time_limit_while_others_are_refused(audited, mix)
        assert wait_until(lambda: in_flight(mix.url) == 0, 120), "the slot never came back"
    for _ in range(2):  # clients that give up first
        mix.transcribe("gave-up", {"model": SLOW}, file=audited.long_wav, timeout=TIME_LIMIT_S / 3)
        assert wait_until(lambda: in_flight(mix.url) == 0, 120), "the slot never came back"
    for path in ("/health", "/ready", "/metrics", "/"):  # not audited
        assert httpx.get(mix.url + path, headers=auth(), trust_env=False).status_code == 200
    return mix


def _over_the_time_limit_while_others_are_refused(audited: Audited, mix: Mix) -> None:
    """A long transcription takes the only slot and gets a 504; requests meanwhile get 429."""
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(mix.transcribe, "over-time", {"model": SLOW}, file=audited.long_wav)
        assert wait_until(lambda: in_flight(mix.url) == 1, 60)
        for _ in range(15):
            mix.transcribe("busy", {"model": FAST})
        assert slow.result().status == 504


@pytest.fixture(scope="module")
def mix(audited: Audited) -> Mix:
    sent = send_mix(audited)
    # A stopped transcription's `cancellation` line is written when its worker ends.
    stopped = sum(seen.kind in ("over-time", "gave-up") for seen in sent.seen)
    assert wait_until(
        lambda: sum(e["event"] == "cancellation" for e in audited.entries()) >= stopped, 60
    )
    return sent


# --- the log -----------------------------------------------------------------------------


def request_lines(audited: Audited) -> dict[str, list[dict[str, Any]]]:
    lines: dict[str, list[dict[str, Any]]] = {}
    for entry in audited.entries():
        if entry["event"] in REQUEST_LINES:
            lines.setdefault(entry["request_id"], []).append(entry)
    return lines


def test_every_request_has_exactly_one_line_with_what_the_client_saw(
    audited: Audited, mix: Mix
) -> None:
    statuses = Counter(seen.status for seen in mix.seen)
    print(f"\n{len(mix.seen)} requests: {dict(statuses)}")
    assert len(mix.seen) >= 150
    assert {200, 400, 401, 404, 413, 429, 504, None} <= set(statuses), statuses
    lines = request_lines(audited)
    problems = []
    for seen in mix.seen:
        found = lines.pop(seen.request_id, [])
        if len(found) != 1:
            problems.append(f"{seen}: {len(found)} lines")
            continue
        entry = found[0]
        logged = (entry["status"], entry["error_code"])
        if logged != (seen.status, seen.code):
            problems.append(f"{seen}: logged status and code {logged}")
        ok = seen.status == 200 and seen.code is None
        if entry["outcome"] != ("ok" if ok else "error"):
            problems.append(f"{seen}: outcome {entry['outcome']!r}")
        if entry["client"] != "127.0.0.1" or not entry["path"].startswith("/v1/"):
            problems.append(f"{seen}: client {entry['client']!r}, path {entry['path']!r}")
    assert not problems, "\n".join(problems[:30])
    assert not lines, f"lines for requests nobody sent: {sorted(lines)[:10]}"


def test_transcription_lines_carry_the_model_and_the_audio(audited: Audited, mix: Mix) -> None:
    lines = request_lines(audited)
    for seen in mix.seen:
        entry = lines[seen.request_id][0]
        if seen.kind in ("ok", "ok-stream"):
            assert entry["event"] == "transcription", entry
            assert entry["model_id"] == FAST and entry["fingerprint"].startswith("sha256:"), entry
            assert len(entry["audio_sha256"]) == 64 and entry["duration_s"] > 0, entry
        elif seen.kind in ("no-key", "wrong-key", "too-large", "malformed", "unknown-route"):
            assert entry.get("model_id") is None, entry  # refused before any model was chosen


def test_a_request_stopped_by_the_time_limit_is_logged_as_its_504(
    audited: Audited, mix: Mix
) -> None:
    lines = request_lines(audited)
    stopped = {e["request_id"]: e for e in audited.entries() if e["event"] == "cancellation"}
    for seen in mix.seen:
        if seen.kind not in ("over-time", "gave-up"):
            continue
        entry = lines[seen.request_id][0]
        reason = "timeout" if seen.kind == "over-time" else "client_disconnected"
        assert entry["cancelled"] == reason, entry
        assert entry["status"] == (504 if reason == "timeout" else None), entry
        assert entry["model_id"] == SLOW and len(entry["audio_sha256"]) == 64, entry
        end = stopped[seen.request_id]
        assert end["reason"] == reason and end["stopped_early"] is True, end
        assert end["slot_held_s"] >= 0, end


def test_key_ids_are_keyed_hashes_under_the_servers_secret(audited: Audited, mix: Mix) -> None:
    secret_file = audited.audit.with_name("audit.jsonl.secret")
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = bytes.fromhex(secret_file.read_text().strip())
    assert len(secret) == 32
    lines = request_lines(audited)
    for seen in mix.seen:  # also for requests refused before the key was checked (413...)
        entry = lines[seen.request_id][0]
        if seen.key is None:
            assert entry["api_key_id"] is None, entry
            continue
        expected = hmac.new(secret, seen.key.encode(), hashlib.sha256).hexdigest()[:16]
        assert entry["api_key_id"] == expected, entry
        assert hashlib.sha256(seen.key.encode()).hexdigest()[:8] not in entry["api_key_id"]
    text = audited.audit.read_text("utf-8")
    for key in (*KEYS, WRONG_KEY):
        assert key not in text and key.split("-")[2] not in text


def test_key_ids_stay_the_same_across_restarts(
    audited: Audited, mix: Mix, full_store: ModelStore
) -> None:
    """Another server process with the same audit log reads the same secret."""
    first = {
        seen.key: request_lines(audited)[seen.request_id][0]["api_key_id"]
        for seen in mix.seen
        if seen.kind == "ok"
    }
    with _server(full_store, audited.audit.parent, audited.env, "restarted") as again:
        again_mix = Mix(again.url)
        for key in KEYS:
            seen = again_mix.transcribe("restarted", {"model": FAST}, key=key)
            assert seen.status == 200
            assert request_lines(audited)[seen.request_id][0]["api_key_id"] == first[key]


# --- the secret file ---------------------------------------------------------------------


def test_the_secret_is_created_once_with_mode_600(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.jsonl.secret"
    secret = load_secret(path)
    assert len(secret) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(path) == secret


def test_a_secret_others_can_read_or_that_is_not_a_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl.secret"
    load_secret(path)
    path.chmod(0o644)
    with pytest.raises(OfflineAsrError, match="chmod 600"):
        load_secret(path)
    path.write_text("not hex\n")
    path.chmod(0o600)
    with pytest.raises(OfflineAsrError, match="64 hex digits"):
        load_secret(path)


def test_a_secret_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "logs").write_text("a file where the folder should be")
    with pytest.raises(OfflineAsrError, match="cannot create the audit secret"):
        load_secret(tmp_path / "logs" / "audit.jsonl.secret")
