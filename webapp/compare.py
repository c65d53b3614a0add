"""The Compare tab: base / custom / merged (/ naive fine-tune) on one image, and adding a head to the session."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
import pandas as pd
from PIL import Image

import headkit
from headkit import server

from . import texts, video, webcam
from .state import EXAMPLES, HUB_SEARCHES, INFERENCE_SLOTS, JOBS, LIMITS, SETTINGS
from .visitor import comparer, finetuned_for, heads_for, roomy_job, user_errors

if TYPE_CHECKING:
    from .page import Page

DETECTION_COLUMNS = ["model", "origin", "name", "class_id", "confidence", "xyxy"]
HUB_COLUMNS = ["repository", "classes", "mAP50", "downloads", "likes", "address"]
IMAGES = {"base": "Base only", "custom": "Custom: trunk + selected heads", "merged": "Merged: base + selected heads",
          "finetuned": "Naive fine-tune (when trained with the head)"}  # fmt: skip


class CompareTab:
    """The image, the heads and settings, the result images and tables; the video and webcam sections below."""

    def __init__(self, page: Page) -> None:
        self.page = page
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    type="filepath",
                    image_mode=None,
                    label="Image",
                    sources=["upload", "webcam", "clipboard"],
                    height=360,
                    elem_id="in-image",
                )
                gr.Examples(EXAMPLES, inputs=[image], label=texts.EXAMPLES_LABEL)
            with gr.Column():
                page.heads.compare.render()
                conf = gr.Slider(0.01, 1.0, value=0.25, step=0.01, label="Confidence")
                iou = gr.Slider(0.1, 1.0, value=0.7, step=0.05, label="IoU (NMS)")
                imgsz = gr.Slider(160, LIMITS.max_imgsz, value=640, step=32, label="Image size")
                run = gr.Button("Compare", variant="primary")
                page.heads.notes.render()
                with gr.Accordion("Add a head", open=False, elem_id="add-head") as add_section:
                    head_upload = gr.File(label="Head (.safetensors; .pt pickles are refused)", type="filepath")
                    head_address = gr.Textbox(label="…or Hub address", placeholder="hf://owner/repo/head.safetensors")
                    add = gr.Button("Add head")
                    gr.Markdown(texts.HUB_HEADS_TITLE)
                    with gr.Row():
                        sort = gr.Radio([(label, value) for value, label in texts.HUB_SORTS.items()],
                                        value="downloads", show_label=False, scale=2)  # fmt: skip
                        limit = gr.Slider(1, LIMITS.max_hub_results, value=min(10, LIMITS.max_hub_results), step=1,
                                          label="Heads at most", scale=2)  # fmt: skip
                        search = gr.Button("Search the Hub", scale=1, elem_id="find-heads")
                    self.hub_line = gr.Markdown(elem_id="hub-line")
                    self.hub_table = gr.Dataframe(
                        pd.DataFrame(columns=HUB_COLUMNS), interactive=False, show_label=False, elem_id="hub-heads"
                    )
        with gr.Row():
            self.images = {
                name: gr.Image(label=label, interactive=False, elem_id=f"out-{name}") for name, label in IMAGES.items()
            }
        self.base_check = gr.Markdown(elem_id="base-check")
        self.detections = gr.Dataframe(pd.DataFrame(columns=DETECTION_COLUMNS), label="Detections", interactive=False)
        with gr.Accordion("Result as JSON", open=False):
            self.result = gr.JSON()
        settings = [page.heads.compare, conf, iou, imgsz]  # what every Compare event takes after its image or video
        video.section(page, settings)
        webcam.section(page, settings)
        with gr.Accordion("Heads as JSON", open=False):
            page.heads.table.render()

        outputs = [
            *(self.images[n] for n in ("base", "custom", "merged")),
            self.detections,
            self.base_check,
            self.result,
            self.images["finetuned"],
        ]  # fmt: skip  (the API's order)
        run.click(self.compare, [page.base, image, *settings], outputs, api_name="compare",
                  concurrency_id="inference", concurrency_limit=INFERENCE_SLOTS)  # fmt: skip
        add.click(self.load_head, [page.base, head_upload, head_address], page.heads.outputs, api_name="load_head")
        found = [self.hub_line, self.hub_table]
        hub = {"concurrency_id": "hub", "concurrency_limit": HUB_SEARCHES}
        search.click(self.find_heads, [page.base, sort, limit], found, api_name="find_heads", **hub)
        add_section.expand(self.find_heads, [page.base, sort, limit], found, api_visibility="private", **hub)
        page.base.change(self.forget_found, None, found, api_visibility="private")  # listed for the old base
        self.hub_table.select(
            self.load_found, [page.base, self.hub_table], page.heads.outputs, api_visibility="private"
        )

    @user_errors
    def compare(
        self, base: str, image: str | None, heads: list[str], conf: float, iou: float, imgsz: int, request: gr.Request
    ):
        """Run the base model alone, the chosen heads on the base's trunk, and the merged model (base + heads) on one
        image, and check that every base detection is unchanged in the merged model.

        Args:
            base: the base YOLO model, as /load_model lists it (a path, a bare name like yolov8n.pt, or hf://...).
            image: the image to detect on (a file).
            heads: head keys, as /list_heads lists them: shipped names, session/<name>, or hf://owner/repo/file.
            conf: confidence threshold, 0.01 to 1.
            iou: IoU threshold of non-maximum suppression, 0.1 to 1.
            imgsz: inference image size in pixels (a multiple of 32, up to the server's max_imgsz).

        Returns:
            the base model's annotated image
            the custom model's (trunk + chosen heads) annotated image
            the merged model's annotated image
            a table of detections: model, origin (base or head), class name, class id, confidence, xyxy box
            a Markdown summary: base detections kept unchanged by the merged model, and the time per model
            the whole result as JSON (detections, counts, largest confidence change against the base, timings)
            the naive full fine-tune's image, when the first chosen session head was trained with one, else None
        """
        if not image:
            raise gr.Error(texts.NO_IMAGE)
        result = comparer(base).compare(
            image,
            heads_for(heads, request),
            labels=heads or [],
            conf=conf,
            iou=iou,
            imgsz=int(imgsz),
            finetuned=finetuned_for(heads, request),
        )
        folder = JOBS.new_output_folder(LIMITS)
        shown = {self.images[name]: _saved(result.images[name], folder / f"{name}.jpg") for name in self.images}
        return shown | {
            self.detections: pd.DataFrame([d.to_dict() for d in result.detections], columns=DETECTION_COLUMNS),
            self.base_check: f"{result.summary()}  \n{result.retention()}  \n{result.timing()}",
            self.result: result.to_dict(),
        }

    @user_errors
    def load_head(self, base: str, file: str | None, address: str, request: gr.Request):
        """Add a head to this session from an uploaded .safetensors file or a Hub address; it then appears in every
        head picker under the key session/<name>. Pickles (.pt, .pth) are refused.

        Args:
            base: the base model the heads are listed for (as /load_model lists it).
            file: a head file (.safetensors) to upload; None to use the address.
            address: a Hub address, hf://owner/repo/head.safetensors (optionally @revision), e.g. from /find_heads.

        Returns:
            the heads as JSON: key, origin, classes, whether each fits the base (and why not), metrics, kind
            Markdown notes on the base and on heads that are unavailable or unusual
            the Compare, Merge and Push pickers' choices (keys to pass to /compare, /merge and /push_head)
        """
        address = (address or "").strip()
        if not file and not address.startswith("hf://"):  # the address box never names a file on this server
            raise gr.Error(texts.NOT_A_HUB_ADDRESS.format(address=address))
        gr.Info(texts.HEAD_ADDED.format(key=server.add_head(file or address, roomy_job(request))))
        return self.page.heads.listing(base, request)

    @user_errors
    def find_heads(self, base: str, sort: str = "downloads", limit: int = 10):
        """Search the Hugging Face Hub for heads that fit this base model: heads pushed with headkit carry a tag naming
        the base they were trained on, and each candidate's file header is read (anonymously, bounded) and checked
        against the base before it is listed, so every listed head loads and merges. Offline, or with the Hub down,
        the last listing for this base is returned and the status line says from when.

        Args:
            base: the base model to find heads for (as /load_model lists it).
            sort: "downloads" (most downloaded first) or "newest".
            limit: how many Hub repositories to look at, 1 to the server's max_hub_results.

        Returns:
            a Markdown status line: how many heads fit and when the Hub was searched, or why it could not be
            a table, one row per head: repository, classes, mAP50, downloads, likes, address (give it to /load_head)
        """
        try:
            found = headkit.find_heads(
                comparer(base).base, limit=int(limit), sort=sort, limits=LIMITS, settings=SETTINGS
            )
        except ConnectionError as e:  # offline or the Hub is down, and no earlier listing for this base
            return texts.HUB_UNREACHABLE.format(error=e), pd.DataFrame(columns=HUB_COLUMNS)
        rows = [
            [h.repo_id, ", ".join(h.classes), _map50(h), h.downloads, h.likes, h.address] for h in found
        ]  # fmt: skip
        skipped = texts.HUB_SKIPPED.format(count=len(found.skipped)) if found.skipped else ""
        at = _when(found.searched_at)
        if found.offline:
            line = texts.HUB_OFFLINE.format(why=found.offline, count=len(found), at=at, skipped=skipped)
        else:
            template = texts.HUB_FOUND if len(found) else texts.HUB_NONE
            line = template.format(count=len(found), endpoint=SETTINGS.hf_endpoint, at=at, skipped=skipped)
        return line, pd.DataFrame(rows, columns=HUB_COLUMNS)

    def forget_found(self):
        return "", pd.DataFrame(columns=HUB_COLUMNS)

    @user_errors
    def load_found(self, base: str, table: pd.DataFrame, chosen: gr.SelectData, request: gr.Request):
        """A click on a row of the Hub listing: that head joins the session, as /load_head with its address, and
        Compare shows it alone."""
        address = str(table.iloc[chosen.index[0]]["address"])
        key = server.add_head(address, roomy_job(request))
        gr.Info(texts.HEAD_ADDED.format(key=key))
        return self.page.heads.listing(base, request, select=key)


def _map50(head: headkit.HubHead) -> float | None:
    overall = head.metrics.get("all")  # the head file's own record: a stranger's file may hold anything here
    value = overall.get("mAP50") if isinstance(overall, dict) else None
    return round(float(value), 3) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _when(stamp: str) -> str:
    try:
        return datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return stamp


def _saved(pixels, path: Path) -> str | None:
    if pixels is None:
        return None
    Image.fromarray(pixels).save(path, quality=90)
    return str(path)
