"""The web page at `/`, driven in Debian's Chromium through Playwright against the session server.

Upload and transcribe, timestamps and provenance on the page, SRT/VTT downloads, the API's error
message for a file that is not audio, an API key, and recording from a fake microphone (fed
from a clip) or a refused one. `make test` installs /usr/bin/chromium when it is missing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Request,
    Route,
    expect,
    sync_playwright,
)

from offline_asr.constants import CLIPS_DIR
from support.server import Server

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CLIP = CLIPS_DIR / "en_short.wav"
MODEL = "whisper-tiny.en"
# Root needs --no-sandbox; the rest keep Chromium from calling out of the closed network.
LAUNCH_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-proxy-server",  # loopback only: no proxy from the environment in between
    # A microphone that plays the clip, for the recording test (granted per context).
    "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={CLIP}",
]  # fmt: skip
TRANSCRIBE_TIMEOUT = 60_000  # ms; tiny.en takes about a second for the clip
# The API docs are opened under a name, as on a site, not as localhost.
DOCS_HOST = "offline-asr.test"
LAUNCH_ARGS.append(f"--host-resolver-rules=MAP {DOCS_HOST} 127.0.0.1")


@pytest.fixture(scope="session", autouse=True)
def _chromium_installed() -> None:
    """A failure, not a skip, and before the session server spends time starting: autouse and
    session scope put this check first."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `make test`, which installs Debian's chromium when run "
            "as root (or `apt-get install chromium`)",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser, server: Server) -> Iterator[BrowserContext]:
    """A fresh profile (no permissions, empty storage) whose page loads only from the server."""
    ctx = browser.new_context(viewport={"width": 1000, "height": 900}, accept_downloads=True)
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext, server: Server) -> Iterator[Page]:
    """A page that must raise no uncaught script error nor load anything from elsewhere."""
    tab = context.new_page()
    problems: list[str] = []

    def check(request: Request) -> None:
        if not request.url.startswith((f"{server.url}/", "blob:", "data:")):
            problems.append(f"request outside the server: {request.url}")

    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    tab.on("request", check)
    yield tab
    assert problems == []


def open_page(page: Page, server: Server, model: str = MODEL) -> None:
    page.goto(server.url)
    expect(page.get_by_test_id("model-select").locator(f"option[value='{model}']")).to_be_attached()
    page.get_by_test_id("model-select").select_option(model)


def transcribe(page: Page) -> None:
    page.get_by_test_id("transcribe-button").click()
    expect(page.get_by_test_id("segment").first).to_be_visible(timeout=TRANSCRIBE_TIMEOUT)


def model_row(page: Page, server: Server, model: str) -> dict[str, object]:
    rows: list[dict[str, object]] = page.request.get(f"{server.url}/v1/models").json()["data"]
    return next(row for row in rows if row["id"] == model)


def test_upload_shows_timestamps_provenance_and_downloads(page: Page, server: Server) -> None:
    open_page(page, server)
    page.get_by_test_id("file-input").set_input_files(CLIP)
    expect(page.get_by_test_id("selected-audio")).to_contain_text("en_short.wav")
    # Remember every busy state the button goes through: the answer may come back quickly.
    page.evaluate(
        """() => {
          const button = document.querySelector('[data-testid=transcribe-button]');
          window.busyStates = [];
          new MutationObserver(() => window.busyStates.push(
            [button.disabled, button.getAttribute('aria-busy'), button.textContent.trim()]
          )).observe(button, {attributes: true, childList: true, subtree: true});
        }"""
    )
    transcribe(page)

    transcript = page.get_by_test_id("segments").inner_text().lower()
    assert "weather" in transcript
    assert "river" in transcript
    times = page.get_by_test_id("segment-time").all_inner_texts()
    assert times
    assert all(re.fullmatch(r"\d\d:\d\d\.\d\d → \d\d:\d\d\.\d\d", t) for t in times), times
    assert times[0].startswith("00:00.00 → ")
    states = page.evaluate("window.busyStates")
    assert [True, "true", "Transcribing…"] in states, states
    expect(page.get_by_test_id("transcribe-button")).to_be_enabled()

    row = model_row(page, server, MODEL)
    expect(page.get_by_test_id("result-model")).to_have_text(MODEL)
    expect(page.get_by_test_id("result-manifest-version")).to_have_text(
        str(row["manifest_version"])
    )
    expect(page.get_by_test_id("result-fingerprint")).to_have_text(str(row["fingerprint"]))
    expect(page.get_by_test_id("error")).to_be_empty()

    with page.expect_download(timeout=TRANSCRIBE_TIMEOUT) as srt_download:
        page.get_by_test_id("download-srt").click()
    assert srt_download.value.suggested_filename == "en_short.srt"
    srt = Path(srt_download.value.path()).read_text(encoding="utf-8")
    assert srt.startswith("1\n00:00:00,000 -->"), srt
    assert "weather" in srt.lower()

    with page.expect_download(timeout=TRANSCRIBE_TIMEOUT) as vtt_download:
        page.get_by_test_id("download-vtt").click()
    assert vtt_download.value.suggested_filename == "en_short.vtt"
    vtt = Path(vtt_download.value.path()).read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 -->"), vtt


