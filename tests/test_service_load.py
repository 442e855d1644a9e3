"""The service under load: admission answers 200 or 429 (never 5xx), memory stays bounded, and
/metrics agrees with what the clients saw.

One server per module, `OFFLINE_ASR_MAX_CONCURRENCY=2`, `OFFLINE_ASR_MAX_QUEUE=8`, with the
GigaAM test model (about 0.1 s per clip) so that hundreds of requests take seconds. Every
client is on loopback, every loop is bounded by a deadline and every request by a timeout.
Then clients that give up mid-request must leave nothing broken behind them, and, on a server
with one slot and a tiny OFFLINE_ASR_REQUEST_TIMEOUT_S, requests over the limit get a 504
while their slot stays taken until the worker thread has really stopped (at its next segment,
see test_service_cancel.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
import wave
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from offline_asr.constants import CLIPS_DIR
from offline_asr.registry.store import ModelStore
from support.server import Server, running_server

MODEL = "gigaam-v3-ctc-testtiny"
CLIP = CLIPS_DIR / "ru_short.wav"
CONCURRENCY, QUEUE = 2, 8
RETRY_AFTER = str(max(1, math.ceil(QUEUE / CONCURRENCY)))
ERROR_KEYS = {"message", "type", "param", "code"}
FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
REQUEST_TIMEOUT = 60.0  # per request; the run as a whole has its own, shorter deadline
RSS_GROWTH_LIMIT_MB = 300.0

pytestmark = pytest.mark.slow


def _duration(path: Path) -> float:
    with wave.open(str(path), "rb") as reader:
        return reader.getnframes() / reader.getframerate()


CLIP_BYTES = CLIP.read_bytes()
CLIP_SECONDS = _duration(CLIP)


@pytest.fixture(scope="module")
def load_server(
    full_store: ModelStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("load") / "server.log"
    env = {
        "OFFLINE_ASR_MAX_CONCURRENCY": str(CONCURRENCY),
        "OFFLINE_ASR_MAX_QUEUE": str(QUEUE),
        "OFFLINE_ASR_AUDIT_LOG": str(log.with_name("audit.jsonl")),
    }
    with running_server(full_store.manifest_path, "--model", MODEL, env=env, log=log) as running:
        yield running


def audit_lines(server: Server) -> list[str]:
    path = server.log.with_name("audit.jsonl")
    return path.read_text().splitlines() if path.exists() else []


# --- clients -----------------------------------------------------------------------------


@dataclass
class Tally:
    """What the clients saw: statuses, and a line for each answer that broke the contract."""

    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.statuses[200]

    @property
    def busy(self) -> int:
        return self.statuses[429]


def _client(connections: int) -> httpx2.AsyncClient:
    # trust_env=False: no proxy from the environment may see loopback traffic.
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(REQUEST_TIMEOUT, connect=10.0),
        limits=httpx2.Limits(max_connections=connections, max_keepalive_connections=connections),
        trust_env=False,
    )


def _check_success(response: httpx2.Response, response_format: str, stream: bool) -> str | None:
    """None if a 200 answer has the promised shape, else what is wrong with it."""
    if stream:
        events = [line[len("data: ") :] for line in response.text.splitlines() if line]
        if not events or json.loads(events[-1]).get("type") != "transcript.text.done":
            return f"stream did not end with transcript.text.done: {response.text[-300:]!r}"
        return None
    if response_format == "json" and not isinstance(response.json().get("text"), str):
        return f"json without text: {response.text[:300]!r}"
    if response_format == "verbose_json":
        duration = response.json().get("duration")
        if not isinstance(duration, float | int) or abs(duration - CLIP_SECONDS) > 0.05:
            return f"verbose_json duration {duration!r}, clip is {CLIP_SECONDS:.3f} s"
    return None


def _check_busy(response: httpx2.Response) -> str | None:
    """None if a 429 carries Retry-After and OpenAI's error shape, else what is wrong."""
    if response.headers.get("retry-after") != RETRY_AFTER:
        return f"429 with Retry-After {response.headers.get('retry-after')!r}, want {RETRY_AFTER}"
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"429 without an error object: {response.text[:300]!r}"
    if set(error) != ERROR_KEYS or error["code"] != "queue_full" or not error["message"]:
        return f"429 error not in OpenAI's shape: {error!r}"
    if error["type"] != "rate_limit_exceeded":
        return f"429 error type {error['type']!r}"
    return None


