"""headkit's web app (also a Hugging Face Space: `app_file: app.py`): compare, train, convert, merge and share extra
YOLO detection heads. The app itself is the `webapp` package, one module per tab.

Run `python app.py` (base from HEADKIT_BASE or `--base`; default the embedded yolov8s-fall base in weights/bases/,
no network needed). Every event is also an API endpoint named after the headkit function it calls; see the README
for gradio_client examples.
"""

from __future__ import annotations

from webapp import cli

if __name__ == "__main__":
    cli.parse()  # before the server's state is made: --base is HEADKIT_BASE for this process

from webapp.page import build_demo  # noqa: E402

demo = build_demo()

if __name__ == "__main__":
    cli.launch(demo)
