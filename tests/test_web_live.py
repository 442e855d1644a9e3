"""The web page's live mode in Debian's Chromium: a fake microphone plays a clip (speech, then
a pause, over and over), the page streams it to `/v1/realtime`, and the sentences appear."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from offline_asr.constants import CLIPS_DIR
from offline_asr.service.turns import wav_bytes
from support.audio_fixtures import read_wav
from support.server import Server
from test_web_page import CHROMIUM, LAUNCH_ARGS, MODEL, context, page

__all__ = ["context", "page"]  # the web page test's fixtures, over this module's browser

pytestmark = pytest.mark.slow

TURN_TIMEOUT = 120_000  # ms: a sentence at the speed of speech, then its transcription


@pytest.fixture(scope="module")
def speech_then_pause(tmp_path_factory: pytest.TempPathFactory) -> Path:
    samples, rate = read_wav(CLIPS_DIR / "en_short.wav")
    pcm = np.concatenate([samples[0], np.zeros(int(1.5 * rate), np.int16)]).astype("<i2")
    path = tmp_path_factory.mktemp("mic") / "speech_then_pause.wav"
    path.write_bytes(wav_bytes(pcm.tobytes(), rate))
    return path


@pytest.fixture(scope="module")
def browser(speech_then_pause: Path) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make test`", pytrace=False)
    args = [a for a in LAUNCH_ARGS if not a.startswith("--use-file-for-fake-audio-capture")]
    args.append(f"--use-file-for-fake-audio-capture={speech_then_pause}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield launched
        launched.close()


def test_live_mode_shows_each_sentence_as_it_is_spoken(page: Page, server: Server) -> None:
    page.context.grant_permissions(["microphone"])
    page.goto(server.url)
    expect(page.get_by_test_id("model-select").locator(f"option[value='{MODEL}']")).to_be_attached()
    page.get_by_test_id("model-select").select_option(MODEL)
    page.get_by_test_id("live-button").click()
    expect(page.get_by_test_id("live-button")).to_have_attribute("data-live", "true")
    # The fake microphone plays the clip in a loop from the browser's start, so the first
    # sentence heard may be cut; a whole one follows.
    whole = page.get_by_test_id("live-turn").filter(has_text="was warm and sunny").first
    expect(whole).to_be_visible(timeout=TURN_TIMEOUT)
    page.get_by_test_id("live-button").click()  # stop: the last sentence is finished, then off
    expect(page.get_by_test_id("live-button")).to_have_attribute(
        "data-live", "false", timeout=TURN_TIMEOUT
    )
    expect(page.get_by_test_id("live-error")).to_be_empty()


def test_live_mode_says_when_the_microphone_is_refused(browser: Browser, server: Server) -> None:
    context = browser.new_context()  # no microphone permission
    tab = context.new_page()
    tab.goto(server.url)
    tab.get_by_test_id("live-button").click()
    expect(tab.get_by_test_id("live-error")).to_contain_text("microphone")
    expect(tab.get_by_test_id("live-button")).to_have_attribute("data-live", "false")
    context.close()
