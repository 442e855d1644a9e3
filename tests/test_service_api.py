"""The HTTP API against a real `offline-asr serve` on loopback.

OpenAI's own client reads every answer; every bad input is a 4xx in OpenAI's error shape and the
server keeps serving; a store with altered weights never opens the port; settings follow
flags > environment > TOML file > defaults; the audit log has one line per request.

Most tests share the session's `server`. One module-scoped server, started with the plan's command
(`APP_MODEL_ID=whisper-tiny.en python app/main.py ...`), has small limits and API keys; the
startup gate starts a server that must fail.
"""

from __future__ import annotations

import hmac
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
import warnings
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
import srt
import webvtt
from openai.types.audio import (
    Transcription,
    TranscriptionSegment,
    TranscriptionVerbose,
    TranscriptionWord,
)
from openai.types.audio.transcription import UsageDuration
from openai.types.audio.transcription_text_delta_event import TranscriptionTextDeltaEvent
from openai.types.audio.transcription_text_done_event import TranscriptionTextDoneEvent
from typer.testing import CliRunner

import offline_asr.service.server as server_module
from offline_asr.asr.base import fingerprint
from offline_asr.asr.smoke import word_error_rate
from offline_asr.cli import app
from offline_asr.constants import CLIPS_DIR, DEFAULT_BUNDLE_HINT, VERIFY_CACHE_NAME
from offline_asr.registry.store import ModelStore
from offline_asr.service.settings import ServiceSettings
from support.helpers import REPO
from support.server import Server, free_port, serve_process

pytestmark = pytest.mark.slow

TINY = "whisper-tiny.en"
BASE = "whisper-base"
GIGAAM = "gigaam-v3-ctc-testtiny"
EN = CLIPS_DIR / "en_short.wav"
RU = CLIPS_DIR / "ru_short.wav"
REFERENCES: dict[str, str] = json.loads((CLIPS_DIR / "references.json").read_text("utf-8"))
EN_TEXT = REFERENCES[EN.name]
TRANSCRIPTIONS = "/v1/audio/transcriptions"
WER_BOUND = 0.15

# The restricted server's settings.
MAX_UPLOAD = 200_000
MAX_SECONDS = 2
KEYS = ("sk-test-4f1c9a77-first-key", "sk-test-b83e2d05-second-key")
WRONG_KEY = "sk-test-0d9e6c31-wrong-key"

# Settings the tests set themselves: a value from the developer's shell must not leak in.
SETTINGS_ENV = ("APP_MODEL_ID", "MODEL_REGISTRY_PATH", "OFFLINE_ASR_CONFIG")


# ---------------------------------------------------------------------------------------------
# Helpers


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as reader:
        return reader.getnframes() / reader.getframerate()


def wav_head(path: Path, seconds: float) -> bytes:
    """The first `seconds` of a WAV file as a complete WAV file of its own."""
    with wave.open(str(path), "rb") as reader:
        params = reader.getparams()
        frames = reader.readframes(int(seconds * reader.getframerate()))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setparams(params)
        writer.writeframes(frames)
    return buffer.getvalue()


# 1.5 s of Russian speech: under the restricted server's length and size limits.
SHORT_RU = wav_head(RU, 1.5)


def clean_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OFFLINE_ASR_") or name in SETTINGS_ENV:
            monkeypatch.delenv(name)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a server process: ours without service settings, plus `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("OFFLINE_ASR_") and name not in SETTINGS_ENV
    }
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def assert_openai_error(
    response: httpx.Response,
    status: int,
    *,
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}` with the status, as JSON."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    expected_type = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        expected_type = "rate_limit_exceeded"
    assert error["type"] == expected_type, error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def assert_serving(http: httpx.Client, headers: dict[str, str] | None = None) -> None:
    """A good transcription (the GigaAM test model: fast) still gets 200 with a transcript."""
    response = http.post(
        TRANSCRIPTIONS,
        files={"file": ("short.wav", SHORT_RU, "audio/wav")},
        data={"model": GIGAAM},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["text"], str)


