"""One real browser: headless Chromium opens the app, runs a Compare example, and the three result images render.

Uses Debian's chromium (`apt-get install chromium`) through Playwright's `executable_path`; set HEADKIT_CHROMIUM to use
another binary. Without a browser the test is skipped, unless HEADKIT_REQUIRE_BROWSER=1 (as in CI), where it fails.
"""

from __future__ import annotations

import os
import shutil

import pytest
from app_server import REPO, AppServer

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


def test_compare_example_renders_three_images(browser, tmp_path, base_weights):
    env = {"HEADKIT_BASE": str(base_weights), "HF_HUB_OFFLINE": "1"}
    SCREENSHOTS.mkdir(exist_ok=True)
    with AppServer(tmp_path / "app", env) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(server.url)
            page.get_by_text("Examples (shipped with Ultralytics)").wait_for(timeout=60_000)
            page.locator("button.gallery-item").first.click()  # bus.jpg
            page.locator("#in-image img").wait_for(timeout=30_000)
            page.get_by_role("button", name="Compare", exact=True).click()
            for selector in RESULTS:
                page.locator(f"{selector} img").wait_for(timeout=120_000)
            page.get_by_text("largest confidence change against the base: 0").wait_for(timeout=30_000)
            sizes = [page.locator(f"{s} img").evaluate("img => [img.complete, img.naturalWidth]") for s in RESULTS]
        finally:
            page.screenshot(path=str(SCREENSHOTS / "compare.png"), full_page=True)
    assert all(complete and width > 0 for complete, width in sizes), sizes
