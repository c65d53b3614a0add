"""Compare's video section: the merged model on every frame, objects tracked across frames."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr
import pandas as pd

import headkit

from . import texts
from .state import JOBS, LIMITS, VIDEO_EXAMPLES
from .visitor import comparer, heads_for, user_errors

if TYPE_CHECKING:
    from .page import Page

VIDEO_COLUMNS = ["class", "detections", "frames", "objects"]


@user_errors
def compare_video(
    base: str,
    video: str | None,
    heads: list[str],
    conf: float,
    iou: float,
    imgsz: int,
    request: gr.Request,
    progress=gr.Progress(),  # noqa: B008 (Gradio's progress tracker is injected this way)
):
    """Run the merged model (base + chosen heads) on every frame of a video, following objects across frames
    (ByteTrack): the annotated video and the detections and distinct objects per class.

    Args:
        base: the base model (as /load_model lists it).
        video: the video file (.mp4, .webm, .mov or .avi), within the server's frame, pixel and time limits.
        heads: head keys, as /list_heads lists them: shipped names, session/<name>, or hf://owner/repo/file.
        conf: confidence threshold, 0.01 to 1.
        iou: IoU threshold of non-maximum suppression, 0.1 to 1.
        imgsz: inference image size in pixels (a multiple of 32, up to the server's max_imgsz).

    Returns:
        the annotated video (H.264 mp4, plays in browsers)
        a table per class: detections over all frames, frames with one, distinct objects tracked
        a Markdown line: frames, fps, detections and objects in total
        the whole result as JSON
    """
    if not video:
        raise gr.Error(texts.NO_VIDEO)
    model = comparer(base).video_model(heads_for(heads, request), int(imgsz))
    progress(0, desc=texts.VIDEO_READING)
    result = headkit.annotate_video(
        model,
        video,
        JOBS.new_output_folder(LIMITS) / "merged.mp4",
        conf=conf,
        iou=iou,
        imgsz=int(imgsz),
        track=True,
        progress=lambda done, total: progress(done / total, desc=texts.VIDEO_FRAME.format(done=done, total=total)),
        limits=LIMITS,
    )
    table = pd.DataFrame(result.table(), columns=VIDEO_COLUMNS)
    found = sum(row["detections"] for row in result.counts.values())
    objects = sum(row["objects"] for row in result.counts.values())
    line = texts.VIDEO_LINE.format(frames=result.frames, fps=result.fps, found=found, objects=objects)
    return str(result.path), table, line, result.to_dict()


def section(page: Page, settings: list) -> None:
    with gr.Accordion("Video: the merged model on every frame", open=False):
        gr.Markdown(texts.VIDEO_HELP)
        with gr.Row():
            video_in = gr.Video(label="Video", sources=["upload"], height=300, elem_id="in-video")
            video_out = gr.Video(label="Merged model, annotated", interactive=False, height=300, elem_id="out-video")
        gr.Examples(VIDEO_EXAMPLES, inputs=[video_in], label=texts.VIDEO_EXAMPLE_LABEL)
        run = gr.Button("Run on video", variant="primary")
        line = gr.Markdown()
        counts = gr.Dataframe(pd.DataFrame(columns=VIDEO_COLUMNS), label="Detections per class", interactive=False)
        result = gr.JSON(visible=False)
    run.click(
        compare_video,
        [page.base, video_in, *settings],
        [video_out, counts, line, result],
        api_name="compare_video",
        concurrency_id="video",
        concurrency_limit=LIMITS.max_concurrent_videos,
    )