async def transcribe(
    client: httpx2.AsyncClient,
    url: str,
    tally: Tally,
    *,
    response_format: str = "json",
    stream: bool = False,
) -> int | None:
    """One upload of the clip; records the status (None on a transport error) in `tally`."""
    data = {"model": MODEL, "response_format": response_format}
    if stream:
        data["stream"] = "true"
    try:
        response = await client.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": (CLIP.name, CLIP_BYTES, "audio/wav")},
            data=data,
        )
    except httpx2.HTTPError as error:
        tally.problems.append(f"transport error: {type(error).__name__}: {error}")
        return None
    tally.statuses[response.status_code] += 1
    if response.status_code == 200:
        problem = _check_success(response, response_format, stream)
    elif response.status_code == 429:
        problem = _check_busy(response)
    else:
        problem = f"status {response.status_code}: {response.text[:300]!r}"
    if problem:
        tally.problems.append(problem)
    return response.status_code


async def burst(url: str, count: int, deadline_s: float) -> Tally:
    """`count` uploads at once, all within `deadline_s`."""
    tally = Tally()
    async with _client(count) as client:
        jobs = [transcribe(client, url, tally) for _ in range(count)]
        await asyncio.wait_for(asyncio.gather(*jobs), deadline_s)
    return tally


async def give_up(url: str, count: int, patience: float) -> Counter[str]:
    """`count` uploads at once, half of them streamed, each abandoned after `patience` s."""
    outcomes: Counter[str] = Counter()

    async def one(client: httpx2.AsyncClient, stream: bool) -> None:
        data = {"model": MODEL, "stream": "true" if stream else "false"}
        try:
            response = await client.post(
                f"{url}/v1/audio/transcriptions",
                files={"file": (CLIP.name, CLIP_BYTES, "audio/wav")},
                data=data,
                timeout=patience,
            )
            outcomes[str(response.status_code)] += 1
        except httpx2.TimeoutException as error:
            outcomes[type(error).__name__] += 1

    async with _client(count) as client:
        jobs = [one(client, index % 2 == 0) for index in range(count)]
        await asyncio.wait_for(asyncio.gather(*jobs), patience + 30)
    return outcomes


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class LoadRun:
    tally: Tally
    seconds: float
    rss_samples: list[float]


async def sustained(url: str, pid: int, clients: int, seconds: float) -> LoadRun:
    """`clients` loops, each sending requests back to back until `seconds` have passed,
    while the server's RSS is sampled every 0.25 s."""
    tally = Tally()
    samples: list[float] = []
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds

    async def client_loop(client: httpx2.AsyncClient, index: int) -> None:
        sent = 0
        while loop.time() < stop:
            response_format = FORMATS[(index + sent) % len(FORMATS)]
            stream = (index + sent) % 7 == 0
            status = await transcribe(
                client, url, tally, response_format=response_format, stream=stream
            )
            sent += 1
            if status != 200:
                await asyncio.sleep(0.05)  # not the full Retry-After: keep the queue full

    async def sampler() -> None:
        while loop.time() < stop:
            samples.append(rss_mb(pid))
            await asyncio.sleep(0.25)

    started = loop.time()
    async with _client(clients) as client:
        jobs = [client_loop(client, index) for index in range(clients)]
        await asyncio.wait_for(asyncio.gather(sampler(), *jobs), seconds + REQUEST_TIMEOUT)
    return LoadRun(tally, loop.time() - started, samples)


# --- metrics -----------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of /metrics, keyed by name and labels."""
    response = httpx2.get(f"{url}/metrics", timeout=10, trust_env=False)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests_by_status(samples: Samples) -> Counter[str]:
    """offline_asr_requests_total summed over models, by status (`disconnected`: no answer)."""
    totals: Counter[str] = Counter()
    for (name, labels), count in samples.items():
        if name == "offline_asr_requests_total":
            totals[dict(labels)["status"]] += int(count)
    return totals


def settled(url: str, timeout: float = 10.0) -> Samples:
    """/metrics once queue depth and in-flight are 0 and the request counts stopped moving
    (two scrapes 0.2 s apart), or the last scrape at the timeout."""
    deadline = time.monotonic() + timeout
    previous = scrape(url)
    while True:
        time.sleep(0.2)
        samples = scrape(url)
        idle = value(samples, "offline_asr_queue_depth") == 0
        idle = idle and value(samples, "offline_asr_in_flight") == 0
        steady = requests_by_status(samples) == requests_by_status(previous)
        if (idle and steady) or time.monotonic() > deadline:
            return samples
        previous = samples


# --- tests -------------------------------------------------------------------------------


