"""Push a head to the Hub as one commit: the .safetensors head, its model card and an example prediction.

The card follows the Hub's adapter convention (`base_model` + `base_model_relation: adapter` when the base has a Hub
repository) and carries the tag `headkit-base-<16 hex>` of the trunk the head was trained on, which every base has,
local or embedded included: `headkit.find_heads(base)` searches by it. Pulling lives in sources.py
(`load_head("hf://owner/repo/head.safetensors")`).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from .filenames import safe_name
from .headfile import Head
from .kinds import HeadKind
from .settings import Settings
from .sources import HF_SCHEME, official_hub_file, parse_hub_url

LOGGER = logging.getLogger(__name__)
EXAMPLE_FILE = "example.jpg"
_REPO_ID = re.compile(r"^[\w.\-]{1,96}/[\w.\-]{1,96}$")
_METRIC_COLUMNS = ("P", "R", "mAP50", "mAP50-95")
_TAGS = ("ultralytics", "yolo", "object-detection", "headkit", "detection-head")
BASE_TAG_PREFIX = "headkit-base-"
_TAG_DIGITS = 16  # 64 bits name a trunk among the Hub's; find_heads then compares the whole fingerprint


def base_tag(fingerprint: str) -> str:
    """The card tag naming the trunk a head fits: `headkit-base-` + the first 16 hex digits of its fingerprint."""
    digits = str(fingerprint).lower()[:_TAG_DIGITS]
    if len(digits) != _TAG_DIGITS or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"'{fingerprint}' is not a trunk fingerprint; expected sha256 hex (headkit.fingerprint)")
    return BASE_TAG_PREFIX + digits


def base_hub_repo(source: str | None) -> str | None:
    """The Hub repository a base came from (`hf://owner/repo/...` or an official bare name), else None."""
    if not source:
        return None
    if source.startswith(HF_SCHEME):
        return parse_hub_url(source).repo_id
    hub_file = official_hub_file(source) if "/" not in source and "\\" not in source else None
    return hub_file.repo_id if hub_file else None


def _base_name(source: str | None) -> str:
    """How the card names the base: Hub addresses and bare names as given; local paths by file name only."""
    if not source:
        return "an unrecorded base model"
    return source if base_hub_repo(source) else Path(source).name


_MARKDOWN = re.compile(r"([\\`*\[\]<>#|])")


def _md(text: Any) -> str:
    """User-typed text (class names, labels, sources) as one line of literal Markdown: nothing it holds can open a
    table cell, a link, HTML or a heading, or end the card's front matter."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).split()))


def _code(text: Any) -> str:
    """User-typed text as one-line inline code that survives a table cell: a fence longer than any backtick run in it,
    and pipes escaped (GitHub tables split on them even inside code)."""
    line = " ".join(str(text).split()).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", line)), default=0) + 1)
    pad = " " if line.startswith("`") or line.endswith("`") else ""
    return f"{fence}{pad}{line}{pad}{fence}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


def _literal(text: str) -> str:
    """A Python string literal for the card's code block (quotes, newlines and backticks cannot end it)."""
    return json.dumps(" ".join(str(text).split())).replace("`", "\\u0060")