def test_api_error_is_shown_and_the_page_stays_usable(
    page: Page, server: Server, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("these are meeting notes, not a recording\n")
    answer = page.request.post(
        f"{server.url}/v1/audio/transcriptions",
        multipart={
            "file": {"name": notes.name, "mimeType": "text/plain", "buffer": notes.read_bytes()},
            "model": MODEL,
            "response_format": "verbose_json",
        },
    )
    assert answer.status == 400
    message: str = answer.json()["error"]["message"]

    open_page(page, server)
    page.get_by_test_id("file-input").set_input_files(notes)
    page.get_by_test_id("transcribe-button").click()
    expect(page.get_by_test_id("error")).to_have_text(message, timeout=TRANSCRIBE_TIMEOUT)
    expect(page.get_by_test_id("error")).to_be_visible()
    expect(page.get_by_test_id("result")).to_be_hidden()
    expect(page.get_by_test_id("transcribe-button")).to_be_enabled()

    page.get_by_test_id("file-input").set_input_files(CLIP)
    expect(page.get_by_test_id("error")).to_be_empty()
    transcribe(page)
    assert "weather" in page.get_by_test_id("segments").inner_text().lower()
    expect(page.get_by_test_id("error")).to_be_hidden()


def test_nothing_chosen_is_explained(page: Page, server: Server) -> None:
    open_page(page, server)
    page.get_by_test_id("transcribe-button").click()
    expect(page.get_by_test_id("error")).to_contain_text("Choose an audio file")


def test_api_key_is_sent_and_kept_for_the_session_only(page: Page, server: Server) -> None:
    """The session server has no keys: a route stands in for one that wants `sesame`."""
    seen: list[str | None] = []

    def guard(route: Route) -> None:
        auth = route.request.headers.get("authorization")
        seen.append(auth)
        if auth == "Bearer sesame":
            route.continue_()
        else:
            route.fulfill(
                status=401,
                json={"error": {"message": "missing or invalid API key", "type": "x"}},
            )

    page.route(f"{server.url}/v1/**", guard)
    page.goto(server.url)
    status = page.get_by_test_id("model-status")
    expect(status).to_contain_text("missing or invalid API key")
    expect(status).to_contain_text("Enter the server's API key")

    page.get_by_test_id("api-key-input").fill("sesame")
    page.get_by_test_id("api-key-input").press("Tab")  # `change` reloads the models
    expect(page.get_by_test_id("model-select").locator(f"option[value='{MODEL}']")).to_be_attached()
    assert seen[-1] == "Bearer sesame"
    assert page.evaluate("sessionStorage.getItem('offline-asr.api-key')") == "sesame"
    assert page.evaluate("localStorage.length") == 0

    page.get_by_test_id("model-select").select_option(MODEL)
    page.get_by_test_id("file-input").set_input_files(CLIP)
    transcribe(page)
    assert seen[-1] == "Bearer sesame"


def test_recording_from_the_microphone(context: BrowserContext, server: Server) -> None:
    context.grant_permissions(["microphone"], origin=server.url)
    page = context.new_page()
    open_page(page, server)
    record = page.get_by_test_id("record-button")
    record.click()
    expect(record).to_have_text("Stop recording")
    expect(page.get_by_test_id("record-status")).to_contain_text("Recording")
    page.wait_for_timeout(3000)  # the fake microphone plays the clip from its start
    record.click()
    expect(record).to_have_text("Record")
    expect(page.get_by_test_id("recording-preview")).to_be_visible()
    expect(page.get_by_test_id("selected-audio")).to_contain_text("a recording")

    transcribe(page)
    assert "weather" in page.get_by_test_id("segments").inner_text().lower()
    expect(page.get_by_test_id("error")).to_be_empty()


def test_refused_microphone_is_explained(page: Page, server: Server) -> None:
    """No permission granted: headless Chromium refuses the microphone."""
    open_page(page, server)
    page.get_by_test_id("record-button").click()
    expect(page.get_by_test_id("record-status")).to_contain_text("Microphone access was denied")
    expect(page.get_by_test_id("record-button")).to_have_text("Record")
    expect(page.get_by_test_id("record-button")).to_be_enabled()
    page.get_by_test_id("file-input").set_input_files(CLIP)  # the other way in still works
    expect(page.get_by_test_id("selected-audio")).to_contain_text("en_short.wav")
    expect(page.get_by_test_id("transcribe-button")).to_be_enabled()


def test_api_docs_render_with_nothing_from_elsewhere(
    context: BrowserContext, server: Server
) -> None:
    """Swagger UI, its script, style and icon, all from the server: a browser in a closed
    network reaches nothing else. Requests elsewhere are stopped here before they leave, and
    fail the test."""
    origin = server.url.replace("127.0.0.1", DOCS_HOST)
    outside: list[str] = []

    def only_the_server(route: Route) -> None:
        if route.request.url.startswith(f"{origin}/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(f"{origin}/docs")
    expect(tab.get_by_text("/v1/audio/transcriptions").first).to_be_visible()
    tab.wait_for_load_state("networkidle")
    assert outside == []
    assert errors == []


def test_redoc_is_not_offered(page: Page, server: Server) -> None:
    """ReDoc's bundle loads its maker's logo from a CDN whatever it is told."""
    assert page.request.get(f"{server.url}/redoc").status == 404