def test_burst_of_200_requests_gets_200_or_429_never_5xx(load_server: Server) -> None:
    tally = asyncio.run(burst(load_server.url, 200, deadline_s=120))
    print(f"\nburst of 200: {dict(tally.statuses)}")
    assert not tally.problems, "\n".join(tally.problems[:20])
    assert set(tally.statuses) <= {200, 429}, tally.statuses
    assert sum(tally.statuses.values()) == 200
    assert tally.ok >= CONCURRENCY + QUEUE, tally.statuses  # the first ones in are all served
    assert tally.busy > 0, "200 requests at once against 2 slots + 8 places: some must be 429"


def test_sustained_load_answers_200_or_429_with_bounded_memory(load_server: Server) -> None:
    pid = load_server.process.pid
    warm = asyncio.run(burst(load_server.url, CONCURRENCY, deadline_s=60))  # arenas, caches
    assert warm.statuses == Counter({200: CONCURRENCY}), warm
    before = rss_mb(pid)
    run = asyncio.run(sustained(load_server.url, pid, clients=12, seconds=10))
    after = rss_mb(pid)
    peak = max([before, after, *run.rss_samples])
    print(
        f"\nsustained: {dict(run.tally.statuses)} in {run.seconds:.1f} s; "
        f"RSS before {before:.0f} MB, peak {peak:.0f} MB, after {after:.0f} MB"
    )
    assert not run.tally.problems, "\n".join(run.tally.problems[:20])
    assert set(run.tally.statuses) <= {200, 429}, run.tally.statuses
    assert run.tally.ok >= 20, f"only {run.tally.ok} transcriptions in {run.seconds:.1f} s"
    assert run.seconds < 10 + REQUEST_TIMEOUT
    assert after - before < RSS_GROWTH_LIMIT_MB, (before, after)
    assert peak - before < RSS_GROWTH_LIMIT_MB, (before, peak)
    assert load_server.process.poll() is None, load_server.output()[-3000:]


def test_metrics_match_what_the_clients_saw(load_server: Server) -> None:
    url = load_server.url
    start = settled(url)
    tally = asyncio.run(burst(url, 60, deadline_s=120))
    with httpx2.Client(timeout=REQUEST_TIMEOUT, trust_env=False) as client:
        files = {"file": ("noise.wav", b"RIFF not really a wav", "audio/wav")}
        bad_audio = client.post(f"{url}/v1/audio/transcriptions", files=files,
                                data={"model": MODEL})  # fmt: skip
        files = {"file": (CLIP.name, CLIP_BYTES, "audio/wav")}
        unknown = client.post(f"{url}/v1/audio/transcriptions", files=files,
                              data={"model": "no-such-model"})  # fmt: skip
        streamed = client.post(f"{url}/v1/audio/transcriptions", files=files,
                               data={"model": MODEL, "stream": "true"})  # fmt: skip
    assert bad_audio.status_code == 400, bad_audio.text
    assert unknown.status_code == 404, unknown.text
    assert streamed.status_code == 200, streamed.text
    assert "transcript.text.done" in streamed.text
    assert not tally.problems, "\n".join(tally.problems[:20])
    end = settled(url)

    sent = tally.statuses + Counter({400: 1, 404: 1, 200: 1})
    by_status = requests_by_status(end) - requests_by_status(start)
    counted = Counter({int(status): count for status, count in by_status.items()})
    print(f"\nsent {dict(sent)}; /metrics counted {dict(counted)}")
    assert counted == sent
    delta = {
        status: value(end, "offline_asr_requests_total", model=model, status=str(status))
        - value(start, "offline_asr_requests_total", model=model, status=str(status))
        for model, status in ((MODEL, 200), (MODEL, 429), (MODEL, 400), ("unknown", 404))
    }
    assert delta == {200: tally.ok + 1, 429: tally.busy, 400: 1, 404: 1}

    successes = tally.ok + 1
    audio = value(end, "offline_asr_audio_seconds_total", model=MODEL) - value(
        start, "offline_asr_audio_seconds_total", model=MODEL
    )
    assert audio == pytest.approx(successes * CLIP_SECONDS, rel=1e-3)
    latencies = value(end, "offline_asr_request_latency_seconds_count", model=MODEL) - value(
        start, "offline_asr_request_latency_seconds_count", model=MODEL
    )
    assert latencies == successes
    assert value(end, "offline_asr_queue_depth") == 0
    assert value(end, "offline_asr_in_flight") == 0
    assert value(end, "offline_asr_model_loaded", model=MODEL) == 1