def render_model_card(
    head: Head, *, repo_id: str | None = None, filename: str = "head.safetensors", example: str | None = EXAMPLE_FILE
) -> str:
    """The README.md for a head's Hub repository: front matter, base, class table with merged indices, metrics, use."""
    meta = head.metadata
    base_source = meta.get("base_source")
    base_names = {int(k): v for k, v in (meta.get("base_names") or {}).items()}
    front: dict[str, Any] = {
        "library_name": "ultralytics",
        "pipeline_tag": "object-detection",
        "license": "agpl-3.0",
        "tags": [*_TAGS, base_tag(head.base_fingerprint)],
    }
    if base_hub_repo(base_source):  # the Hub links an adapter to its base's page; a local base has no page
        front["base_model"] = base_hub_repo(base_source)
        front["base_model_relation"] = "adapter"
    label = head.label
    offset = len(base_names)
    classes = _table(
        ["head index", "merged index", "class"],
        [[i, offset + i, _code(name)] for i, name in sorted(head.names.items())],
    )
    metrics = meta.get("metrics") or {}
    metric_rows = [[_code(name), *(_md(row.get(k, "")) for k in _METRIC_COLUMNS)] for name, row in metrics.items()]
    check = meta.get("trunk_check") or {}
    address = f"hf://{repo_id}/{filename}" if repo_id else f"path/to/{filename}"
    base_arg = base_source if base_hub_repo(base_source) else f"path/to/{_base_name(base_source)}"
    sections = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        f"# {_md(label)}: an extra detection head for {_md(_base_name(base_source))}",
        f"A YOLO Detect head that adds {head.nc} class(es) to its base model without changing a single base weight: "
        "it was trained on the base's frozen trunk, and merging it keeps every base detection exactly as it was. "
        "Made with headkit.",
        "## Base model\n\n"
        + _table(
            ["field", "value"],
            [
                ["source", _code(_base_name(base_source))],
                ["trunk fingerprint (sha256)", _code(head.base_fingerprint)],
                [
                    "base classes",
                    _md(f"{offset} ({', '.join(list(base_names.values())[:10])}{', ...' if offset > 10 else ''})"),
                ],
            ],
        )
        + "\n\nThe head fits only a base whose trunk has this fingerprint; headkit refuses any other.",
        "## Classes\n\n" + classes + f"\n\nMerged index: the class index in `headkit.merge(base, head)`, where the "
        f"base's {offset} classes come first. Each further head merged after this one starts after its classes.",
        "## Metrics (validation split)\n\n"
        + (_table(["class", *_METRIC_COLUMNS], metric_rows) if metric_rows else "No metrics were recorded."),
    ]
    if example:
        sections.append(f"## Example\n\n![prediction of the merged model]({example})")
    sections += [
        "## Use\n\n```python\nimport headkit\n\n"
        f"base = headkit.load_model({_literal(base_arg)})\n"
        f"head = headkit.load_head({_literal(address)})\n"
        "model = headkit.merge(base, head)  # base classes first, then this head's\n"
        'results = model.predict("image.jpg")\n```',
        "## Training\n\n"
        + _table(
            ["field", "value"],
            [
                ["trained with", _md(head.kind.trained_with)],
                ["owns", _md(HeadKind(branch_start=head.kind.branch_start).describe())],
                ["image size", _md(meta.get("imgsz") or "not recorded")],
                ["Ultralytics", _md(meta.get("ultralytics_version") or "not recorded")],
                ["created", _md(meta.get("created") or "not recorded")],
                [
                    "trunk untouched",
                    f"{check.get('untouched', 'not recorded')} ({check.get('identical', '?')} of "
                    f"{check.get('tensors', '?')} trunk tensors bit-identical)",
                ],
            ],
        ),
        "## License\n\nAGPL-3.0, as Ultralytics YOLO.",
    ]
    return "\n\n".join(sections) + "\n"


def _write_example(image: str | Path | np.ndarray | Image.Image, path: Path) -> None:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    elif not isinstance(image, Image.Image):
        image = Image.open(image)
    image.convert("RGB").save(path, quality=90)


def push_head(
    head: Head,
    repo_id: str,
    *,
    token: str | None = None,
    use_env_token: bool = True,
    example_image: str | Path | np.ndarray | Image.Image | None = None,
    filename: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    settings: Settings | None = None,
) -> str:
    """Create the model repository if needed and upload head, card and example as one commit; returns its URL.

    Args:
        token: Hub write token; without one, HF_TOKEN (when `use_env_token`).
        use_env_token: fall back to HF_TOKEN, the caller's own token in a script. A server pushing for a visitor
            passes False: the visitor must bring their own token, never push with the server's.
        example_image: an annotated prediction (RGB array, PIL image or file) shown in the card.

    Raises:
        ValueError: a malformed repo id, or no token.
        PermissionError: the Hub refused the token.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    settings = settings or Settings.from_env()
    repo_id = str(repo_id).strip()
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise ValueError(f"'{repo_id}' is not a model repository id; expected owner/name, e.g. alice/plate-head")
    token = (token or "").strip() or None
    if not token and not use_env_token:
        raise ValueError("pushing needs your own Hub token: sign in with Hugging Face or paste a write token")
    token = token or settings.token
    if not token:
        raise ValueError("pushing needs a Hub token with write access: sign in, or give a token (or set HF_TOKEN)")
    filename = safe_name(filename or f"{head.label}.safetensors")
    api = HfApi(endpoint=settings.hf_endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="headkit-push-") as tmp:
            folder = Path(tmp)
            head.save(folder / filename)
            if example_image is not None:
                _write_example(example_image, folder / EXAMPLE_FILE)
            card = render_model_card(
                head, repo_id=repo_id, filename=filename, example=EXAMPLE_FILE if example_image is not None else None
            )
            (folder / "README.md").write_text(card, encoding="utf-8")
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message or f"Add head {head.label} ({', '.join(head.names.values())})",
            )
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise PermissionError(
                f"the Hub refused the token for {repo_id} ({status}); use a token with write access to that owner"
            ) from e
        raise ConnectionError(f"pushing to {settings.hf_endpoint}/{repo_id} failed: {e}") from e
    LOGGER.info("pushed head %s to %s: %s", head.label, repo_id, info.commit_url)
    return info.commit_url
