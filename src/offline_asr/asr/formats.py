"""A transcript as a file or an HTTP body: plain text, OpenAI's JSON shapes, SRT and WebVTT.

The JSON shapes are the ones OpenAI's transcription API returns, so that its clients can read
ours; the `x_offline_asr` key adds which model, weights and options produced the transcript.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any, Final, Literal, assert_never

from offline_asr.asr.base import TranscriptionResult

ResponseFormat = Literal["txt", "text", "json", "verbose_json", "srt", "vtt"]
"""`text` is OpenAI's name for plain text and `txt` the CLI's: both give the same output."""

FILE_SUFFIX: Final[dict[ResponseFormat, str]] = {
    "txt": ".txt",
    "text": ".txt",
    "json": ".json",
    "verbose_json": ".json",
    "srt": ".srt",
    "vtt": ".vtt",
}


# Whisper's language codes -> the lowercase English names OpenAI returns in `language`.
LANGUAGE_NAMES: Final[dict[str, str]] = {
    "af": "afrikaans",
    "am": "amharic",
    "ar": "arabic",
    "as": "assamese",
    "az": "azerbaijani",
    "ba": "bashkir",
    "be": "belarusian",
    "bg": "bulgarian",
    "bn": "bengali",
    "bo": "tibetan",
    "br": "breton",
    "bs": "bosnian",
    "ca": "catalan",
    "cs": "czech",
    "cy": "welsh",
    "da": "danish",
    "de": "german",
    "el": "greek",
    "en": "english",
    "es": "spanish",
    "et": "estonian",
    "eu": "basque",
    "fa": "persian",
    "fi": "finnish",
    "fo": "faroese",
    "fr": "french",
    "gl": "galician",
    "gu": "gujarati",
    "ha": "hausa",
    "haw": "hawaiian",
    "he": "hebrew",
    "hi": "hindi",
    "hr": "croatian",
    "ht": "haitian creole",
    "hu": "hungarian",
    "hy": "armenian",
    "id": "indonesian",
    "is": "icelandic",
    "it": "italian",
    "ja": "japanese",
    "jw": "javanese",
    "ka": "georgian",
    "kk": "kazakh",
    "km": "khmer",
    "kn": "kannada",
    "ko": "korean",
    "la": "latin",
    "lb": "luxembourgish",
    "ln": "lingala",
    "lo": "lao",
    "lt": "lithuanian",
    "lv": "latvian",
    "mg": "malagasy",
    "mi": "maori",
    "mk": "macedonian",
    "ml": "malayalam",
    "mn": "mongolian",
    "mr": "marathi",
    "ms": "malay",
    "mt": "maltese",
    "my": "myanmar",
    "ne": "nepali",
    "nl": "dutch",
    "nn": "nynorsk",
    "no": "norwegian",
    "oc": "occitan",
    "pa": "punjabi",
    "pl": "polish",
    "ps": "pashto",
    "pt": "portuguese",
    "ro": "romanian",
    "ru": "russian",
    "sa": "sanskrit",
    "sd": "sindhi",
    "si": "sinhala",
    "sk": "slovak",
    "sl": "slovenian",
    "sn": "shona",
    "so": "somali",
    "sq": "albanian",
    "sr": "serbian",
    "su": "sundanese",
    "sv": "swedish",
    "sw": "swahili",
    "ta": "tamil",
    "te": "telugu",
    "tg": "tajik",
    "th": "thai",
    "tk": "turkmen",
    "tl": "tagalog",
    "tr": "turkish",
    "tt": "tatar",
    "uk": "ukrainian",
    "ur": "urdu",
    "uz": "uzbek",
    "vi": "vietnamese",
    "yi": "yiddish",
    "yo": "yoruba",
    "yue": "cantonese",
    "zh": "chinese",
}


def render(result: TranscriptionResult, fmt: ResponseFormat) -> str:
    """The transcript in `fmt`, as written to a file or sent as an HTTP body."""
    match fmt:
        case "txt" | "text":
            return result.text.strip() + "\n"
        case "json":
            return _dumps({"text": result.text, "usage": _usage(result), **_provenance(result)})
        case "verbose_json":
            return _dumps(_verbose(result))
        case "srt":
            return "".join(
                f"{n}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n\n"
                for n, (start, end, text) in enumerate(_cues(result), start=1)
            )
        case "vtt":
            # Cue text is markup in WebVTT: `&`, `<` and `>` (as in "-->") must be escaped.
            return "WEBVTT\n\n" + "".join(
                f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n"
                f"{html.escape(text, quote=False)}\n\n"
                for start, end, text in _cues(result)
            )
        case _:
            assert_never(fmt)


def _dumps(data: dict[str, Any]) -> str:
    # Non-ASCII as is: a Russian transcript stays readable in the file.
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def _usage(result: TranscriptionResult) -> dict[str, Any]:
    """OpenAI bills whole seconds of input audio."""
    return {"type": "duration", "seconds": math.ceil(result.duration)}


def _provenance(result: TranscriptionResult) -> dict[str, Any]:
    """Our extra key: OpenAI's models allow extra keys, so its clients still parse the body."""
    return {
        "x_offline_asr": {
            "model_id": result.model_id,
            "manifest_version": result.manifest_version,
            "fingerprint": result.fingerprint,
            "engine": result.engine,
            "options": result.options.model_dump(mode="json"),
            "runtime": result.runtime,
        }
    }


def _verbose(result: TranscriptionResult) -> dict[str, Any]:
    """OpenAI's `TranscriptionVerbose`; scores an engine does not give are 0.0 (OpenAI needs
    numbers), and `words` is there only when the engine gave word timestamps."""
    data: dict[str, Any] = {
        "task": result.options.task,
        "language": LANGUAGE_NAMES.get(result.language, result.language),
        "duration": result.duration,
        "text": result.text,
        "segments": [
            {
                "id": s.id,
                "seek": 0,  # the engines do not report the decoding window
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": s.tokens,
                "temperature": result.options.temperature,
                "avg_logprob": s.avg_logprob or 0.0,
                "compression_ratio": s.compression_ratio or 0.0,
                "no_speech_prob": s.no_speech_prob or 0.0,
            }
            for s in result.segments
        ],
    }
    if any(s.words is not None for s in result.segments):
        data["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end}
            for s in result.segments
            for w in s.words or []
        ]
    return {**data, "usage": _usage(result), **_provenance(result)}


def _cues(result: TranscriptionResult) -> list[tuple[int, int, str]]:
    """(start ms, end ms, text) per segment with text.

    Both ends are rounded to the millisecond the same way and the end is held at or after the
    start; blank lines are dropped from the text since one would end the cue.
    """
    cues: list[tuple[int, int, str]] = []
    for s in result.segments:
        text = "\n".join(line.strip() for line in s.text.splitlines() if line.strip())
        if text:
            start = max(0, round(s.start * 1000))
            cues.append((start, max(start, round(s.end * 1000)), text))
    return cues


def _timestamp(ms: int, separator: str) -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (WebVTT)."""
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    seconds, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{ms:03d}"
