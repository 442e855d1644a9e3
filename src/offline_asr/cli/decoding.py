"""The decode options `transcribe` and `batch` share: one declaration, one validation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import typer

from offline_asr.asr.device import Device
from offline_asr.errors import OfflineAsrError

if TYPE_CHECKING:
    from offline_asr.asr.base import DecodeOptions

LanguageOption = Annotated[str | None, typer.Option(help="Language code (default: detect)")]
TaskOption = Annotated[
    Literal["transcribe", "translate"], typer.Option(help="translate: into English (Whisper)")
]
BeamSizeOption = Annotated[int, typer.Option(help="Beam size")]
PromptOption = Annotated[str | None, typer.Option(help="Initial prompt (Whisper)")]
WordTimestampsOption = Annotated[bool, typer.Option(help="Word-level timestamps")]
VadFilterOption = Annotated[bool, typer.Option(help="Skip non-speech with Silero VAD")]
BatchSizeOption = Annotated[
    int | None, typer.Option(help="Batched long-form decoding with this batch size")
]
DeviceOption = Annotated[Device, typer.Option(help="Where to run the model")]
FullVerifyOption = Annotated[
    bool, typer.Option(help="Re-hash every weight file instead of trusting the cache")
]


def decode_options(
    language: str | None,
    task: Literal["transcribe", "translate"],
    beam_size: int,
    prompt: str | None,
    word_timestamps: bool,
    vad_filter: bool,
    batch_size: int | None,
) -> DecodeOptions:
    """The options as the engines take them; a bad value is bad usage (exit code 2)."""
    from pydantic import ValidationError

    from offline_asr.asr.base import DecodeOptions

    try:
        return DecodeOptions(
            language=language, task=task, beam_size=beam_size, initial_prompt=prompt,
            word_timestamps=word_timestamps, vad_filter=vad_filter, batch_size=batch_size,
        )  # fmt: skip
    except ValidationError as error:
        problem = error.errors()[0]
        raise OfflineAsrError(f"bad option {problem['loc'][0]}: {problem['msg']}") from error