def test_clients_that_give_up_leave_no_errors_and_a_full_audit_trail(load_server: Server) -> None:
    """Clients that time out while queued or while the answer streams: the slots come back,
    the server log stays free of tracebacks, and every request has exactly one audit line
    with what the client got (the audit trail is the service's promise)."""
    url = load_server.url
    start = settled(url)
    log_start = len(load_server.output())
    audit_start = len(audit_lines(load_server))
    outcomes = asyncio.run(give_up(url, 40, patience=0.3))
    end = settled(url, timeout=30)
    assert value(end, "offline_asr_queue_depth") == 0
    assert value(end, "offline_asr_in_flight") == 0
    answered = requests_by_status(end) - requests_by_status(start)
    audited = [json.loads(line) for line in audit_lines(load_server)[audit_start:]]
    requests = [entry for entry in audited if entry["event"] == "transcription"]
    log = load_server.output()[log_start:]
    tracebacks = log.count("Traceback")
    print(
        f"\nclients saw {dict(outcomes)}; server answered {dict(answered)}; "
        f"{len(requests)} request lines; {tracebacks} tracebacks in the log"
    )
    assert set(answered) <= {"200", "429", "disconnected"}, answered
    tally = asyncio.run(burst(url, 1, deadline_s=60))
    assert tally.statuses == Counter({200: 1}), tally  # still serving
    problems = []
    logged = Counter("disconnected" if e["status"] is None else str(e["status"]) for e in requests)
    if logged != answered:
        problems.append(f"/metrics counted {dict(answered)}, the audit log {dict(logged)}")
    if len(requests) != 40:
        problems.append(f"40 requests but {len(requests)} audit lines")
    if tracebacks:
        first = log.index("Traceback")
        problems.append(f"{tracebacks} tracebacks in the server log:\n{log[first : first + 2500]}")
    assert not problems, "\n".join(problems)


# --- the time limit: 504, and the slot stays taken until the work really ends ------------

SLOW_MODEL = "whisper-tiny.en"  # 1-2 s per 4.5 s clip on a laptop CPU; far over the limit
TIME_LIMIT_S = 0.1


def _long_clip(repeats: int) -> bytes:
    """en_short.wav said `repeats` times in one WAV: seconds of work for whisper-tiny.en."""
    with wave.open(str(CLIPS_DIR / "en_short.wav"), "rb") as reader:
        params, frames = reader.getparams(), reader.readframes(reader.getnframes())
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setparams(params)
        writer.writeframes(frames * repeats)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def one_slot_server(
    full_store: ModelStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One slot, no queue, and a request time limit far below what a transcription takes."""
    log = tmp_path_factory.mktemp("time-limit") / "server.log"
    env = {
        "OFFLINE_ASR_MAX_CONCURRENCY": "1",
        "OFFLINE_ASR_MAX_QUEUE": "0",
        "OFFLINE_ASR_REQUEST_TIMEOUT_S": str(TIME_LIMIT_S),
    }
    with running_server(full_store.manifest_path, "--model", SLOW_MODEL, env=env, log=log) as up:
        yield up


def _idle(url: str, timeout: float) -> bool:
    """Poll /metrics until nothing is in flight or queued; False at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = scrape(url)
        in_flight = value(samples, "offline_asr_in_flight")
        if in_flight == 0 and value(samples, "offline_asr_queue_depth") == 0:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_requests_over_the_time_limit_get_504_and_hold_their_slot_until_done(
    one_slot_server: Server, stream: bool
) -> None:
    url = one_slot_server.url
    assert _idle(url, 60)
    files = {"file": ("long.wav", _long_clip(4), "audio/wav")}
    data = {"model": SLOW_MODEL, "stream": "true" if stream else "false"}
    with httpx2.Client(timeout=REQUEST_TIMEOUT, trust_env=False) as client:
        started = time.monotonic()
        late = client.post(f"{url}/v1/audio/transcriptions", files=files, data=data)
        waited = time.monotonic() - started
        assert late.status_code == 504, late.text
        assert late.json()["error"]["code"] == "timeout", late.text
        assert waited < 10, f"the 504 came after {waited:.1f} s, the limit is {TIME_LIMIT_S} s"
        # The worker thread still runs: its slot is not free, so the next request is refused.
        refused = client.post(f"{url}/v1/audio/transcriptions", files=files, data=data)
        busy = scrape(url)
    assert refused.status_code == 429, refused.text
    assert value(busy, "offline_asr_in_flight") == 1
    assert _idle(url, 60), "the slot never came back"
    assert one_slot_server.process.poll() is None
