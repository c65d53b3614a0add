"""`python app.py [--base ...]`: the command line, and the launch (Spaces run the same `python app.py`)."""

from __future__ import annotations

import argparse
import logging
import os
import threading

import gradio as gr

PARSER = argparse.ArgumentParser(description="headkit web app", epilog="Gradio reads GRADIO_SERVER_NAME/PORT too.")
PARSER.add_argument(
    "--base",
    help="base model: a local .pt or base .safetensors, a bare name like yolov8n.pt, or hf://owner/repo/file.pt",
)
MAX_UPLOAD = "500mb"


def parse() -> None:
    """Read the command line before the server's state is made: `--base X` is HEADKIT_BASE=X for this process."""
    args = PARSER.parse_args()
    if args.base:
        os.environ["HEADKIT_BASE"] = args.base


def launch(demo: gr.Blocks) -> None:
    from headkit.server import keep_heap_trimmed

    from . import state
    from .guard import MIDDLEWARE
    from .heads import load_model

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    threading.Thread(target=load_model, args=(state.BASE,), daemon=True).start()  # warm the cache; the UI starts now
    keep_heap_trimmed()  # what requests freed goes back to the system: RSS follows what the server holds
    demo.queue(default_concurrency_limit=state.INFERENCE_SLOTS).launch(
        max_file_size=MAX_UPLOAD,
        show_error=True,
        app_kwargs={"middleware": MIDDLEWARE},
        mcp_server=True,  # agents call the same verbs as tools (/gradio_api/mcp/), described by the handlers' docstrings
    )
