"""headkit's web app as a package: one module per tab, each with its handlers beside its components.

    cli.py       `python app.py [--base ...]`: the command line, and how the server is launched
    state.py     the server's state, made once per process: settings, bases, jobs, runs, keys, places in line
    texts.py     every string a visitor reads; figures.py: the benchmark figures the help quotes
    visitor.py   what a request brings: its job, who it counts as, its uploads and head keys; errors → gr.Error
    guard.py     the door: session ids no Gradio client makes are refused before Gradio's queue keeps them
    heads.py     the head pickers every tab shares, and the listing of what fits the base
    compare.py, video.py, webcam.py, train.py, keypoints.py, share.py   the tabs and sections
    page.py      the page: the tabs put together (build_demo)

It imports only `headkit`'s public API and `headkit.server` (tests/test_layers.py checks).
"""

from __future__ import annotations

import os

# A public server never pip-installs at run time (Ultralytics would, e.g. on an odd upload); set before it is imported.
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
