"""Prometheus metrics, in a registry of the app's own (several apps may live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "offline_asr_requests",
            "Transcription requests by model and HTTP status (`disconnected`: no answer sent)",
            ["model", "status"], registry=self.registry,
        )  # fmt: skip
        self.cancelled = Counter(
            "offline_asr_cancelled",
            "Transcriptions stopped before the end: the client left, or the time limit passed",
            ["reason"], registry=self.registry,
        )  # fmt: skip
        self.audio_seconds = Counter(
            "offline_asr_audio_seconds", "Seconds of audio transcribed", ["model"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "offline_asr_request_latency_seconds", "Time from admission to answer", ["model"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "offline_asr_queue_depth", "Requests waiting for a slot", registry=self.registry
        )
        self.in_flight = Gauge(
            "offline_asr_in_flight", "Requests being transcribed", registry=self.registry
        )
        self.loaded = Gauge(
            "offline_asr_model_loaded",
            "Loaded copies of each model: 1, or 2 while a switch holds the release before too",
            ["model"], registry=self.registry,
        )  # fmt: skip
        self.serving = Gauge(
            "offline_asr_serving_manifest_version",
            "The manifest_version of the release new requests go to", registry=self.registry,
        )  # fmt: skip
        self.releases_held = Gauge(
            "offline_asr_releases_held",
            "Releases whose models are held: 2 only while requests finish on the one before",
            registry=self.registry,
        )  # fmt: skip
        self.reloads = Counter(
            "offline_asr_reloads",
            "Reloads by outcome: switched, unchanged (already served), refused, busy",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.reload_refused = Gauge(
            "offline_asr_reload_refused",
            "1 while the last reload was refused: the release and why (the file named)",
            ["manifest_version", "reason"], registry=self.registry,
        )  # fmt: skip
        # Live transcription (/v1/realtime).
        self.realtime_sessions = Gauge(
            "offline_asr_realtime_sessions", "Live sessions open", registry=self.registry
        )
        self.realtime_sessions_ended = Counter(
            "offline_asr_realtime_sessions_ended",
            "Live sessions by how they ended (client_closed, session_expired, buffer_too_large, "
            "session_limit, invalid_api_key, server_error)",
            ["reason"], registry=self.registry,
        )  # fmt: skip
        self.realtime_turns = Counter(
            "offline_asr_realtime_turns", "Turns transcribed by model and outcome",
            ["model", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.realtime_turn_latency = Histogram(
            "offline_asr_realtime_turn_latency_seconds",
            "From the end of a turn (speech stopped or commit) to its completed text", ["model"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=self.registry,
        )  # fmt: skip
