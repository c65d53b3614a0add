"""Crafted head files for the attack tests and the soak (benchmarks/soak.py can import these).

Each writes one small file a stranger could upload to /load_head or serve as an hf:// head. A payload, were it ever
evaluated, creates its marker file: tests assert the refusal and that the marker is still absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
SHIPPED_NECK = REPO / "weights" / "license_plate_neck.safetensors"


def read_head_file(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata with JSON values decoded, tensors) of a head file."""
    with safe_open(str(path), framework="pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}, {k: f.get_tensor(k) for k in f.keys()}


def write_head_file(path: Path, metadata: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Write metadata (JSON-encoded values, as Head.save does) and tensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in metadata.items()})
    return path


def payload(marker: Path) -> str:
    """A Python expression that creates `marker` and then evaluates to an activation, as Ultralytics' eval wants."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch() or __import__('torch').nn.SiLU()"


def make_crafted_branch_head(path: str | Path, *, marker: str | Path | None = None) -> Path:
    """The shipped neck-branch head with one extra row: a DetectionModel whose config's `activation` is code.

    Before headkit stopped building branches from file rows, loading this file ran the payload (Ultralytics' parser
    evaluates `activation`). The marker defaults to `<path>.pwned`.
    """
    path = Path(path)
    marker = Path(marker) if marker is not None else path.with_suffix(".pwned")
    metadata, tensors = read_head_file(SHIPPED_NECK)
    config = {"nc": 1, "activation": payload(marker), "backbone": [[-1, 1, "Conv", [16, 3, 2]]], "head": []}
    rows = metadata["branch"]["architecture"]["head"]
    rows.insert(len(rows) - 1, [-1, 1, "DetectionModel", [config]])
    return write_head_file(path, metadata, tensors)


def make_channel_bomb_head(path: str | Path, *, channels: int = 4000, levels: int = 3) -> Path:
    """A ~1 KB head-only file declaring `levels` input maps of `channels` channels, with one tiny tensor.

    Built as declared, its Detect would take gigabytes (4,000 channels: ~4 GiB of float32 weights).
    """
    metadata = {
        "format": "headkit.head/1",
        "names": {"0": "bomb"},
        "channels": [channels] * levels,
        "reg_max": 16,
        "strides": [8.0 * 2**k for k in range(levels)],
        "legacy": True,
        "base_fingerprint": "0" * 64,
    }
    return write_head_file(Path(path), metadata, {"cv2.0.0.conv.weight": torch.zeros(1)})


SHIPPED_HEAD = REPO / "weights" / "license_plate.safetensors"


def make_metadata_flood_head(path: str | Path, *, key: str = "notes", mib: float = 3.7) -> Path:
    """The shipped plate head with `mib` MiB of nested empty lists (`[[],[],...]`) under metadata `key`.

    Parsed, such a value took ~183 MiB per head (each empty list a Python object), and the head cache counted the
    file's 4 MiB against its budget: 20 uploads took a server from 948 to 4,614 MiB.
    """
    metadata, tensors = read_head_file(SHIPPED_HEAD)
    path = Path(path)
    flood = "[" + ",".join(["[]"] * int(mib * 2**20 / 3)) + "]"
    text = {k: json.dumps(v) for k, v in metadata.items()} | {key: flood}
    save_file(tensors, str(path), metadata=text)
    return path


def make_inflating_pth(path: str | Path, *, declared_mb: int = 512, classes: int = 1) -> Path:
    """A legacy .pth (a torch.save zip) of a few hundred KiB whose Detect bias entry inflates to `declared_mb` MiB.

    torch.save writes entries uncompressed; deflating them keeps the file loadable by torch.load, which inflates each
    entry to its declared size: +`declared_mb` MiB for a file ~1,000 times smaller. Made without allocating it: the
    storage is written by `skip_data` (a hole), then streamed through deflate as zeros.
    """
    import zipfile

    from torch._subclasses.fake_tensor import FakeTensorMode

    path = Path(path)
    with FakeTensorMode():
        bias = torch.zeros(declared_mb * 2**20 // 4)
    plain = path.with_suffix(".plain")
    with torch.serialization.skip_data(materialize_fake_tensors=True):
        torch.save({"model.model.23.cv3.0.2.bias": bias, "model.model.23.cv3.0.2.weight": torch.zeros(classes)}, plain)
    zero = bytes(2**20)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(entry, "w", force_zip64=info.file_size > 2**31) as out:
                if "/data/" not in info.filename:
                    out.write(src.read(info))
                    continue
                for start in range(0, info.file_size, len(zero)):
                    out.write(zero[: min(len(zero), info.file_size - start)])
    plain.unlink()
    return path


def make_wide_bias_pth(path: str | Path, *, classes: int = 4_000_000) -> Path:
    """A legacy .pth whose class bias is `classes` long (16 MB at 4M): within max_head_mb, but headkit once built a
    name for every class (`class0`, `class1`, ...) before counting them: ~0.4 GB of names at 4M."""
    path = Path(path)
    torch.save({"model.model.23.cv3.0.2.bias": torch.zeros(classes)}, path)
    return path
