"""Parallel workers: sized from the cores, set by one setting, and never a change of output.

The decoded content must be the same bytes whatever the worker and thread count: checked
against the committed goldens (short clips, concurrent calls) and between plans (a long file
through the batched pipeline).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from offline_asr.asr import whisper_engine
from offline_asr.asr.audio import decode_audio
from offline_asr.asr.base import DecodeOptions, TranscriptionEngine
from offline_asr.asr.goldens import read_golden
from offline_asr.asr.loader import LoadOptions, load_engine
from offline_asr.asr.smoke import word_error_rate
from offline_asr.asr.workers import WorkerPlan, usable_cores
from offline_asr.constants import CLIPS_DIR, DEFAULT_LONG_FORM_BATCH
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.registry.store import ModelStore
from offline_asr.service.settings import ServiceSettings
from support.long_audio import long_speech
from test_service_api import clean_settings_env

TINY = "whisper-tiny.en"


def test_the_plan_follows_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert usable_cores() == 4
    assert WorkerPlan.for_machine() == WorkerPlan(workers=4, threads=1)
    assert WorkerPlan.for_machine(workers=1) == WorkerPlan(workers=1, threads=4)
    assert WorkerPlan.for_machine(workers=3) == WorkerPlan(workers=3, threads=1)
    assert WorkerPlan.for_machine(workers=2, threads=3) == WorkerPlan(workers=2, threads=3)
    # A server's workers may each use every core: a lone request runs at full speed.
    assert WorkerPlan.for_machine(share_cores=False) == WorkerPlan(workers=4, threads=4)
    assert WorkerPlan.for_machine(2, 1, share_cores=False) == WorkerPlan(workers=2, threads=1)


def test_workers_is_one_setting_from_flag_env_or_toml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_settings_env(monkeypatch)
    defaults = ServiceSettings.load()
    assert defaults.worker_plan() == WorkerPlan(usable_cores(), usable_cores())
    assert defaults.max_concurrency == usable_cores()  # a slot per worker unless set
    assert defaults.long_form_batch_size == DEFAULT_LONG_FORM_BATCH
    config = tmp_path / "serve.toml"
    config.write_text("workers = 3\nthreads = 2\nlong_form_batch_size = 0\n", encoding="utf-8")
    from_file = ServiceSettings.load(config)
    assert from_file.worker_plan() == WorkerPlan(3, 2) and from_file.max_concurrency == 3
    assert from_file.long_form_batch_size == 0
    monkeypatch.setenv("OFFLINE_ASR_WORKERS", "5")
    assert ServiceSettings.load(config).worker_plan().workers == 5
    flagged = ServiceSettings.load(config, workers=1, max_concurrency=4)
    assert (flagged.worker_plan().workers, flagged.max_concurrency) == (1, 4)


@pytest.fixture(scope="module")
def engines(full_store: ModelStore) -> dict[str, TranscriptionEngine]:
    """One worker with two threads, and two workers with one thread each."""
    snapshot = ManifestSnapshot.read(full_store)

    def plan(workers: int, threads: int) -> LoadOptions:
        return LoadOptions(device="cpu", workers=workers, threads=threads,
                           long_form_batch_size=DEFAULT_LONG_FORM_BATCH)  # fmt: skip

    return {
        "1x2": load_engine(snapshot, TINY, plan(1, 2)),
        "2x1": load_engine(snapshot, TINY, plan(2, 1)),
    }


def test_concurrent_workers_reproduce_the_committed_golden(
    full_store: ModelStore, engines: dict[str, TranscriptionEngine]
) -> None:
    """Two transcriptions at once on two single-thread workers: each the golden's bytes."""
    golden = read_golden(full_store.golden_file(TINY), TINY).decoded
    clip = decode_audio(CLIPS_DIR / "en_short.wav")
    other = decode_audio(CLIPS_DIR / "en_second.wav")
    options = DecodeOptions(language="en", word_timestamps=True)
    engine = engines["2x1"]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda audio: engine.transcribe(audio, options),
                                [clip, other, clip, other]))  # fmt: skip
    assert results[0].decoded() == golden and results[2].decoded() == golden
    assert results[1].decoded() == results[3].decoded()
    alone = engines["1x2"].transcribe(other, options)
    assert alone.decoded() == results[1].decoded()


def test_long_audio_uses_the_batched_pipeline_with_the_same_bytes_on_any_plan(
    engines: dict[str, TranscriptionEngine],
) -> None:
    audio, reference = long_speech(65)
    options = DecodeOptions(language="en")
    one = engines["1x2"].transcribe(audio, options)
    with ThreadPoolExecutor(2) as pool:
        two = list(pool.map(lambda _: engines["2x1"].transcribe(audio, options), range(2)))
    assert one.options.batch_size == DEFAULT_LONG_FORM_BATCH and one.options.vad_filter
    assert [r.decoded() for r in two] == [one.decoded()] * 2
    assert word_error_rate(reference, one.text) <= 0.02
    # A request that names its own batch size keeps it; short audio stays sequential.
    assert engines["1x2"].transcribe(audio[: 20 * 16000], options).options.batch_size is None


def test_audio_past_the_batched_limit_is_decoded_sequentially(
    engines: dict[str, TranscriptionEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batched pipeline's memory grows with the file; past the limit, bounded decoding."""
    audio, _ = long_speech(65)
    monkeypatch.setattr(whisper_engine, "LONG_FORM_BATCH_MAX_SECONDS", 60.0)
    result = engines["1x2"].transcribe(audio, DecodeOptions(language="en"))
    assert result.options.batch_size is None and not result.options.vad_filter
