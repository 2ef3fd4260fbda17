"""The web console end to end in a real browser: Playwright drives Debian's Chromium (headless;
registry browsers cannot be downloaded here, so the system executable is used) against the
gateway, which serves the console and the API on one origin. Sign up, create and revoke a key,
upload a document and watch it become READY, search it, ask a grounded question and see the
streamed answer and a citation, play synthesized speech, transcribe a WAV file, watch the live
transcript of a WAV fed as the fake microphone (interim words, then finals, over the Realtime
WebSocket bridge), see usage appear, read the API reference. A screenshot of each page
is saved under build/console-screenshots/."""

from __future__ import annotations

import base64
import re
import shutil
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

REPO = Path(__file__).resolve().parents[3]
SHOTS = REPO / "build" / "console-screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HANDBOOK = ("# Handbook\n\n## Vacation\nEmployees receive 27 vacation days per year.\n\n"
            "## Parking\nThe parking garage opens at 7 am.\n")


@pytest.fixture(scope="module")
def speech_wav(platform: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spoken sentence (synthesized by the platform itself) for the fake microphone."""
    base = f"http://{platform}"
    email = f"wav-{uuid.uuid4().hex[:8]}@example.com"
    token = httpx.post(f"{base}/v1/auth:signUp", json={
        "email": email, "password": "correct horse battery staple",
        "organizationDisplayName": "wav"}, timeout=30).json()["accessToken"]
    reply = httpx.post(f"{base}/v1/speech:synthesize", headers={"authorization": f"Bearer {token}"},
                       json={"text": "Hello, please open the parking garage.",
                             "audioConfig": {"encoding": "AUDIO_ENCODING_WAV", "sampleRateHertz": 16000}},
                       timeout=60)
    assert reply.status_code == 200, reply.text
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    path.write_bytes(base64.b64decode(reply.json()["audioContent"]))
    # A second of silence after the sentence: Chromium loops the file as the microphone, and
    # the pause ends each utterance (live mode shows its final) as a speaker's would.
    with wave.open(str(path), "rb") as reader:
        params, frames = reader.getparams(), reader.readframes(reader.getnframes())
    with wave.open(str(path), "wb") as writer:
        writer.setparams(params)
        writer.writeframes(frames + b"\0" * params.sampwidth * params.framerate)
    return path


@pytest.fixture(scope="module")
def browser(speech_wav: Path) -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "chromium missing: scripts/setup installs Debian's package"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={speech_wav}",
            "--autoplay-policy=no-user-gesture-required", "--no-sandbox",
        ])
        yield browser
        browser.close()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def goto(page: Page, base: str, route: str) -> None:
    page.goto(f"{base}/console/#/{route}")
    expect(page.locator(f"main[data-page='{route}'][data-ready='true']")).to_be_visible(timeout=30_000)


def test_console_end_to_end(platform: str, browser: Browser, speech_wav: Path, tmp_path: Path) -> None:
    base = f"http://{platform}"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["microphone"], origin=base)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())  # confirm() of revoke

    # Sign up.
    page.goto(f"{base}/console/")
    expect(page.get_by_role("heading", name="Create an account")).to_be_visible()
    shot(page, "01-signin")
    signup = page.locator("form", has=page.get_by_role("heading", name="Create an account"))
    signup.get_by_label("E-mail").fill(f"console-{uuid.uuid4().hex[:8]}@example.com")
    signup.get_by_label("Password").fill("correct horse battery staple")
    signup.get_by_label("Organization").fill("Console Org")
    signup.get_by_role("button", name="Sign up").click()
    expect(page.locator("main[data-page='documents'][data-ready='true']")).to_be_visible(timeout=30_000)

    # API keys: the secret is shown once; revoking flips the state.
    goto(page, base, "keys")
    page.get_by_label("Name").fill("browser key")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#new-secret")).to_contain_text("amk_")
    expect(page.get_by_role("cell", name="ACTIVE")).to_be_visible()
    shot(page, "02-keys")
    page.get_by_role("button", name="Revoke browser key").click()
    expect(page.get_by_role("cell", name="REVOKED")).to_be_visible()

    # Documents: upload with progress, live state until READY, search with highlights.
    goto(page, base, "documents")
    handbook = tmp_path / "handbook.md"
    handbook.write_text(HANDBOOK)
    page.locator("#file-input").set_input_files(str(handbook))
    expect(page.get_by_text("Uploaded handbook.md")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("cell", name="READY")).to_be_visible(timeout=120_000)
    page.get_by_label("Search your documents").fill("vacation days")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#search-results mark").first).to_be_visible()
    expect(page.locator("#search-results")).to_contain_text("27 vacation days")
    shot(page, "03-documents")

    # Chat: streamed, grounded answer with a citation that opens its passage.
    goto(page, base, "chat")
    page.get_by_role("textbox", name="Message").fill("How many vacation days do employees receive?")
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".badge")).to_have_text("complete", timeout=120_000)
    expect(answer.locator(".text")).to_contain_text("27 vacation days")
    answer.get_by_role("button", name="[1] handbook.md").click()
    expect(page.locator("dialog blockquote")).to_be_visible()
    shot(page, "04-chat")
    page.locator("dialog").get_by_role("button", name="Close").click()

    # Speech: synthesize and play; transcribe a file; transcribe the (fake) microphone.
    goto(page, base, "speech")
    page.get_by_role("textbox", name="Text").fill("Welcome to the console.")
    page.get_by_role("button", name="Speak").click()
    expect(page.locator("#tts-audio")).to_have_attribute("data-bytes", re.compile(r"^[1-9]\d{3,}$"))
    page.get_by_label("Transcribe a WAV file (mono, 16-bit)").set_input_files(str(speech_wav))
    transcript = page.locator("#transcript")
    expect(transcript).not_to_have_text("Transcribing…", timeout=60_000)
    expect(transcript).not_to_have_text("")
    expect(transcript).not_to_have_text("(no speech recognized)")
    from_file = transcript.inner_text()
    assert from_file.strip()
    # Live: the fake microphone (looping the WAV) streams through the Realtime WebSocket bridge;
    # interim words appear while a sentence is spoken, then its final transcript.
    page.get_by_role("button", name="Start live transcription").click()
    expect(page.locator("#live-status")).to_contain_text("Listening", timeout=30_000)
    expect(page.locator("#live-transcript")).not_to_have_attribute("data-interims", "0",
                                                                    timeout=60_000)
    expect(page.locator("#live-final")).not_to_be_empty(timeout=60_000)
    shot(page, "05-speech-live")
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#live-status")).to_contain_text("Stopped", timeout=30_000)
    expect(page.locator("#live-error")).to_be_empty()
    heard = set(page.locator("#live-final").inner_text().lower().replace(",", " ").split())
    print(f"live transcript: {heard}; from the file: {from_file!r}")
    assert len(heard & {"hello", "please", "open", "the", "parking", "garage"}) >= 3, heard
    shot(page, "05-speech")
    # A session the server ends before it starts (here: Playwright answers the WebSocket and
    # closes it as the gateway's policy would) is an error the page shows, not a silent stop.
    page.route_web_socket(re.compile(r"/openai/v1/realtime"),
                          lambda ws: ws.close(code=1008, reason="speech is not allowed"))
    page.get_by_role("button", name="Start live transcription").click()
    expect(page.locator("#live-error")).to_contain_text("speech is not allowed", timeout=30_000)
    expect(page.locator("#live-status")).to_have_text("Not listening.")
    expect(page.get_by_role("button", name="Start live transcription")).to_be_enabled()

    # Usage appears (metering is asynchronous: reload until the charts show).
    for _ in range(30):
        goto(page, base, "usage")
        if page.locator("figure.chart").count():
            break
        page.wait_for_timeout(1000)
    expect(page.locator("figure.chart").first).to_be_visible()
    shot(page, "06-usage")

    # API reference from the OpenAPI document.
    goto(page, base, "api")
    expect(page.get_by_role("heading", name="KnowledgeService")).to_be_visible()
    expect(page.get_by_text("/v1/documents:search").first).to_be_visible()
    shot(page, "07-api")

    # Responsive: the chat page on a phone-sized screen.
    page.set_viewport_size({"width": 390, "height": 844})
    goto(page, base, "chat")
    shot(page, "08-chat-mobile")
    assert not errors, errors
    context.close()
