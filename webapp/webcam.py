"""Compare's webcam section: the merged model on a camera stream, frames processed and dropped."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from . import texts
from .state import INFERENCE_SLOTS, WEBCAM_SECONDS
from .visitor import comparer, heads_for, user_errors

if TYPE_CHECKING:
    from .page import Page


@user_errors
def compare_webcam(
    base: str, frame: str | None, heads: list[str], conf: float, iou: float, imgsz: int, request: gr.Request
):
    """Run the merged model (base + chosen heads) on one camera frame of a stream; frames are processed and dropped,
    never stored. Compare's image limits apply to each frame.

    Args:
        base: the base model (as /load_model lists it).
        frame: one camera frame (an image file); None yields nothing.
        heads: head keys, as /list_heads lists them: shipped names, session/<name>, or hf://owner/repo/file.
        conf: confidence threshold, 0.01 to 1.
        iou: IoU threshold of non-maximum suppression, 0.1 to 1.
        imgsz: inference image size in pixels (a multiple of 32, up to the server's max_imgsz).

    Returns:
        the frame with the merged model's detections drawn
    """
    if not frame:
        return None
    found = comparer(base).detect(frame, heads_for(heads, request), conf=conf, iou=iou, imgsz=int(imgsz))
    return found.plot()[..., ::-1]  # pixels were checked from the frame's header before it was decoded


def section(page: Page, settings: list) -> None:
    with gr.Accordion("Webcam: the merged model, live", open=False):
        gr.Markdown(texts.WEBCAM_HELP)
        with gr.Row():
            camera = gr.Image(
                label="Camera",
                sources=["webcam"],
                streaming=True,
                type="filepath",  # checked from its header (pixels) before it is decoded
                image_mode=None,
                height=300,
                elem_id="webcam",
            )
            shown = gr.Image(label="Merged model", interactive=False, height=300, elem_id="out-webcam")
    camera.stream(
        compare_webcam,
        [page.base, camera, *settings],
        [shown],
        api_name="compare_webcam",
        stream_every=0.5,
        time_limit=WEBCAM_SECONDS,
        concurrency_id="inference",
        concurrency_limit=INFERENCE_SLOTS,
    )
