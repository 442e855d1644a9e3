"""Output formats: OpenAI's SDK models accept our JSON, and subtitle parsers accept our cues."""

from __future__ import annotations

import html
import json
import math
from datetime import timedelta
from typing import get_args

import pytest
import srt
import webvtt
from openai.types.audio import Transcription, TranscriptionVerbose

from offline_asr.asr.base import Segment, TranscriptionResult
from offline_asr.asr.formats import FILE_SUFFIX, LANGUAGE_NAMES, ResponseFormat, render
from support.results import english, russian

# english(): the blank segment 1 has no cue; the last one starts past an hour.
EN_CUES = [
    (timedelta(0), timedelta(seconds=2.5), "Hello, AT&T world."),
    (timedelta(seconds=3), timedelta(seconds=5.25), "Is 1 < 2 --> yes."),
    (timedelta(seconds=3661.234), timedelta(seconds=3664), "An hour later."),
]
VERBOSE_KEYS = [
    "task",
    "language",
    "duration",
    "text",
    "segments",
    "words",
    "usage",
    "x_offline_asr",
]  # OpenAI's order, then ours


def test_every_format_has_a_file_suffix() -> None:
    assert set(FILE_SUFFIX) == set(get_args(ResponseFormat))


@pytest.mark.parametrize("result", [english(), russian()])
def test_txt_and_text_are_the_text_and_one_newline(result: TranscriptionResult) -> None:
    assert render(result, "txt") == render(result, "text") == result.text + "\n"


def test_json_is_openai_transcription_with_provenance() -> None:
    result = english()
    data = json.loads(render(result, "json"))
    parsed = Transcription.model_validate(data)
    assert parsed.text == result.text
    assert parsed.usage is not None and parsed.usage.type == "duration"
    assert data["usage"]["seconds"] == math.ceil(result.duration) == 3665
    assert list(data) == ["text", "usage", "x_offline_asr"]
    assert parsed.model_extra is not None
    assert parsed.model_extra["x_offline_asr"] == {
        "model_id": "whisper-tiny.en",
        "manifest_version": 3,
        "fingerprint": "sha256:0123456789abcdef",
        "engine": "whisper",
        "options": result.options.model_dump(mode="json"),
        "runtime": result.runtime,
    }


@pytest.mark.parametrize("words", [False, True])
def test_verbose_json_is_openai_transcription_verbose(words: bool) -> None:
    result = english(words=words)
    data = json.loads(render(result, "verbose_json"))
    parsed = TranscriptionVerbose.model_validate(data)
    assert data["task"] == "transcribe"
    assert parsed.language == "english"
    assert parsed.duration == result.duration and parsed.text == result.text
    assert parsed.usage is not None and parsed.usage.seconds == 3665
    assert parsed.segments is not None
    assert [(s.id, s.start, s.end, s.text, s.tokens) for s in parsed.segments] == [
        (s.id, s.start, s.end, s.text, s.tokens) for s in result.segments
    ]
    assert {(s.seek, s.temperature, s.avg_logprob) for s in parsed.segments} == {(0, 0.0, -0.25)}
    assert "x_offline_asr" in data
    if words:
        assert parsed.words is not None
        assert " ".join(w.word for w in parsed.words) == " ".join(t for _, _, t in EN_CUES)
        assert parsed.words[-1].end == pytest.approx(3663.9996)
    else:
        assert "words" not in data and parsed.words is None
    assert list(data) == [k for k in VERBOSE_KEYS if words or k != "words"]


def test_verbose_json_fills_missing_scores_and_names_the_language() -> None:
    data = json.loads(render(russian(), "verbose_json"))
    parsed = TranscriptionVerbose.model_validate(data)
    assert parsed.language == "russian"
    assert parsed.segments is not None
    assert [s.tokens for s in parsed.segments] == [[], []]
    scores = [(s.avg_logprob, s.compression_ratio, s.no_speech_prob) for s in parsed.segments]
    assert scores == [(0.0, 0.0, 0.0)] * 2


def test_verbose_json_task_and_unknown_language() -> None:
    result = english(task="translate").model_copy(update={"language": "xx"})
    data = json.loads(render(result, "verbose_json"))
    assert (data["task"], data["language"]) == ("translate", "xx")


def test_language_names_cover_every_whisper_language() -> None:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    assert set(LANGUAGE_NAMES) == set(_LANGUAGE_CODES)
    assert all(name == name.lower() for name in LANGUAGE_NAMES.values())


def test_srt_parses_with_one_numbered_cue_per_spoken_segment() -> None:
    text = render(english(), "srt")
    cues = list(srt.parse(text))
    assert [c.index for c in cues] == [1, 2, 3]
    assert [(c.start, c.end, c.content) for c in cues] == EN_CUES
    assert "01:01:01,234 --> 01:01:04,000" in text


def test_vtt_parses_with_one_cue_per_spoken_segment() -> None:
    text = render(english(), "vtt")
    assert text.startswith("WEBVTT\n\n")
    captions = webvtt.from_string(text).captions
    assert [(c.start, c.end) for c in captions] == [
        ("00:00:00.000", "00:00:02.500"),
        ("00:00:03.000", "00:00:05.250"),
        ("01:01:01.234", "01:01:04.000"),
    ]
    assert [html.unescape(c.text) for c in captions] == [t for _, _, t in EN_CUES]
    assert "2 --&gt; yes" in text


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_cue_times_round_the_same_way_and_never_run_backwards(fmt: ResponseFormat) -> None:
    segments = [
        Segment(id=0, start=1.0004, end=0.999, text="backwards"),
        Segment(id=1, start=2.0004, end=2.0016, text="a\n\n b "),
    ]
    body = render(english().model_copy(update={"segments": segments}), fmt)
    sep = "," if fmt == "srt" else "."
    assert f"00:00:01{sep}000 --> 00:00:01{sep}000\nbackwards\n" in body
    assert f"00:00:02{sep}000 --> 00:00:02{sep}002\na\nb\n" in body


@pytest.mark.parametrize("fmt", get_args(ResponseFormat))
def test_cyrillic_is_written_as_is(fmt: ResponseFormat) -> None:
    body = render(russian(), fmt)
    assert "Съешь же ещё этих мягких булок." in body
    assert "\\u" not in body