def audit_entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def multipart(boundary: str, fields: dict[str, str], file: tuple[str, bytes] | None) -> bytes:
    """A hand-made multipart/form-data body, so tests can break it on purpose."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    if file is not None:
        name, data = file
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"'
            f"\r\nContent-Type: audio/wav\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[openai.OpenAI]:
    """OpenAI's client pointed at the shared server (no retries: a failure shows at once)."""
    with openai.OpenAI(
        base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120
    ) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as session:
        yield session


@dataclass
class Restricted:
    server: Server
    command: list[str]
    http: httpx.Client
    audit: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEYS[0]}"}


@pytest.fixture(scope="module")
def restricted(
    full_store: ModelStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Restricted]:
    """The plan's command, `APP_MODEL_ID=whisper-tiny.en python app/main.py --manifest <store>
    --port P`, with a 200 kB upload limit, a 2 s audio limit and two API keys in the
    environment (one server start for all of these)."""
    folder = tmp_path_factory.mktemp("restricted")
    audit = folder / "audit.jsonl"
    log = folder / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "app/main.py", "--manifest", str(full_store.manifest_path),
               "--port", str(port)]  # fmt: skip
    env = child_env(
        APP_MODEL_ID=TINY,
        OFFLINE_ASR_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        OFFLINE_ASR_MAX_AUDIO_SECONDS=str(MAX_SECONDS),
        OFFLINE_ASR_API_KEYS=",".join(KEYS),
        OFFLINE_ASR_AUDIT_LOG=str(audit),
    )
    with (
        serve_process(command, env=env, log=log, url=url, cwd=REPO) as process,
        httpx.Client(base_url=url, timeout=120) as session,
    ):
        yield Restricted(Server(url, process, log), command, session, audit)


# ---------------------------------------------------------------------------------------------
# 1. OpenAI's client


def test_json_transcription(client: openai.OpenAI) -> None:
    result = client.audio.transcriptions.create(file=EN, model=TINY, response_format="json")
    assert isinstance(result, Transcription)
    assert word_error_rate(EN_TEXT, result.text) <= WER_BOUND, result.text
    assert isinstance(result.usage, UsageDuration), result.usage
    assert result.usage.seconds == math.ceil(wav_seconds(EN))
    provenance = (result.model_extra or {})["x_offline_asr"]
    assert provenance["model_id"] == TINY
    assert provenance["fingerprint"].startswith("sha256:")
    assert provenance["options"]["task"] == "transcribe"


def test_text_transcription(client: openai.OpenAI) -> None:
    text = client.audio.transcriptions.create(file=EN, model=TINY, response_format="text")
    assert isinstance(text, str)
    assert not text.lstrip().startswith("{"), text  # plain text, not JSON
    assert word_error_rate(EN_TEXT, text) <= WER_BOUND, text


def test_verbose_json_with_word_and_segment_timestamps(client: openai.OpenAI) -> None:
    result = client.audio.transcriptions.create(
        file=EN, model=TINY, response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )  # fmt: skip
    assert isinstance(result, TranscriptionVerbose)
    duration = wav_seconds(EN)
    assert result.language == "english"
    assert result.duration == pytest.approx(duration, abs=0.1)
    assert word_error_rate(EN_TEXT, result.text) <= WER_BOUND, result.text

    assert result.segments, "no segments"
    for segment in result.segments:
        assert isinstance(segment, TranscriptionSegment)
        assert 0 <= segment.start < segment.end <= duration + 0.5, segment
        assert segment.tokens and segment.text.strip(), segment
    segment_text = "".join(segment.text for segment in result.segments)
    assert word_error_rate(EN_TEXT, segment_text) <= WER_BOUND, segment_text

    assert result.words, "no words"
    for word in result.words:
        assert isinstance(word, TranscriptionWord)
        assert 0 <= word.start <= word.end <= duration + 0.5, word
    starts = [word.start for word in result.words]
    assert starts == sorted(starts)
    spoken = " ".join(word.word for word in result.words)
    assert word_error_rate(EN_TEXT, spoken) <= WER_BOUND, spoken


def test_srt_transcription(client: openai.OpenAI) -> None:
    body = client.audio.transcriptions.create(file=EN, model=TINY, response_format="srt")
    assert isinstance(body, str)
    cues = list(srt.parse(body))
    assert cues, body
    assert all(cue.start <= cue.end for cue in cues)
    assert cues[-1].end.total_seconds() <= wav_seconds(EN) + 0.5
    text = " ".join(cue.content for cue in cues)
    assert word_error_rate(EN_TEXT, text) <= WER_BOUND, body


