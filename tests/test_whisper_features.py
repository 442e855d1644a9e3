"""Whisper features in 30-s blocks: faster-whisper's numbers without its memory on long audio."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from offline_asr.asr.audio import decode_audio
from offline_asr.asr.whisper_features import BLOCK_FRAMES, BlockedFeatureExtractor
from offline_asr.constants import CLIPS_DIR
from offline_asr.pcm import SAMPLE_RATE
from offline_asr.registry.store import ModelStore
from support.memory import peak_growth_mb

CLIP = decode_audio(CLIPS_DIR / "en_short.wav")
NOISE = np.random.default_rng(3).uniform(-0.5, 0.5, 100 * SAMPLE_RATE).astype(np.float32)
HOP = 160
# The longest audio that is one block: faster-whisper pads 160 samples and keeps length // 160
# frames.
ONE_BLOCK = BLOCK_FRAMES * HOP - HOP


def both(audio: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], ...]:
    return FeatureExtractor()(audio), BlockedFeatureExtractor()(audio)


@pytest.mark.parametrize(
    "audio",
    [CLIP, CLIP[:1], CLIP[:401], CLIP[:12_345], NOISE[:ONE_BLOCK], np.zeros(0, np.float32)],
    ids=["clip", "1 sample", "401 samples", "12345 samples", "one block", "empty"],
)
def test_up_to_one_window_the_features_are_faster_whispers_to_the_bit(
    audio: npt.NDArray[np.float32],
) -> None:
    theirs, ours = both(audio)
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize(
    "audio",
    [NOISE[: ONE_BLOCK + 1], NOISE, np.tile(CLIP, 15)],
    ids=["one block and a sample", "100 s of noise", "67 s of speech"],
)
def test_longer_audio_differs_at_most_in_the_last_bit(audio: npt.NDArray[np.float32]) -> None:
    theirs, ours = both(audio)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=4e-7)  # a few float32 steps at 1.0


def test_other_mel_counts_and_chunk_lengths_as_faster_whisper() -> None:
    """large-v3 has 128 Mel bands; the batched pipeline asks for other chunk lengths."""
    theirs = FeatureExtractor(feature_size=128)(CLIP, chunk_length=10)
    extractor = BlockedFeatureExtractor(feature_size=128)
    np.testing.assert_array_equal(extractor(CLIP, chunk_length=10), theirs)
    assert (extractor.n_samples, extractor.nb_max_frames) == (10 * SAMPLE_RATE, 1000)


# Loads whisper-tiny.en and transcribes an hour of speech until the first segment, when every
# feature of the file exists.
_FIRST_SEGMENT = """
import numpy as np
from offline_asr.asr.loader import load_engine
from offline_asr.asr.audio import decode_audio
from offline_asr.registry.snapshot import ManifestSnapshot
from offline_asr.registry.store import ModelStore

engine = load_engine(ManifestSnapshot.read(ModelStore(Path(sys.argv[1]))), "whisper-tiny.en")
audio = np.resize(decode_audio(Path(sys.argv[2])), 3600 * 16000)
before = peak()
try:
    engine.transcribe(audio, on_segment=stop)
except Enough:
    pass
"""


@pytest.mark.slow
def test_an_hour_of_whisper_features_fits_in_a_few_hundred_mb(full_store: ModelStore) -> None:
    """faster-whisper's own features for 1 h took 3.2 GB; ours take about 115 MB plus a block."""
    clip = str(CLIPS_DIR / "en_short.wav")
    growth = peak_growth_mb(_FIRST_SEGMENT, str(full_store.manifest_path), clip)
    print(f"\nwhisper-tiny.en, 1 h to the first segment: peak RSS +{growth:.0f} MB")
    assert growth < 600, growth
