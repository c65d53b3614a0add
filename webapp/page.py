"""The page: what the tabs share (the base, the banner, the browser's user key, the head pickers) and the tabs put
together, each built by its own module with its events beside its components."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from headkit import server

from . import keypoints, share, texts
from .compare import CompareTab
from .heads import Heads
from .state import BASE, BASES, SETTINGS
from .train import TrainTab


@dataclass
class Page:
    """What the tabs share: the page, the chosen base and its banner, the browser's user key, the head pickers."""

    demo: gr.Blocks
    base: gr.Dropdown
    banner: gr.Markdown
    base_info: gr.JSON
    browser_key: gr.BrowserState
    heads: Heads


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="headkit", delete_cache=(3600, int(SETTINGS.job_max_age_s))) as demo:
        gr.Markdown(texts.INTRO)
        if SETTINGS.oauth:  # a Space with `hf_oauth: true`: training counts runs per account, pushes use its token
            gr.LoginButton()
        banner = gr.Markdown()
        # the user key, in this browser's local storage (outside the tabs: it must load with the page)
        browser_key = gr.BrowserState(None, storage_key="headkit-user-key", secret=SETTINGS.browser_secret)
        with gr.Row():
            base = gr.Dropdown([(server.display_name(b), b) for b in BASES], value=BASE, label="Base model")
            base_info = gr.JSON(label="Base", visible=False)
        page = Page(demo, base, banner, base_info, browser_key, Heads.make())
        page.heads.wire(demo, base, banner, base_info)  # first: a page load lists the heads before anything else
        with gr.Tab("Compare"):
            CompareTab(page)
        with gr.Tab("Train"):
            TrainTab(page)
        with gr.Tab("Keypoint converter"):
            keypoints.tab()
        with gr.Tab("Merge & share"):
            share.tab(page)
    return demo
