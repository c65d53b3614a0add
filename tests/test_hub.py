"""push_head: one commit of head + model card + example to a real (loopback) Hub; the card's format in full."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import yaml
from huggingface_hub import ModelCard
from PIL import Image

import headkit

TOKEN = "hf_loopback_write_token"

CARD = """---
library_name: ultralytics
pipeline_tag: object-detection
license: agpl-3.0
tags:
- ultralytics
- yolo
- object-detection
- headkit
- detection-head
- headkit-base-{tag}
base_model: Ultralytics/YOLOv8
base_model_relation: adapter
---

# plates: an extra detection head for yolov8n.pt

A YOLO Detect head that adds 2 class(es) to its base model without changing a single base weight: it was trained on \
the base's frozen trunk, and merging it keeps every base detection exactly as it was. Made with headkit.

## Base model

| field | value |
|---|---|
| source | `yolov8n.pt` |
| trunk fingerprint (sha256) | `{fp}` |
| base classes | 3 (person, bicycle, car) |

The head fits only a base whose trunk has this fingerprint; headkit refuses any other.

## Classes

| head index | merged index | class |
|---|---|---|
| 0 | 3 | `license_plate` |
| 1 | 4 | `helmet` |

Merged index: the class index in `headkit.merge(base, head)`, where the base's 3 classes come first. Each further \
head merged after this one starts after its classes.

## Metrics (validation split)

| class | P | R | mAP50 | mAP50-95 |
|---|---|---|---|---|
| `license_plate` | 0.9 | 0.8 | 0.85 | 0.5 |
| `helmet` | 0.7 | 0.6 | 0.65 | 0.4 |
| `all` | 0.8 | 0.7 | 0.75 | 0.45 |

## Example

![prediction of the merged model](example.jpg)

## Use

```python
import headkit

base = headkit.load_model("yolov8n.pt")
head = headkit.load_head("hf://alice/plates/plates.safetensors")
model = headkit.merge(base, head)  # base classes first, then this head's
results = model.predict("image.jpg")
```

## Training

| field | value |
|---|---|
| trained with | keypoint-trick |
| owns | head only |
| image size | 640 |
| Ultralytics | 8.4.190 |
| created | 2025-01-01T00:00:00+00:00 |
| trunk untouched | True (225 of 225 trunk tensors bit-identical) |

## License

