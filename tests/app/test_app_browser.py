"""`lavila app` in a real browser: the system Chromium, headless, driven by Playwright (which never downloads a
browser of its own here: ``executable_path`` is Debian's ``chromium``).

Search for a moment, see ranked results, click one, and the player's ``currentTime`` is at the segment; then
narrate an uploaded video and watch the progress bar fill. Screenshots go to ``tests/artifacts/`` (git-ignored;
``LAVILA_TEST_ARTIFACTS`` moves them). Every request the page makes to anything but 127.0.0.1 is aborted.
Skipped, with the reason, where Playwright or Chromium is missing (``.ci/run`` installs both).
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from pathlib import Path

import pytest

from tests.app.conftest import CAPTIONS
from tests.benchmark_files import EGO
from tests.conftest import MEDIA, REPO

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required"]
TIMEOUT_MS = 60_000


def _chromium() -> str:
    for candidate in (os.environ.get("LAVILA_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        found = candidate and shutil.which(candidate)
        if found:
            return found
    pytest.skip("no Chromium on this machine (apt-get install chromium, or set LAVILA_CHROMIUM)")


@pytest.fixture
def artifacts() -> Path:
    folder = Path(os.environ.get("LAVILA_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(app_server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[browser]' (Playwright)")
    executable = _chromium()
    with sync_api.sync_playwright() as pw:
        try:  # Playwright gives every launch a fresh temporary profile (its --user-data-dir)
            browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
                                         timeout=TIMEOUT_MS)
        except sync_api.Error as err:
            pytest.skip(f"{executable} does not start headless here: {str(err).splitlines()[0]}")
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        blocked: list[str] = []

        def only_loopback(route):
            if urllib.parse.urlsplit(route.request.url).hostname == "127.0.0.1":
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort()

        context.route("**/*", only_loopback)
        p = context.new_page()
        p.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        p.on("pageerror", lambda exc: errors.append(str(exc)))
        yield p
        context.close()
        browser.close()
        assert not errors, f"JavaScript errors: {errors}"
        assert not blocked, f"the page tried to reach other hosts: {blocked}"


def test_search_click_a_result_and_the_player_jumps_to_the_moment(app_server, page, artifacts):
    page.goto(app_server.url + "/")
    page.wait_for_function("() => document.querySelector('#info').textContent.includes('segments')")
    page.fill("#q", "someone kneads dough")
    page.press("#q", "Enter")
    page.wait_for_selector(".result")
    results = page.eval_on_selector_all(".result", "bs => bs.map(b => ({video: b.dataset.video, "
                                        "start: +b.dataset.start, end: +b.dataset.end, rank: +b.dataset.rank, "
                                        "score: +b.dataset.score}))")
    assert len(results) == len(app_server.state.index["windows"])
    assert [r["rank"] for r in results] == list(range(1, len(results) + 1))
    assert all(a["score"] >= b["score"] for a, b in zip(results, results[1:]))
    assert "moments for" in page.inner_text("#status")

    target = next(r for r in results if r["video"] == "kitchen/knead.mp4" and r["start"] > 0)
    page.click(f'.result[data-video="kitchen/knead.mp4"][data-start="{target["start"]:g}"]')
    page.wait_for_function("() => { const p = document.querySelector('#player'); "
                           "return p.dataset.seeked !== undefined && p.readyState >= 1 || p.error !== null; }")
    state = page.evaluate("() => { const p = document.querySelector('#player'); return {t: p.currentTime, "
                          "error: p.error && p.error.code, src: p.currentSrc, duration: p.duration}; }")
    assert state["error"] is None, f"the player could not load {state['src']}: MediaError {state['error']}"
    assert state["src"].endswith("/media/kitchen/knead.mp4") and state["duration"] == pytest.approx(5.0, abs=0.1)
    # at the segment: seeked to its start (it may have played on a little since)
    assert target["start"] - 0.05 <= state["t"] <= target["end"] + 0.5, (state, target)
    page.wait_for_function("() => document.querySelectorAll('#timeline li[data-start]').length === 3")
    assert [c.strip() for c in page.locator("#timeline li .c").all_inner_texts()] == CAPTIONS
    page.wait_for_function("() => [...document.querySelectorAll('.result img')].some(i => i.complete && "
                           "i.naturalWidth)")
    shot = artifacts / "app_search.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000

    # a timeline entry seeks the player too
    page.locator("#timeline li[data-start]").nth(2).click()
    page.wait_for_function("() => Math.abs(document.querySelector('#player').dataset.seeked - 3.0) < 0.3")


def test_narrate_page_uploads_a_video_and_fills_the_progress_bar(app_server, page, artifacts):
    page.goto(app_server.url + "/narrate")
    page.wait_for_function("() => document.querySelectorAll('#video-select option').length === 3")
    page.set_input_files("#upload", str(MEDIA / EGO))
    page.click("#upload-button")
    page.wait_for_function("() => ['done', 'failed'].includes(document.querySelector('#job-status').dataset.state)",
                           timeout=120_000)
    assert page.inner_text("#job-status") == "done: 1 windows narrated"
    assert page.evaluate("() => document.querySelector('#progress').value === document.querySelector('#progress').max")
    page.wait_for_function("() => document.querySelectorAll('#timeline li[data-start]').length === 1")
    assert page.input_value("#video-select") == f"@uploads/{EGO}"
    shot = artifacts / "app_narrate.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
