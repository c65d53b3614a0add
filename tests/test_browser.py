"""One real browser: headless Chromium opens the app, runs a Compare example (the three result images render) and a
video (the annotated video the app returns plays: Chromium decodes its frames), and adds a head from the Hub's list
for the base with one click.

Uses Debian's chromium (`apt-get install chromium`) through Playwright's `executable_path`; set HEADKIT_CHROMIUM to use
another binary. Without a browser the test is skipped, unless HEADKIT_REQUIRE_BROWSER=1 (as in CI), where it fails.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import pytest
from app_server import REPO, AppServer
from hub_server import LoopbackHub
from kit import make_video

import headkit

pytestmark = pytest.mark.browser
SCREENSHOTS = REPO / "screenshots"  # git-ignored
RESULTS = ("#out-base", "#out-custom", "#out-merged")


def chromium() -> str:
    found = os.environ.get("HEADKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "no chromium found (apt-get install chromium, or set HEADKIT_CHROMIUM)"
    if os.environ.get("HEADKIT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"HEADKIT_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("HEADKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(
                "HEADKIT_REQUIRE_BROWSER=1 but playwright is not installed (pip install -r requirements-dev.txt)"
            )
        pytest.skip("playwright is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@contextmanager
def app_page(browser, server: AppServer, *, height: int, screenshot: str):
    """The app (the suite's shared offline server) open in a new Chromium page, as a new visitor: a new session;
    a full-page screenshot is kept whatever happens."""
    SCREENSHOTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": height})
    try:
        page.goto(server.url)
        yield page
    finally:
        page.screenshot(path=str(SCREENSHOTS / screenshot), full_page=True)
        page.close()


def test_compare_example_renders_three_images(browser, offline_app):
    with app_page(browser, offline_app, height=1000, screenshot="compare.png") as page:
        page.get_by_text("Examples (shipped with Ultralytics)").wait_for(timeout=60_000)
        page.locator("button.gallery-item").first.click()  # the composite: bus.jpg with a drawn plate
        page.locator("#in-image img").wait_for(timeout=30_000)
        page.get_by_role("button", name="Compare", exact=True).click()
        for selector in RESULTS:
            page.locator(f"{selector} img").wait_for(timeout=120_000)
        page.get_by_text("largest confidence change against the base: 0").wait_for(timeout=30_000)
        page.get_by_text("Time for this image (pre-process, inference, NMS): base").wait_for(timeout=30_000)
        sizes = [page.locator(f"{s} img").evaluate("img => [img.complete, img.naturalWidth]") for s in RESULTS]
    assert all(complete and width > 0 for complete, width in sizes), sizes


def test_annotated_video_plays_in_the_browser(browser, offline_app, tmp_path, bus_jpg, plate_images):
    video = make_video(tmp_path / "street.mp4", [bus_jpg, plate_images[0]], repeat=3, h264=True)  # as a phone
    with app_page(browser, offline_app, height=1400, screenshot="compare_video.png") as page:
        page.get_by_text("Video: the merged model on every frame").click()
        page.locator("#in-video input[type=file]").set_input_files(str(video))
        page.locator("#in-video video").wait_for(timeout=60_000)
        page.get_by_role("button", name="Run on video").click()
        played = page.locator("#out-video video")
        played.wait_for(timeout=180_000)
        page.wait_for_function(
            "() => { const v = document.querySelector('#out-video video'); return v && v.readyState >= 2; }",
            timeout=60_000,
        )
        state = played.evaluate("v => [v.readyState, v.videoWidth, v.videoHeight, v.duration]")
        errors = page.get_by_text("Video not playable").count()
        page.get_by_text("6 frames at 5 fps").wait_for(timeout=30_000)
    ready, width, height, duration = state
    assert ready >= 2 and (width, height) == (640, 480) and duration > 1.0, state  # decoded: H.264 plays here
    assert errors == 0


def test_a_run_survives_a_page_reload(browser, offline_app, tmp_path, plates_dir):
    """Start training, reload the page: the reopened page shows the same run and then its finished head."""
    import shutil as files

    from kit import copy_tiny_plates

    copy_tiny_plates(plates_dir, tmp_path / "zip" / "tiny_plates")
    archive = files.make_archive(str(tmp_path / "tiny_plates"), "zip", tmp_path / "zip", "tiny_plates")
    with app_page(browser, offline_app, height=1400, screenshot="train_reload.png") as page:
        page.get_by_role("tab", name="Train").click()
        page.locator("#dataset input[type=file]").set_input_files(archive)
        page.get_by_text("Estimated training time").wait_for(timeout=60_000)
        for slider, value in (("#epochs", "4"), ("#train-size", "160"), ("#batch", "4")):
            number = page.locator(f"{slider} input[type=number]")
            number.fill(value)
            number.press("Enter")
        page.get_by_role("button", name="Train", exact=True).click()
        page.get_by_text("Epoch 1/4 done.").wait_for(timeout=120_000)
        page.reload()
        page.get_by_role("tab", name="Train").click()
        page.get_by_text("it is now selected in Compare").wait_for(timeout=180_000)  # the same run, finished
        head = page.locator("#head-out").inner_text(timeout=30_000)
        page.get_by_role("tab", name="Compare").click()
        chosen = page.locator("#compare-heads").inner_text(timeout=30_000)
    assert "tiny_plates\n.safetensors" in head  # the head, ready to download (name and extension shown apart)
    assert "tiny_plates" in chosen and "license_plate_neck" not in chosen, chosen  # the new head alone, selected


def test_a_hub_head_for_this_base_is_listed_and_added_with_one_click(
    browser, tmp_path, base_weights, plate_head, monkeypatch
):
    """A head pushed for this base is listed under Compare's "Add a head" when the section opens (the loopback Hub,
    real HTTP); a click on its row adds it to the session and selects it in Compare."""
    with LoopbackHub(tmp_path / "hub") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "pusher"))
        headkit.push_head(plate_head, "erin/plates", token="hf_loopback_write_token")
        env = {"HEADKIT_BASE": str(base_weights), "HEADKIT_BASES": "", "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
        with (
            AppServer(tmp_path / "app", env | {"HF_TOKEN": ""}) as server,
            app_page(browser, server, height=1400, screenshot="compare_hub.png") as page,
        ):
            page.locator("#add-head").get_by_text("Add a head").click()
            cell = page.locator("#hub-heads [data-testid='cell-0-0']")  # the first row's repository
            cell.wait_for(timeout=60_000)
            line, repository = page.locator("#hub-line").inner_text(timeout=30_000), cell.inner_text()
            cell.click()
            page.get_by_text("added session/license_plate").wait_for(timeout=60_000)
            page.wait_for_function(
                "() => document.querySelector('#compare-heads').innerText.includes('session/license_plate')",
                timeout=30_000,
            )
            chosen = page.locator("#compare-heads").inner_text()
    assert line.startswith(f"1 head(s) on {hub.url} fit this base") and repository == "erin/plates", line
    assert "license_plate_neck" not in chosen, chosen  # the added head alone is selected