AGPL-3.0, as Ultralytics YOLO.
"""


@pytest.fixture
def two_class_head(plate_head):
    """A head with hand-set metadata, so every line of its card can be checked."""
    metrics = {
        "license_plate": {"P": 0.9, "R": 0.8, "mAP50": 0.85, "mAP50-95": 0.5},
        "helmet": {"P": 0.7, "R": 0.6, "mAP50": 0.65, "mAP50-95": 0.4},
        "all": {"P": 0.8, "R": 0.7, "mAP50": 0.75, "mAP50-95": 0.45},
    }
    metadata = {
        **plate_head.metadata,
        "label": "plates",
        "names": {"0": "license_plate", "1": "helmet"},
        "base_source": "yolov8n.pt",
        "base_names": {"0": "person", "1": "bicycle", "2": "car"},
        "metrics": metrics,
        "trained_with": "keypoint-trick",
        "imgsz": 640,
        "ultralytics_version": "8.4.190",
        "created": "2025-01-01T00:00:00+00:00",
        "trunk_check": {"tensors": 225, "identical": 225, "max_abs_diff": 0.0, "changed": [], "untouched": True},
    }
    detect = dataclasses.replace(plate_head.layout, nc=2).build()  # the plate head's layout, two classes
    return headkit.Head({k: v.clone() for k, v in detect.state_dict().items()}, metadata)


def test_model_card_in_full(two_class_head):
    card = headkit.hub.render_model_card(two_class_head, repo_id="alice/plates", filename="plates.safetensors")
    fp = two_class_head.base_fingerprint
    assert card == CARD.format(fp=fp, tag=fp[:16])

    data = ModelCard(card).data.to_dict()
    assert data["library_name"] == "ultralytics" and data["pipeline_tag"] == "object-detection"
    assert data["license"] == "agpl-3.0" and data["base_model"] == "Ultralytics/YOLOv8"
    assert data["base_model_relation"] == "adapter"  # the Hub's word for a small add-on that needs its base
    assert {"headkit", f"headkit-base-{fp[:16]}"} <= set(data["tags"])


def test_a_head_for_a_local_base_is_still_tagged_with_its_trunk(plate_head, base_weights):
    """A local or embedded base has no Hub repository to name, but has a fingerprint: the tag find_heads searches."""
    head = headkit.Head(plate_head.tensors, {**plate_head.metadata, "base_source": str(base_weights)})
    front = yaml.safe_load(headkit.hub.render_model_card(head, example=None).split("---")[1])
    assert "base_model" not in front and "base_model_relation" not in front
    tag = "headkit-base-" + plate_head.base_fingerprint[:16]
    assert front["tags"][-1] == tag == headkit.hub.base_tag(plate_head.base_fingerprint)
    with pytest.raises(ValueError, match="not a trunk fingerprint"):
        headkit.hub.base_tag("not hex at all, clearly")


def test_card_of_a_local_base_names_the_file_only(plate_head):
    head = headkit.Head(plate_head.tensors, {**plate_head.metadata, "base_source": "/srv/private/models/fall.pt"})
    card = headkit.hub.render_model_card(head, example=None)
    front = yaml.safe_load(card.split("---")[1])
    assert "base_model" not in front
    assert "/srv/private" not in card and "`fall.pt`" in card and 'load_model("path/to/fall.pt")' in card
    assert "## Example" not in card


def test_user_text_cannot_break_the_card(plate_head):
    """Names and sources come from files strangers make: a pipe, backticks or a newline must not open a cell or a
    block, and the front matter must stay parseable."""
    names = {"0": "plate|x", "1": "a`b`c", "2": "---\nlicense: mit"}
    meta = {**plate_head.metadata, "names": names, "label": "evil\n# title", "base_source": 'x")\nimport os\n("'}
    card = headkit.hub.render_model_card(headkit.Head(plate_head.tensors, meta), example=None)
    assert yaml.safe_load(card.split("---")[1])["license"] == "agpl-3.0"
    assert "| 0 | 2 | `plate\\|x` |" in card and "| 1 | 3 | ``a`b`c`` |" in card
    assert "| 2 | 4 | `--- license: mit` |" in card
    assert "# evil \\# title: an extra detection head" in card
    assert 'headkit.load_model("path/to/x\\") import os (\\"")' in card


@pytest.fixture
def hub(loopback_hub):
    return loopback_hub()  # no HF_TOKEN: each push names its own token


def test_push_is_one_commit_that_loads_back(hub, two_class_head):
    example = np.full((48, 64, 3), 200, dtype=np.uint8)
    url = headkit.push_head(two_class_head, "alice/plates", token=TOKEN, example_image=example)

    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert url.startswith(hub.url) and commit["oid"] in url
    assert set(commit["files"]) == {"plates.safetensors", "README.md", "example.jpg"}
    assert commit["token"] == TOKEN
    card = commit["files"]["README.md"].decode()
    assert card == headkit.hub.render_model_card(two_class_head, repo_id="alice/plates", filename="plates.safetensors")
    assert Image.open(io.BytesIO(commit["files"]["example.jpg"])).size == (64, 48)

    pulled = headkit.load_head("hf://alice/plates/plates.safetensors")
    assert pulled.names == {0: "license_plate", 1: "helmet"}
    assert all(pulled.tensors[k].equal(v) for k, v in two_class_head.tensors.items())

    headkit.push_head(two_class_head, "alice/plates", token=TOKEN)  # the repo exists now: a second commit
    assert len(hub.commits) == 2 and "example.jpg" not in hub.commits[1]["files"]


def test_push_refuses_bad_ids_and_missing_tokens(hub, two_class_head):
    with pytest.raises(ValueError, match="not a model repository id"):
        headkit.push_head(two_class_head, "../etc", token=TOKEN)
    with pytest.raises(ValueError, match="needs a Hub token"):
        headkit.push_head(two_class_head, "alice/plates")
    assert hub.commits == []