def test_vtt_transcription(client: openai.OpenAI) -> None:
    body = client.audio.transcriptions.create(file=EN, model=TINY, response_format="vtt")
    assert isinstance(body, str)
    assert body.startswith("WEBVTT"), body
    captions = webvtt.from_string(body).captions
    assert captions, body
    text = " ".join(caption.text for caption in captions)
    assert word_error_rate(EN_TEXT, text) <= WER_BOUND, body


@dataclass
class Streamed:
    deltas: list[str]
    done: TranscriptionTextDoneEvent
    types: list[str]


@pytest.fixture(scope="module")
def streamed(client: openai.OpenAI) -> Streamed:
    """One streamed transcription of the English clip, read by OpenAI's client."""
    deltas: list[str] = []
    done: list[TranscriptionTextDoneEvent] = []
    types: list[str] = []
    stream = client.audio.transcriptions.create(file=EN, model=TINY, stream=True)
    for event in stream:
        types.append(event.type)
        if isinstance(event, TranscriptionTextDeltaEvent):
            deltas.append(event.delta)
        elif isinstance(event, TranscriptionTextDoneEvent):
            done.append(event)
    assert len(done) == 1, types
    return Streamed(deltas, done[0], types)


def test_stream_sends_deltas_then_done(streamed: Streamed) -> None:
    types = streamed.types
    assert types[-1] == "transcript.text.done", types
    assert types[:-1] and set(types[:-1]) == {"transcript.text.delta"}, types
    assert word_error_rate(EN_TEXT, streamed.done.text) <= WER_BOUND, streamed.done.text
    # Same words either way; the exact-bytes check is the next test.
    assert "".join(streamed.deltas).split() == streamed.done.text.split()
    # OpenAI's stream bills tokens; this server bills whole seconds, as in its JSON answers.
    usage = streamed.done.usage
    assert usage is not None
    assert usage.to_dict() == {"type": "duration", "seconds": math.ceil(wav_seconds(EN))}


def test_stream_deltas_concatenate_to_the_done_text(streamed: Streamed) -> None:
    """A client that appends the deltas must end up with exactly the final text."""
    assert "".join(streamed.deltas) == streamed.done.text, (
        "service/app.py `_events` sends each segment's raw text as a delta (Whisper's segments "
        "start with a space) while the done event carries the stripped `result.text`"
    )


def test_translation_with_whisper_tiny_en(client: openai.OpenAI) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # this SDK marks the route old
        result = client.audio.translations.create(file=EN, model=TINY)
    assert word_error_rate(EN_TEXT, result.text) <= WER_BOUND, result.text
    assert (result.model_extra or {})["x_offline_asr"]["options"]["task"] == "translate"


def test_translation_with_gigaam_is_a_400(client: openai.OpenAI) -> None:
    with warnings.catch_warnings(), pytest.raises(openai.BadRequestError) as caught:
        warnings.simplefilter("ignore", DeprecationWarning)
        client.audio.translations.create(file=RU, model=GIGAAM)
    error = caught.value
    assert error.status_code == 400
    assert error.type == "invalid_request_error" and error.code == "unsupported"
    body = error.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "translate" in body["error"]["message"], body


def test_models_list(client: openai.OpenAI, full_store: ModelStore) -> None:
    manifest = full_store.load()
    models = {model.id: model for model in client.models.list()}
    assert set(models) == {m.id for m in manifest.models} | {"auto"}
    for model_id in (TINY, BASE, GIGAAM):
        model = models[model_id]
        assert model.object == "model"
        extra = model.model_extra or {}
        assert extra["manifest_version"] == manifest.manifest_version, extra
        assert extra["fingerprint"] == fingerprint(full_store.get(manifest, model_id)), extra
        assert extra["engine"] == full_store.get(manifest, model_id).engine
    assert (models[TINY].model_extra or {})["loaded"] is True  # preloaded by the fixture
    assert (models["auto"].model_extra or {})["engine"] == "router"


# ---------------------------------------------------------------------------------------------
# 2. Bad input: a 4xx in OpenAI's shape, and the server keeps serving


