"""The Merge & share tab: one merged model (and TorchScript / ONNX), and a head pushed to the Hub with its card."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

import headkit
from headkit import server

from . import texts
from .state import EXAMPLES, LIMITS, SETTINGS
from .visitor import comparer, heads_for, roomy_job, served, str_keys, user_errors

if TYPE_CHECKING:
    from .page import Page


@user_errors
def merge(
    base: str,
    heads: list[str],
    keep_base_head: bool,
    onnx: bool,
    imgsz: int,
    torchscript: bool = False,
    request: gr.Request = None,
):
    """Merge the base model and the chosen heads into one model file: the base's classes first, then each head's, in
    the order given; every base detection stays exactly as the base alone makes it.

    Args:
        base: the base model (as /load_model lists it).
        heads: head keys, in the order their classes should follow the base's (as /list_heads lists them).
        keep_base_head: keep the base's own classes (False: the merged model detects the heads' classes only).
        onnx: also export ONNX (runs with plain Ultralytics, no headkit needed).
        imgsz: image size in pixels of the TorchScript / ONNX export.
        torchscript: also export TorchScript (runs with plain Ultralytics, no headkit needed).

    Returns:
        the merged files to download: a .pt (needs headkit installed to load), and .torchscript / .onnx if asked
        JSON: the file names, the merged class names by index, and which files need headkit
    """
    if not heads:
        raise gr.Error(texts.NO_HEADS_TO_MERGE)
    exported = headkit.export_merged(
        comparer(base).base,
        heads_for(heads, request),
        roomy_job(request).folder("merged"),
        keep_base_head=keep_base_head,
        formats=("pt", *(["torchscript"] if torchscript else []), *(["onnx"] if onnx else [])),
        imgsz=int(imgsz),
    )
    info = {
        "files": [f.name for f in exported.files],
        "names": str_keys(exported.names),
        "needs_headkit": [f.name for f in exported.needs_headkit],
    }
    return [served(f) for f in exported.files], info


@user_errors
def push_head(
    base: str,
    head: str | None,
    repo_id: str,
    token: str,
    example: str | None,
    request: gr.Request,
    oauth_token: gr.OAuthToken | None = None,
):
    """Push a head to the Hugging Face Hub in one commit (the .safetensors head, its model card and an example
    prediction), with your own write token. The card is tagged with the base the head was trained on, so /find_heads
    lists the head for everyone using that base.

    Args:
        base: the base model the head was trained on (as /load_model lists it); it draws the example prediction.
        head: the key of the head to push (as /list_heads lists it), e.g. session/my-head.
        repo_id: the model repository to push to, owner/name (created if missing).
        token: a Hugging Face token with write access to repo_id (this server's own token is never used).
        example: an image for the card's example prediction; None for the default example (bus.jpg).

    Returns:
        a Markdown line: where it was pushed, and the tag it is listed under for its base
        JSON: repo_id, commit_url, base_tag
    """
    if not head:
        raise gr.Error(texts.NO_HEAD_TO_PUSH)
    chosen = heads_for([head], request)
    picture = comparer(base).compare(example or EXAMPLES[0], chosen, labels=[head]).images["merged"]
    token = (token or "").strip() or (oauth_token.token if oauth_token else None)
    if not token:  # the server's own HF_TOKEN is never lent to a visitor
        raise gr.Error(texts.NEEDS_TOKEN)
    url = headkit.push_head(chosen[0], repo_id, token=token, example_image=picture, use_env_token=False)
    tag = server.base_tag(chosen[0].base_fingerprint)  # what find_heads searches by: listed for its base
    pushed = {"repo_id": repo_id, "commit_url": url, "base_tag": tag}
    return texts.PUSHED.format(repo_id=repo_id, url=url, tag=tag), pushed


def tab(page: Page) -> None:
    with gr.Row():
        with gr.Column():
            gr.Markdown(texts.MERGE_TITLE)
            page.heads.merge.render()
            keep = gr.Checkbox(value=True, label="Keep the base head")
            torchscript = gr.Checkbox(value=False, label="Also export TorchScript (runs with plain Ultralytics)")
            onnx = gr.Checkbox(value=False, label="Also export ONNX (runs with plain Ultralytics)")
            export_size = gr.Slider(160, LIMITS.max_imgsz, value=640, step=32, label="TorchScript / ONNX image size")
            gr.Markdown(texts.MERGE_HELP)
            merge_button = gr.Button("Merge", variant="primary")
            merged_files = gr.File(label="Merged model", file_count="multiple")
            merged_json = gr.JSON(label="Classes")
        with gr.Column():
            gr.Markdown(texts.PUSH_TITLE)
            page.heads.push.render()
            repo = gr.Textbox(label="Repository", placeholder="your-name/plate-head")
            token = gr.Textbox(
                label="Hub token (write)",
                type="password",
                info=texts.TOKEN_INFO.format(signin=texts.TOKEN_SIGNIN if SETTINGS.oauth else ""),
            )
            example = gr.Image(
                type="filepath",
                image_mode=None,
                label="Example image for the card (default: bus.jpg)",
                sources=["upload", "clipboard"],
                height=240,
            )
            push = gr.Button("Push", variant="primary")
            pushed = gr.Markdown()
            pushed_json = gr.JSON(visible=False)
    merge_button.click(
        merge,
        [page.base, page.heads.merge, keep, onnx, export_size, torchscript],
        [merged_files, merged_json],
        api_name="merge",
        concurrency_id="merge",
        concurrency_limit=LIMITS.max_concurrent_exports,
    )
    push.click(
        push_head,
        [page.base, page.heads.push, repo, token, example],
        [pushed, pushed_json],
        api_name="push_head",
        concurrency_id="push",
        concurrency_limit=LIMITS.max_concurrent_exports,
    )
