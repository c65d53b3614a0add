"""The Keypoint converter tab: box labels → one keypoint per box at its centre, as a dataset zip."""

from __future__ import annotations

import gradio as gr

import headkit

from . import texts
from .state import LIMITS
from .visitor import import_dataset, roomy_job, served, upload, user_errors


@user_errors
def convert_to_keypoints(archive: str | None, request: gr.Request):
    """Convert a box-labelled detection dataset into a keypoint (pose) dataset: one keypoint per box, at its centre,
    for the keypoint trick in other tools (small objects). The dataset is checked as /load_dataset checks it.

    Args:
        archive: the detection dataset as a .zip file (YOLO or COCO JSON).

    Returns:
        the keypoint dataset as a .zip file (Ultralytics pose folder structure, kpt_shape [1, 3])
        JSON: the images per split, kpt_shape and the file name
    """
    source = upload(archive, ".zip", texts.DATASET_ZIP)
    work = roomy_job(request)
    folder = work.folder("keypoints")
    dataset = import_dataset(source, folder / "detect")
    converted = headkit.convert_to_keypoints(dataset.root, folder / f"{source.stem}-keypoints")
    result = work.archive(converted.root, converted.root.name)
    return served(result), {"splits": converted.splits, "kpt_shape": [1, 3], "file": result.name}


def tab() -> None:
    gr.Markdown(texts.KEYPOINTS_HELP)
    archive = gr.File(label="Dataset (.zip)", type="filepath")
    convert = gr.Button("Convert", variant="primary")
    with gr.Row():
        converted = gr.File(label="Keypoint dataset (.zip)")
        summary = gr.JSON(label="Summary")
    convert.click(convert_to_keypoints, [archive], [converted, summary], api_name="convert_to_keypoints",
                  concurrency_id="dataset", concurrency_limit=LIMITS.max_concurrent_imports)  # fmt: skip
