"""The heads every tab picks from: the pickers of Compare, Merge and Push, and the listing of what fits the base.

The pickers are made up front, unrendered, and placed by their tabs, so that a head trained or added anywhere joins
them all in one return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

import headkit
from headkit import server

from . import texts
from .state import SHIPPED_HEADS, WEIGHTS_DIR
from .visitor import comparer, job, str_keys, user_errors

PLAIN = headkit.HeadKind()  # a head-only head trained the plain way: the notes name every other kind


@user_errors
def load_model(base: str):
    """Load the base model (once per server; later calls are instant) and say whether it is usable.

    Args:
        base: the base YOLO model: a path on the server, a bare name like yolov8n.pt, or hf://owner/repo/file.pt.

    Returns:
        a Markdown banner: empty when the base loaded, else what is missing and how to fix it
        JSON: base, loaded, its class names by index and its trunk fingerprint (or the error)
    """
    try:
        model = comparer(base).base
    except gr.Error as e:
        return e.message, {"base": base, "loaded": False, "error": e.message}
    info = {"base": base, "loaded": True, "names": str_keys(model.names), "fingerprint": headkit.fingerprint(model)}
    return "", info


@dataclass
class Heads:
    """The three pickers and Compare's listing of the heads (as Markdown notes and as JSON)."""

    table: gr.JSON
    notes: gr.Markdown
    compare: gr.Dropdown
    merge: gr.Dropdown
    push: gr.Dropdown

    @classmethod
    def make(cls) -> Heads:
        opening = server.opening_heads(SHIPPED_HEADS)  # before the base is loaded: the listing then checks they fit
        return cls(
            table=gr.JSON(render=False),
            notes=gr.Markdown(render=False),
            compare=gr.Dropdown(
                SHIPPED_HEADS,
                value=opening,
                multiselect=True,
                allow_custom_value=True,
                label="Heads",
                info=texts.HEADS_INFO,
                elem_id="compare-heads",
                render=False,
            ),
            merge=gr.Dropdown(SHIPPED_HEADS, multiselect=True, allow_custom_value=True, label="Heads", render=False),
            push=gr.Dropdown(SHIPPED_HEADS, value=None, allow_custom_value=True, label="Head", render=False),
        )

    @property
    def outputs(self) -> list[gr.components.Component]:
        """What /list_heads and /load_head return, in their API order."""
        return [self.table, self.notes, self.compare, self.merge, self.push]

    @property
    def pickers(self) -> list[gr.Dropdown]:
        return [self.compare, self.merge, self.push]

    def listing(
        self, base: str, request: gr.Request | None, *, reset: bool = False, select: str | None = None
    ) -> dict[Any, Any]:
        """The heads for `base` (`reset`: pickers open with what fits; `select`: Compare shows this head alone, e.g.
        the one just trained, so its classes appear on the next click)."""
        try:
            model = comparer(base).base
        except gr.Error:  # the banner already says why (load_model): on page load a toast would repeat it
            return {self.table: [], self.notes: ""}
        entries = server.list_heads(model, shipped_dir=WEIGHTS_DIR, job=job(request))
        names = ", ".join(model.names.values())
        lines = [texts.HEADS_BASE_LINE.format(base=server.display_name(base), count=len(model.names), names=names)]
        lines += [texts.HEAD_UNAVAILABLE.format(key=e.key, reason=e.reason) for e in entries if not e.available]
        lines += [
            texts.HEAD_KIND.format(key=e.key, kind=e.kind.describe())
            for e in entries
            if e.available and e.kind.describe() != PLAIN.describe()  # a branch or keypoint-trick head says so
        ]
        lines += [texts.HEAD_ASSUMED.format(key=e.key) for e in entries if not e.fingerprint_verified]
        choices = [(e.label, e.key) for e in entries if e.available]
        if select in {key for _, key in choices}:
            compare = gr.Dropdown(choices=choices, value=[select])
        elif reset:
            shipped = [e.key for e in entries if e.available and e.origin == "shipped"]
            compare = gr.Dropdown(choices=choices, value=server.opening_heads(shipped))
        else:
            compare = gr.Dropdown(choices=choices)
        return {
            self.table: [e.to_dict() for e in entries],
            self.notes: "\n".join(lines),
            self.compare: compare,
            self.merge: gr.Dropdown(choices=choices),
            self.push: gr.Dropdown(choices=choices),
        }

    def picked(self, listing: dict[Any, Any]) -> dict[Any, Any]:
        """Only the pickers of a listing (for events that do not show the listing itself)."""
        return {picker: listing[picker] for picker in self.pickers if picker in listing}

    @user_errors
    def list_heads(self, base: str, request: gr.Request):
        """List the heads this session can use with the base: the shipped ones, the ones trained or added in this
        session, each marked available or not for this base (and why not).

        Args:
            base: the base model (as /load_model lists it).

        Returns:
            the heads as JSON: key (what /compare, /merge and /push_head take), origin, classes, available, reason
            Markdown notes on the base and on heads that are unavailable or unusual
            the Compare, Merge and Push pickers' choices
        """
        return self.listing(base, request, reset=True)

    def wire(self, demo: gr.Blocks, base: gr.Dropdown, banner: gr.Markdown, base_info: gr.JSON) -> None:
        """On page load and on a new base: load it (the banner says what is missing), then list its heads."""
        gr.on([demo.load, base.change], load_model, [base], [banner, base_info], api_name="load_model").then(
            self.list_heads, [base], self.outputs, api_name="list_heads"
        )
