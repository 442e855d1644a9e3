"""`offline-asr listen FILE|-`: live transcription through a running server's /v1/realtime."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from offline_asr.cli.common import reports_errors


@reports_errors
def listen(
    source: Annotated[
        str, typer.Argument(metavar="FILE", help="Recording to stream, or - for raw PCM16 on stdin")
    ],
    url: Annotated[
        str, typer.Option(envvar="OFFLINE_ASR_URL", help="Server address")
    ] = "http://127.0.0.1:8000",
    model: Annotated[
        str | None, typer.Option(help="Model id, or `auto` (default: the server's first model)")
    ] = None,
    language: Annotated[str | None, typer.Option(help="Language code (default: detect)")] = None,
    prompt: Annotated[str | None, typer.Option(help="Initial prompt (Whisper)")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="OFFLINE_ASR_API_KEY", help="The server's API key")
    ] = None,
    vad: Annotated[
        bool, typer.Option(help="Turns end at pauses (server VAD); --no-vad: one turn at the end")
    ] = True,
    speed: Annotated[
        float, typer.Option(min=0, help="1: send a file as fast as it plays; 0: as fast as taken")
    ] = 1.0,
    rate: Annotated[
        Literal[16000, 24000], typer.Option(help="Sample rate of raw PCM16 on stdin")
    ] = 16000,
) -> None:
    """Stream a recording (or a microphone through stdin, e.g. `arecord -q -f S16_LE -r 16000
    -c 1 -t raw | offline-asr listen -`) to a running server and print each turn's text as it
    comes (a terminal also shows the partial text)."""
    from offline_asr.service.listen import ListenOptions, listen_source

    options = ListenOptions(
        url=url, model=model, language=language, prompt=prompt, api_key=api_key, vad=vad,
        speed=speed, rate=rate,
    )  # fmt: skip
    listen_source(source, options)
