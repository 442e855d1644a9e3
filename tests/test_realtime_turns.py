"""The live session's input buffer (turns cut by Silero VAD) and its partial-text deltas."""

from __future__ import annotations

import numpy as np
import pytest

from offline_asr.constants import CLIPS_DIR
from offline_asr.service.partials import PartialText
from offline_asr.service.turns import InputBuffer, ServerVad, SpeechStarted, Turn
from support.audio_fixtures import read_wav, resample

SILENCE_S = 1.0


def two_sentences(rate: int) -> bytes:
    """en_short, a second of silence, en_second, a second of silence: PCM16 at `rate`."""
    parts = []
    for name in ("en_short.wav", "en_second.wav"):
        samples, clip_rate = read_wav(CLIPS_DIR / name)
        if rate != clip_rate:
            samples = resample(samples, clip_rate, rate)
        parts += [samples[0], np.zeros(int(SILENCE_S * rate), np.int16)]
    return np.concatenate(parts).astype("<i2").tobytes()


def feed(buffer: InputBuffer, pcm: bytes, chunk_s: float = 0.1) -> list[SpeechStarted | Turn]:
    size = int(buffer.rate * chunk_s) * 2
    events: list[SpeechStarted | Turn] = []
    for start in range(0, len(pcm), size):
        events += buffer.append(pcm[start : start + size])
    return events


@pytest.mark.parametrize("rate", [16_000, 24_000])
def test_vad_cuts_two_turns_that_are_exact_slices_of_the_stream(rate: int) -> None:
    pcm = two_sentences(rate)
    events = feed(InputBuffer(rate, ServerVad()), pcm)
    assert [type(e) for e in events] == [SpeechStarted, Turn, SpeechStarted, Turn]
    first, second = events[1], events[3]
    assert isinstance(first, Turn) and isinstance(second, Turn)
    for started, turn in ((events[0], first), (events[2], second)):
        assert isinstance(started, SpeechStarted)
        assert turn.audio_start_ms == started.audio_start_ms
        # the turn's bytes are the stream's bytes between its reported milliseconds
        begin, end = turn.audio_start_ms * rate // 1000, turn.audio_end_ms * rate // 1000
        assert turn.pcm == pcm[begin * 2 : end * 2]
        assert turn.start == begin and turn.end == end
    clip_ms = 4490  # en_short: 4.49 s of speech, then the silence ends the turn after 500 ms
    assert clip_ms < first.audio_end_ms < clip_ms + SILENCE_S * 1000
    assert first.audio_end_ms < second.audio_start_ms
    assert second.audio_end_ms < len(pcm) // 2 * 1000 // rate


def test_silence_is_not_kept_beyond_the_padding() -> None:
    buffer = InputBuffer(16_000, ServerVad(prefix_padding_ms=300))
    assert feed(buffer, bytes(16_000 * 2 * 3)) == []  # 3 s of digital silence
    assert buffer.held_ms <= 300 + 100 + 32  # padding, one chunk, one VAD window
    assert buffer.end == 16_000 * 3  # positions still count from the session's start


def test_without_vad_a_commit_takes_everything_and_clear_drops_it() -> None:
    pcm = two_sentences(16_000)
    buffer = InputBuffer(16_000, None)
    assert feed(buffer, pcm) == []
    turn = buffer.commit()
    assert turn.pcm == pcm and turn.start == 0 and buffer.size == 0
    buffer.append(pcm[:3200])
    buffer.clear()
    assert buffer.size == 0 and buffer.commit().pcm == b""


def test_partial_text_sends_only_agreed_words_and_adds_up_to_the_final() -> None:
    partial = PartialText()
    assert partial.hypothesis("The weather") == ""  # nothing to agree with yet
    assert partial.hypothesis("The weather was war") == "The weather"
    assert partial.hypothesis("The weather was warm and") == " was"
    assert partial.hypothesis("The weather is warm") == ""  # disagrees with what was sent
    final = "The weather was warm and sunny."
    assert partial.final(final) == " warm and sunny."
    assert partial.sent == final


def test_partial_text_never_changes_a_word_it_sent() -> None:
    partial = PartialText()
    partial.hypothesis("The")
    assert partial.hypothesis("The") == "The"
    assert partial.hypothesis("Theory of") == ""
    assert partial.final("Theory of everything.") == ""  # the final text is sent in full anyway
