"""A newcomer's first minutes: `python app.py` with no settings and no network shows what headkit does.

The app starts with none of the HEADKIT_* / HF_* variables a developer may have set (offline: HF_HUB_OFFLINE=1 and
an empty Hub cache), on the embedded base, and the first example compared with the default heads shows the new class
beside every base detection, unchanged. Once through gradio_client, once through a real headless Chromium.
"""

from __future__ import annotations

import pytest
from app_server import REPO, AppServer
from gradio_client import Client, handle_file
from test_browser import browser  # noqa: F401  (the Chromium fixture: skipped without a browser)

from headkit.settings import DEFAULT_BASE

EXAMPLE = REPO / "examples" / "bus_plate.jpg"  # the first example: bus.jpg with a plate headkit draws
DEFAULT_HEAD = "license_plate_neck"  # the app's default head selection
NEW_CLASS = "license_plate"
KEPT = "merged 2/2"  # the two people the base finds on the composite, kept unchanged
UNCHANGED = "largest confidence change against the base: 0"


def newcomer_app(workdir, **env: str) -> AppServer:
    """The app as a newcomer starts it: only the test's own scratch folders (jobs, Hub cache) and offline mode."""
    server = AppServer(workdir, {"HF_HUB_OFFLINE": "1", **env})
    for name in list(server.env):
        if name.startswith(("HEADKIT_", "HF_")) and name not in {"HEADKIT_JOBS_DIR", "HF_HOME", *env}:
            del server.env[name]
    server.env["HF_HUB_OFFLINE"] = "1"
    return server


@pytest.fixture(scope="module")
def fresh_app(tmp_path_factory):
    with newcomer_app(tmp_path_factory.mktemp("newcomer")) as server:
        yield server


def test_first_example_shows_the_new_class_beside_unchanged_base_detections(fresh_app):
    client = Client(fresh_app.url, verbose=False)
    banner, info = client.predict(DEFAULT_BASE, api_name="/load_model")
    assert info["loaded"] and info["names"] == {"0": "Normal", "1": "Fall"}, banner
    outputs = client.predict(DEFAULT_BASE, handle_file(EXAMPLE), [DEFAULT_HEAD], 0.25, 0.7, 640, api_name="/compare")
    line, result = outputs[4], outputs[5]
    plates = [d for d in result["detections"] if d["model"] == "merged" and d["name"] == NEW_CLASS]
    assert plates and max(d["confidence"] for d in plates) > 0.5, result["detections"]
    assert UNCHANGED in line and KEPT in line, line


def test_a_browser_sees_it_on_the_first_click(browser, fresh_app):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    try:
        page.goto(fresh_app.url)
        page.locator("button.gallery-item").first.click()  # the composite, listed first
        page.locator("#in-image img").wait_for(timeout=30_000)
        page.get_by_role("button", name="Compare", exact=True).click()
        page.locator("#out-merged img").wait_for(timeout=60_000)
        page.locator("#base-check").get_by_text(KEPT).wait_for(timeout=30_000)
        page.locator("#base-check").get_by_text(UNCHANGED).wait_for(timeout=30_000)
        row = page.get_by_role("row").filter(has_text="merged").filter(has_text=NEW_CLASS)  # the Detections table
        row.first.wait_for(timeout=30_000)
        toasts = page.locator(".toast-item").count()
    finally:
        page.close()
    assert toasts == 0, "the default base and head should raise no error at all"


def test_a_missing_base_is_said_once_as_text(browser, tmp_path):  # noqa: F811
    """yolov8n.pt from the Hub while offline: the page says so once, in words, and keeps working."""
    with newcomer_app(tmp_path / "app", HEADKIT_BASE="yolov8n.pt") as server:
        page = browser.new_page()
        try:
            page.goto(server.url)
            page.get_by_text("Base model yolov8n.pt is not available").first.wait_for(timeout=60_000)
            page.wait_for_timeout(3000)  # every page-load event has answered by now
            shown = page.get_by_text("is not available").count()
            toasts = page.locator(".toast-item").count()
            banner = page.get_by_text("Base model yolov8n.pt is not available").first.inner_text()
            page.locator("button.gallery-item").first.click()
            page.locator("#in-image img").wait_for(timeout=30_000)  # the example is in place before Compare
            page.get_by_role("button", name="Compare", exact=True).click()  # a click is answered, once
            page.locator(".toast-item").first.wait_for(timeout=30_000)
            page.wait_for_timeout(1000)
            toast = page.locator(".toast-item").all_inner_texts()
        finally:
            page.close()
    assert shown == 1 and toasts == 0, f"on page load: {shown} messages, {toasts} toasts"
    assert len(toast) == 1 and "Base model yolov8n.pt is not available" in toast[0], toast
    assert not any(mark in text for text in (banner, toast[0]) for mark in ("###", "`")), (banner, toast)


def test_the_help_quotes_the_readmes_benchmark_figures():
    """What the Train tab's help says of each head shape is what the README measured: one set of figures
    (webapp/figures.py), checked here against the README's table and the help text so that neither drifts alone."""
    from webapp import figures, texts

    section = (REPO / "README.md").read_text("utf-8").split("\n## Head shapes\n", 1)[1].split("\n## ", 1)[0]
    rows = {
        cells[1].strip(): [c.strip().strip("*") for c in cells[2:-1]]
        for line in section.splitlines()
        if line.startswith("| ") and len(cells := line.split("|")) >= 5
    }
    shapes = rows[""]  # the header row names the columns
    assert shapes == ["head only", "P3 last stage, narrow", "P3 path, narrow", "neck branch"], shapes
    accuracy = rows[
        f"new-class val mAP50, {figures.BENCH_EPOCHS} epochs at {figures.BENCH_IMGSZ} px "
        f"(full fine-tune: {figures.MAP50_FINETUNE:g})"
    ]
    sizes = rows["head file (fp16 safetensors), shipped"]
    latency = next(v for k, v in rows.items() if k.startswith("merged latency / base"))
    quoted = {
        "head only": (figures.MAP50_HEAD, figures.HEAD_MB, figures.LATENCY_HEAD),
        "P3 last stage, narrow": (
            figures.MAP50_P3_LAST_NARROW,
            figures.P3_LAST_NARROW_MB,
            figures.LATENCY_P3_LAST_NARROW,
        ),
        "P3 path, narrow": (figures.MAP50_P3_NARROW, figures.P3_NARROW_MB, figures.LATENCY_P3_NARROW),
        "neck branch": (figures.MAP50_NECK, figures.NECK_MB, figures.LATENCY_NECK),
    }
    for column, (map50, megabytes, slower) in quoted.items():
        at = shapes.index(column)
        assert accuracy[at].startswith(f"{map50:.3f} "), (column, accuracy[at])
        assert sizes[at].startswith(f"{megabytes:.1f} MB"), (column, sizes[at])
        assert latency[at] == f"{slower:.2f}", (column, latency[at])
        shown = next(label for label, _ in texts.SHAPE_CHOICES if label.startswith(column.capitalize()))
        assert f"mAP50 {map50:.3f}, {slower:.2f}× the base's time, {megabytes:.1f} MB" in shown, shown
    assert f"{figures.MAP50_FINETUNE:.3f}" in texts.BRANCH_HELP
