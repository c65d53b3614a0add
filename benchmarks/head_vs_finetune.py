"""Extra head (frozen trunk), neck-branch head (frozen backbone) and a full fine-tune, same data, size and epochs.

Prints for each: plate mAP50 and mAP50-95 on the val split, wall time, and base-class retention: of the base model's
own detections on bus.jpg, zidane.jpg and a few plate images, how many the resulting model still makes (same class,
IoU >= 0.9, |Δconf| <= 1e-4). Targets: neck-branch mAP50 >= 0.95 x fine-tune's; its wall time <= 0.8 x fine-tune's;
base detections kept by the merged neck-branch model: all.

    python benchmarks/head_vs_finetune.py [--epochs 10] [--imgsz 320] [--batch 16] [--device auto] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from ultralytics.utils import ASSETS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import headkit  # noqa: E402
from headkit.finetune import finetune  # noqa: E402
from headkit.retention import detection_rows, kept_detections  # noqa: E402
from headkit.train import default_device, train_head  # noqa: E402

SHARED = REPO.parent / "shared"


def retention(model, base, images: list[Path], imgsz: int) -> tuple[int, int]:
    """(kept, total): base detections the model reproduces (headkit.retention's rule, as the app's Compare uses)."""
    kept = total = 0
    for image in images:
        ref = detection_rows(base.predict(image, imgsz=imgsz, verbose=False)[0])
        got = detection_rows(model.predict(image, imgsz=imgsz, max_det=1000, verbose=False)[0])
        total += len(ref)
        kept += kept_detections(ref, base.names, got, model.names)
    return kept, total


def val_map(model, data: Path, imgsz: int, batch: int, device: str, project: Path, name: str) -> tuple[float, float]:
    metrics = model.val(
        data=str(data),
        imgsz=imgsz,
        batch=batch,
        device=device,
        project=str(project),
        name=name,
        plots=False,
        verbose=False,
    )
    return float(metrics.box.map50), float(metrics.box.map)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every training benchmark shares: base, data, epochs, size, batch, device."""
    parser.add_argument("--base", default=str(SHARED / "weights" / "yolov8s-fall.pt"))
    parser.add_argument("--data", default=str(SHARED / "datasets" / "license_plates" / "data.yaml"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(parser)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    device = default_device() if args.device == "auto" else args.device
    data = Path(args.data)
    base = headkit.load_model(args.base)
    images = [ASSETS / "bus.jpg", ASSETS / "zidane.jpg", *sorted((data.parent / "images" / "val").glob("*.jpg"))[:5]]
    project = Path(tempfile.mkdtemp(prefix="head_vs_finetune-"))
    common = dict(epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device=device, seed=0, deterministic=True)

    rows = {}
    for branch, label in (("head", "extra head (frozen)"), ("neck", "neck branch")):
        result = train_head(base, data, project=project, name=branch, branch=branch, **common)
        custom = headkit.merge(base, result.head, keep_base_head=False)
        merged = headkit.merge(base, result.head)
        rows[label] = {
            "wall_s": result.seconds,
            "mAP50_mAP50-95": val_map(custom, data, args.imgsz, args.batch, device, project, f"val_{branch}"),
            "retention": retention(merged, base, images, args.imgsz),
        }

    tuned = finetune(base, data, project=project, **common)  # the same full fine-tune the app's Train offers
    rows["full fine-tune"] = tune = {
        "wall_s": tuned.seconds,
        "mAP50_mAP50-95": val_map(tuned.model, data, args.imgsz, args.batch, device, project, "val_finetune"),
        "retention": retention(tuned.model, base, images, args.imgsz),
    }

    print(
        f"\n{args.epochs} epochs, imgsz {args.imgsz}, batch {args.batch}, device {device} "
        f"({torch.get_num_threads()} CPU threads); val split of {data.parent.name}"
    )
    print(f"{'':22s} {'mAP50':>7s} {'mAP50-95':>9s} {'wall s':>8s} {'base dets kept':>15s}")
    for label, row in rows.items():
        (m50, m5095), (kept, total) = row["mAP50_mAP50-95"], row["retention"]
        print(f"{label:22s} {m50:7.3f} {m5095:9.3f} {row['wall_s']:8.1f} {kept:>8d}/{total:<6d}")
    neck, head = rows["neck branch"], rows["extra head (frozen)"]
    for label, row in (("head", head), ("neck", neck)):
        ratio = row["mAP50_mAP50-95"][0] / max(tune["mAP50_mAP50-95"][0], 1e-9)
        print(
            f"{label} mAP50 / fine-tune mAP50 = {ratio:.2f}; wall / fine-tune wall = {row['wall_s'] / tune['wall_s']:.2f}"
        )
    map_ratio = neck["mAP50_mAP50-95"][0] / max(tune["mAP50_mAP50-95"][0], 1e-9)
    time_ratio = neck["wall_s"] / tune["wall_s"]
    kept, total = neck["retention"]
    print(f"targets (neck branch): mAP50 ratio >= 0.95, wall ratio <= 0.80, base detections kept {total}/{total}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0 if map_ratio >= 0.95 and time_ratio <= 0.8 and kept == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
