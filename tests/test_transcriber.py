"""Stopping a transcription: at the next segment (Whisper) or batch of chunks (GigaAM)."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from offline_asr.asr.audit import AuditLog
from offline_asr.asr.base import DecodeOptions, Segment
from offline_asr.asr.loader import LoadOptions
from offline_asr.asr.transcriber import Cancelled, Transcriber
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.registry.store import ModelStore
from support.audio_fixtures import long_speech_wav

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_minutes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return long_speech_wav(tmp_path_factory.mktemp("audio") / "two.wav", 120).read_bytes()


@pytest.mark.parametrize(
    ("model", "options"),
    [
        ("whisper-tiny.en", DecodeOptions()),
        ("gigaam-v3-ctc-testtiny", DecodeOptions(batch_size=1)),  # a batch per 22-s chunk
    ],
)
def test_work_stops_at_the_next_segment_once_cancelled(
    full_store: ModelStore, two_minutes: bytes, model: str, options: DecodeOptions
) -> None:
    transcriber = Transcriber.load(
        ManifestSnapshot.read(full_store), model, LoadOptions(), audit=None
    )
    cancel = threading.Event()
    seen: list[Segment] = []

    def on_segment(segment: Segment) -> None:
        seen.append(segment)
        cancel.set()  # as the service does when the client leaves

    fields: dict[str, object] = {}
    with pytest.raises(Cancelled):
        transcriber.transcribe_stream(io.BytesIO(two_minutes), "two.wav", options, on_segment,
                                      cancel=cancel, on_fields=fields.update)  # fmt: skip
    assert len(seen) == 1
    assert seen[0].end < 60  # two minutes of speech: most of it was never transcribed
    assert fields["model_id"] == model and fields["duration_s"] is None  # no result


def test_cancelled_before_the_first_segment_stops_after_decoding(
    full_store: ModelStore, two_minutes: bytes, tmp_path: Path
) -> None:
    """No engine work at all, and no line in the command line's audit log (the service writes
    its own)."""
    log = tmp_path / "audit.jsonl"
    transcriber = Transcriber.load(
        ManifestSnapshot.read(full_store), "gigaam-v3-ctc-testtiny", LoadOptions(),
        audit=AuditLog(log),
    )  # fmt: skip
    cancel = threading.Event()
    cancel.set()
    seen: list[Segment] = []
    with pytest.raises(Cancelled):
        transcriber.transcribe_stream(io.BytesIO(two_minutes), "two.wav", DecodeOptions(),
                                      seen.append, cancel=cancel)  # fmt: skip
    assert not seen and not log.exists()