EN_BYTES = EN.read_bytes()
EN_FILE = ("en.wav", EN_BYTES)
GOOD = {"model": TINY}


@dataclass(frozen=True)
class Bad:
    """A bad request: what to send (form fields and file, or a raw body), the error expected."""

    status: int
    code: str | None = None
    param: str | None = None
    data: dict[str, str] = field(default_factory=lambda: dict(GOOD))
    file: tuple[str, bytes] | None = EN_FILE
    raw: tuple[str, bytes] | None = None  # (content type, body), sent as is

    def send(self, http: httpx.Client) -> httpx.Response:
        if self.raw is not None:
            content_type, body = self.raw
            return http.post(TRANSCRIPTIONS, content=body, headers={"content-type": content_type})
        files = None if self.file is None else {"file": (*self.file, "audio/wav")}
        return http.post(TRANSCRIPTIONS, data=self.data, files=files)


def _form(boundary: str) -> bytes:
    return multipart(boundary, GOOD, EN_FILE)


BAD_REQUESTS: dict[str, Bad] = {
    "no file": Bad(400, "invalid_value", "file", file=None),
    "no model": Bad(400, "invalid_value", "model", data={}),
    "empty file": Bad(400, "EmptyAudioError", "file", file=("empty.wav", b"")),
    "not audio": Bad(400, "NotAudioError", "file", file=("notes.wav", b"not a recording\n" * 99)),
    "truncated wav": Bad(
        400, "TruncatedAudioError", "file", file=("cut.wav", EN_BYTES[: len(EN_BYTES) // 2])
    ),
    "garbage after a wav header": Bad(
        400, "CorruptAudioError", "file", file=("bad.wav", EN_BYTES[:12] + bytes(range(256)) * 20)
    ),
    "unknown model": Bad(404, "model_not_found", "model", data={"model": "whisper-nonexistent"}),
    "unknown response_format": Bad(
        400, "invalid_value", "response_format", data={**GOOD, "response_format": "docx"}
    ),
    "language the model lacks": Bad(
        400, "unsupported_language", "language", data={**GOOD, "language": "ru"}
    ),
    "temperature out of range": Bad(
        400, "invalid_value", "temperature", data={**GOOD, "temperature": "3"}
    ),
    "unknown timestamp granularity": Bad(
        400, "invalid_value", data={**GOOD, "timestamp_granularities[]": "character"}
    ),
    "multipart with a broken boundary": Bad(
        400, raw=("multipart/form-data; boundary=expected", _form("different"))
    ),
    "multipart without a boundary": Bad(400, raw=("multipart/form-data", _form("b0undary"))),
    "multipart cut off mid-file": Bad(
        400, raw=("multipart/form-data; boundary=b0undary", _form("b0undary")[:5000])
    ),
    "json instead of multipart": Bad(
        400, raw=("application/json", json.dumps({"model": TINY}).encode())
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
def test_bad_input_is_a_4xx_and_the_server_keeps_serving(
    http: httpx.Client, server: Server, case: Bad
) -> None:
    response = case.send(http)
    assert_openai_error(response, case.status, code=case.code, param=case.param)
    assert server.process.poll() is None, server.output()
    assert_serving(http)


def test_streamed_bad_input_raises_in_the_client(client: openai.OpenAI, http: httpx.Client) -> None:
    """With stream=true the error arrives as an event; OpenAI's client raises it."""
    with pytest.raises(openai.APIError) as caught:
        for _ in client.audio.transcriptions.create(
            file=("cut.wav", EN_BYTES[: len(EN_BYTES) // 2]), model=TINY, stream=True
        ):
            pass
    assert isinstance(caught.value.body, dict), caught.value.body
    assert caught.value.body["code"] == "TruncatedAudioError"
    assert "cut short" in caught.value.message
    assert_serving(http)


# --- limits, on the restricted server


def test_upload_over_the_limit_is_a_413(restricted: Restricted) -> None:
    big = os.urandom(1_000_000)
    response = restricted.http.post(
        TRANSCRIPTIONS, files={"file": ("big.wav", big, "audio/wav")}, data=GOOD,
        headers=restricted.auth,
    )  # fmt: skip
    assert "content-length" in response.request.headers
    assert_openai_error(response, 413, code="file_too_large", param="file")
    assert_serving(restricted.http, restricted.auth)


def test_file_just_over_the_limit_is_a_413(restricted: Restricted) -> None:
    """Within the multipart allowance of the body limit, but over the file limit."""
    padded = EN_BYTES + bytes(MAX_UPLOAD + 10_000 - len(EN_BYTES))
    response = restricted.http.post(
        TRANSCRIPTIONS, files={"file": ("padded.wav", padded, "audio/wav")}, data=GOOD,
        headers=restricted.auth,
    )  # fmt: skip
    assert_openai_error(response, 413, code="file_too_large", param="file")
    assert_serving(restricted.http, restricted.auth)


def _chunked(body: bytes, size: int = 65_536) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _post_chunked(restricted: Restricted, body: bytes, boundary: str) -> httpx.Response:
    response = restricted.http.post(
        TRANSCRIPTIONS, content=_chunked(body),
        headers={**restricted.auth, "content-type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    assert "content-length" not in response.request.headers
    assert response.request.headers.get("transfer-encoding") == "chunked"
    return response


def test_chunked_upload_within_the_limit_is_transcribed(restricted: Restricted) -> None:
    body = multipart("chunk5b0undary", {"model": GIGAAM}, ("short.wav", SHORT_RU))
    response = _post_chunked(restricted, body, "chunk5b0undary")
    assert response.status_code == 200, response.text


def test_chunked_upload_over_the_limit_is_a_413(restricted: Restricted) -> None:
    """No Content-Length: the limit must hold while the body is read."""
    body = multipart("chunk5b0undary", GOOD, ("big.wav", os.urandom(1_000_000)))
    response = _post_chunked(restricted, body, "chunk5b0undary")
    assert_openai_error(response, 413, code="file_too_large", param="file")
    assert_serving(restricted.http, restricted.auth)


def test_audio_over_the_length_limit_is_a_400(restricted: Restricted) -> None:
    assert wav_seconds(EN) > MAX_SECONDS and len(EN_BYTES) < MAX_UPLOAD
    response = restricted.http.post(
        TRANSCRIPTIONS, files={"file": ("en.wav", EN_BYTES, "audio/wav")}, data=GOOD,
        headers=restricted.auth,
    )  # fmt: skip
    error = assert_openai_error(response, 400, code="AudioTooLongError", param="file")
    assert "OFFLINE_ASR_MAX_AUDIO_SECONDS" in error["message"]
    assert_serving(restricted.http, restricted.auth)


# --- API keys, on the restricted server


def _transcribe_short(restricted: Restricted, headers: dict[str, str]) -> httpx.Response:
    return restricted.http.post(
        TRANSCRIPTIONS, files={"file": ("short.wav", SHORT_RU, "audio/wav")},
        data={"model": GIGAAM}, headers=headers,
    )  # fmt: skip


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Bearer {WRONG_KEY}"},
        {"Authorization": "Bearer"},
        {"Authorization": KEYS[0]},  # no scheme
        {"Authorization": f"Basic {KEYS[0]}"},
        {"Authorization": f"Bearer {KEYS[0]}x"},
    ],
    ids=["no key", "wrong key", "empty key", "no scheme", "basic scheme", "key with a suffix"],
)
def test_requests_without_a_valid_key_are_a_401(
    restricted: Restricted, headers: dict[str, str]
) -> None:
    response = _transcribe_short(restricted, headers)
    assert_openai_error(response, 401, code="invalid_api_key")
    models = restricted.http.get("/v1/models", headers=headers)
    assert_openai_error(models, 401, code="invalid_api_key")


def test_either_key_is_accepted_and_health_stays_open(restricted: Restricted) -> None:
    for key in KEYS:
        response = _transcribe_short(restricted, {"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        models = restricted.http.get("/v1/models", headers={"Authorization": f"bearer {key}"})
        assert models.status_code == 200, models.text
    for path in ("/health", "/ready"):
        assert restricted.http.get(path).status_code == 200, path


def test_with_keys_metrics_needs_one_and_the_pages_stay_open(restricted: Restricted) -> None:
    """With keys, what carries data or does work needs one: /v1/* and /metrics (model ids,
    traffic, errors). What is the same on every install stays open: /health, /ready, the web
    page and its files (it asks for the key), /docs, its files and /openapi.json."""
    for headers in ({}, {"Authorization": f"Bearer {WRONG_KEY}"}):
        assert_openai_error(restricted.http.get("/metrics", headers=headers), 401,
                            code="invalid_api_key")  # fmt: skip
    metrics = restricted.http.get("/metrics", headers=restricted.auth)
    assert metrics.status_code == 200 and "offline_asr" in metrics.text, metrics.text[:300]
    for path in ("/", "/static/app.js", "/docs", "/docs/assets/swagger-ui-bundle.js",
                 "/openapi.json"):  # fmt: skip
        assert restricted.http.get(path).status_code == 200, path


def test_keys_never_reach_the_logs(restricted: Restricted) -> None:
    ids: dict[str, str] = {}
    for key in (*KEYS, WRONG_KEY):
        response = _transcribe_short(restricted, {"Authorization": f"Bearer {key}"})
        ids[key] = response.headers["x-request-id"]
    entries = {entry["request_id"]: entry for entry in audit_entries(restricted.audit)}
    secret = bytes.fromhex(restricted.audit.with_name("audit.jsonl.secret").read_text())
    for key in KEYS:
        entry = entries[ids[key]]
        assert entry["api_key_id"] == hmac.new(secret, key.encode(), "sha256").hexdigest()[:16]
    refused = entries[ids[WRONG_KEY]]
    assert (refused["status"], refused["api_key_id"]) == (401, None), refused
    logs = {
        "audit log": restricted.audit.read_text("utf-8"),
        "server log": restricted.server.output(),
    }
    for name, text in logs.items():
        for key in (*KEYS, WRONG_KEY):
            assert key not in text, f"{name} contains an API key"
            assert key.split("-")[2] not in text, f"{name} contains part of an API key"


# ---------------------------------------------------------------------------------------------
# 3. The startup gate


def test_altered_weights_stop_the_start_before_the_port_opens(
    full_store: ModelStore, tmp_path: Path
) -> None:
    copy = tmp_path / "store"
    shutil.copytree(full_store.root.parent, copy)
    store = ModelStore(copy / "models" / "manifest.json")
    weights = store.root / "whisper" / "tiny.en" / "model.bin"
    size = weights.stat().st_size
    with weights.open("r+b") as file:
        file.seek(size // 2)
        byte = file.read(1)
        file.seek(size // 2)
        file.write(bytes([byte[0] ^ 0xFF]))
    assert weights.stat().st_size == size
    (store.root / VERIFY_CACHE_NAME).unlink()

    port = free_port()
    log = tmp_path / "serve.log"
    exe = Path(sys.executable).with_name("offline-asr")
    command = [str(exe), "serve", "--manifest", str(store.manifest_path), "--model", TINY,
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    connected: list[float] = []
    started = time.monotonic()
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, text=True, env=child_env()
        )
    try:
        while process.poll() is None and time.monotonic() - started < 60:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    connected.append(time.monotonic() - started)
            except OSError:
                pass
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    output = log.read_text(errors="replace")
    assert time.monotonic() - started < 60, f"still running after 60 s:\n{output}"
    assert process.returncode == 1, output
    assert not connected, f"port {port} accepted connections at {connected} s:\n{output}"
    flat = " ".join(output.split())
    assert "whisper/tiny.en/model.bin" in flat, output
    assert " ".join(DEFAULT_BUNDLE_HINT.split()) in flat, output
    assert "Traceback" not in output, output


# ---------------------------------------------------------------------------------------------
# 4. Settings: flags > environment > TOML file > defaults


def test_settings_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_settings_env(monkeypatch)
    config = tmp_path / "service.toml"
    config.write_text(
        'port = 9101\nmax_queue = 3\nmax_concurrency = 4\nmodels = ["whisper-base"]\n'
        'api_keys = ["from-toml"]\n',
        encoding="utf-8",
    )
    defaults = ServiceSettings.load()
    assert (defaults.port, defaults.max_queue) == (8000, 8)
    assert defaults.max_concurrency == defaults.worker_plan().workers  # a slot per worker

    from_file = ServiceSettings.load(config)
    assert (from_file.port, from_file.max_queue, from_file.max_concurrency) == (9101, 3, 4)
    assert from_file.models == [BASE] and from_file.api_keys == ["from-toml"]

    monkeypatch.setenv("OFFLINE_ASR_PORT", "9102")
    monkeypatch.setenv("APP_MODEL_ID", f"{TINY}, {GIGAAM}")
    monkeypatch.setenv("OFFLINE_ASR_API_KEYS", "env-one,env-two")
    from_env = ServiceSettings.load(config)
    assert (from_env.port, from_env.max_queue, from_env.max_concurrency) == (9102, 3, 4)
    assert from_env.models == [TINY, GIGAAM]
    assert from_env.api_keys == ["env-one", "env-two"]

    flagged = ServiceSettings.load(config, port=9103, max_queue=None, models=[BASE])
    assert (flagged.port, flagged.max_queue, flagged.max_concurrency) == (9103, 3, 4)
    assert flagged.models == [BASE]

    # The file applies only to the load it was given to.
    assert ServiceSettings.load().max_queue == 8


def test_serve_command_precedence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, full_store: ModelStore
) -> None:
    """`offline-asr serve`: --config or OFFLINE_ASR_CONFIG, then env, then flags."""
    clean_settings_env(monkeypatch)
    captured: list[ServiceSettings] = []
    monkeypatch.setattr(server_module, "serve", lambda settings, **_: captured.append(settings))
    env_config = tmp_path / "env.toml"
    env_config.write_text("port = 9201\nmax_queue = 3\nmax_concurrency = 4\n", encoding="utf-8")
    flag_config = tmp_path / "flag.toml"
    flag_config.write_text("port = 9301\nmax_queue = 5\n", encoding="utf-8")
    manifest = ["--manifest", str(full_store.manifest_path)]

    def serve(*args: str) -> ServiceSettings:
        result = CliRunner().invoke(app, ["serve", *args, *manifest])
        assert result.exit_code == 0, result.output
        return captured.pop()

    monkeypatch.setenv("OFFLINE_ASR_CONFIG", str(env_config))
    settings = serve()
    assert (settings.port, settings.max_queue, settings.max_concurrency) == (9201, 3, 4)
    settings = serve("--config", str(flag_config))  # the flag over OFFLINE_ASR_CONFIG
    assert (settings.port, settings.max_queue) == (9301, 5)
    assert settings.max_concurrency == settings.worker_plan().workers
    assert serve("--workers", "3").worker_plan().workers == 3
    monkeypatch.setenv("OFFLINE_ASR_PORT", "9202")
    monkeypatch.setenv("OFFLINE_ASR_MAX_QUEUE", "6")
    settings = serve()
    assert (settings.port, settings.max_queue, settings.max_concurrency) == (9202, 6, 4)
    settings = serve("--port", "9203", "--max-queue", "7")
    assert (settings.port, settings.max_queue, settings.max_concurrency) == (9203, 7, 4)
    assert settings.manifest == full_store.manifest_path


def test_the_plans_command_starts_a_server(restricted: Restricted) -> None:
    """`APP_MODEL_ID=whisper-tiny.en python app/main.py --manifest <store> --port P` (the
    restricted server's command) verifies and loads the model, then answers /ready."""
    assert restricted.command[1:3] == ["app/main.py", "--manifest"]
    ready = restricted.http.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    models = restricted.http.get("/v1/models", headers=restricted.auth).json()["data"]
    assert ready.json()["manifest_version"] == models[0]["manifest_version"]
    loaded = {model["id"]: model["loaded"] for model in models}
    assert loaded[TINY] is True  # from APP_MODEL_ID, before the port opened
    assert loaded[BASE] is False


# ---------------------------------------------------------------------------------------------
# 5. The audit log


def test_audit_log_has_one_line_per_request(
    http: httpx.Client, server: Server, full_store: ModelStore
) -> None:
    audit = server.log.with_name("audit.jsonl")
    fingerprints = {m["id"]: m.get("fingerprint") for m in http.get("/v1/models").json()["data"]}
    own_id = f"audit-test-{uuid.uuid4().hex}"
    whisper = http.post(
        TRANSCRIPTIONS, files={"file": ("en.wav", EN_BYTES, "audio/wav")}, data=GOOD
    )
    streamed = http.post(
        TRANSCRIPTIONS, files={"file": ("short.wav", SHORT_RU, "audio/wav")},
        data={"model": GIGAAM, "stream": "true"}, headers={"X-Request-ID": own_id},
    )  # fmt: skip
    truncated = http.post(
        TRANSCRIPTIONS, files={"file": ("cut.wav", EN_BYTES[:70_000], "audio/wav")}, data=GOOD
    )
    assert whisper.status_code == 200 and streamed.status_code == 200, whisper.text
    assert truncated.status_code == 400, truncated.text
    assert streamed.headers["x-request-id"] == own_id  # a caller's own id is kept

    raw_lines = audit.read_text("utf-8").splitlines()
    entries = [json.loads(line) for line in raw_lines if line.strip()]
    version = full_store.load().manifest_version
    found: dict[str, dict[str, Any]] = {}
    for label, response, model_id, outcome in (
        ("whisper", whisper, TINY, "ok"),
        ("stream", streamed, GIGAAM, "ok"),
        ("truncated", truncated, TINY, "error"),
    ):
        request_id = response.headers["x-request-id"]
        matching = [entry for entry in entries if entry.get("request_id") == request_id]
        assert len(matching) == 1, (label, request_id, matching)
        entry = found[label] = matching[0]
        assert entry["outcome"] == outcome, (label, entry)
        assert entry["client"] == "127.0.0.1", entry
        assert entry["model_id"] == model_id, entry
        assert entry["manifest_version"] == version, entry
        assert entry["fingerprint"] == fingerprints[model_id], entry
        assert entry["api_key_id"] is None, entry  # the shared server has no keys
        assert len(entry["audio_sha256"]) == 64, entry
        assert "text" not in entry, entry
    assert "cut short" in found["truncated"]["error"]

    transcript = whisper.json()["text"]
    assert word_error_rate(EN_TEXT, transcript) <= WER_BOUND, transcript
    line = next(raw for raw in raw_lines if whisper.headers["x-request-id"] in raw)
    assert transcript not in line and "sunny" not in line.lower(), line


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("OFFLINE_ASR_API_KEYS", "", "OFFLINE_ASR_API_KEYS"),
        ("OFFLINE_ASR_API_KEYS", " , ,", "OFFLINE_ASR_API_KEYS"),
        ("OFFLINE_ASR_AUDIT_LOG", "", "OFFLINE_ASR_AUDIT_LOG"),
        ("OFFLINE_ASR_API_KEYS_FILE", "", "OFFLINE_ASR_API_KEYS_FILE"),
        ("MODEL_REGISTRY_PATH", "", "MODEL_REGISTRY_PATH"),
        ("OFFLINE_ASR_HOST", " ", "OFFLINE_ASR_HOST"),
        ("OFFLINE_ASR_MAX_QUEUE", "many", "OFFLINE_ASR_MAX_QUEUE"),
    ],
)
def test_a_setting_that_is_present_but_empty_or_malformed_stops_the_start(
    monkeypatch: pytest.MonkeyPatch,
    full_store: ModelStore,
    variable: str,
    value: str,
    named: str,
) -> None:
    """Set-but-empty never means "off": an empty key list would serve without authentication,
    an empty path would mean the current folder. Exit 2 with the variable named, no traceback."""
    clean_settings_env(monkeypatch)
    monkeypatch.setenv(variable, value)
    monkeypatch.setattr(server_module, "serve", lambda settings, **_: pytest.fail("server started"))
    # --manifest would win over MODEL_REGISTRY_PATH: leave it out when that is the one tested.
    manifest = (
        [] if variable == "MODEL_REGISTRY_PATH" else ["--manifest", str(full_store.manifest_path)]
    )
    result = CliRunner().invoke(app, ["serve", *manifest])
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("content", ["", "\n# only a comment\n   \n", None, "k" * 70_000])
def test_an_api_keys_file_without_keys_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, full_store: ModelStore, content: str | None
) -> None:
    """An empty, comment-only, missing or oversized keys file would mean "no keys": refused."""
    clean_settings_env(monkeypatch)
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: pytest.fail("server started"))
    keys = tmp_path / "keys"
    if content is not None:
        keys.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(
        app,
        ["serve", "--manifest", str(full_store.manifest_path), "--api-keys-file", str(keys),
         "--port", str(free_port())],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert str(keys) in result.output
