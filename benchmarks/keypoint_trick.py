"""Plain head vs keypoint-trick head: same base, data, epochs, image size, batch, device and seed.

    python benchmarks/keypoint_trick.py [--base PATH] [--data data.yaml] [--epochs 10] [--imgsz 320] [--batch 16]
        [--device auto] [--workers N] [--gains-control] [--branch head|neck|p3|p3-last] [--class-width N|narrow]
        [--project runs/keypoint_trick] [--out results.json]

Each head is trained with `train_head` on the base's frozen trunk (`keypoint_trick=True` for the trick; with
`--branch neck` both arms own a copy of the neck, which the keypoint loss then shapes; likewise the layers of a path
branch, `--branch p3-last --class-width narrow` being the cheap exact point `headkit.SHAPES["p3-last-narrow"]`), merged as
the only head on the base trunk (`merge(base, head, keep_base_head=False)`) and evaluated on the val split at --imgsz:

- mAP50, mAP50-95: Ultralytics' val, box metrics (conf 0.001, NMS IoU 0.7).
- mAP50 small: AP at IoU 0.5 over small objects, COCO's area-range rule. A box is small when its area after
  letterbox scaling to the evaluation size (scale imgsz / max(h, w) of the original image) is below 32² px.
  Predictions come from `predict` at --imgsz, one image at a time (conf 0.001, NMS IoU 0.7, max_det 300, the
  image's minimal stride-multiple letterbox). Per image, in descending confidence, each prediction takes the
  unmatched ground-truth box of its class with the highest IoU >= 0.5, small boxes first. Matched to a small box it
  is a true positive; matched to a larger box it is left out; unmatched it is a false positive when its own scaled
  area is below 32² px, else left out. AP per class with Ultralytics' `ap_per_class` (101-point interpolation),
  averaged over the classes that have small boxes.
- mAP50 (matcher): the same matcher with every box counted small, a cross-check against Ultralytics' mAP50. Expect
  it close, not equal: Ultralytics' val letterboxes whole rect batches to one shape (padding moves predictions a
  little) and matches by IoU order rather than confidence order.
- train s: wall time of `train_head`. params: parameters of the merged model (the trick adds none).

--gains-control adds a third head: plain, with the trick's box/dfl loss gains (0.01). With a frozen trunk the
keypoint loss only reaches the keypoint branch, which is dropped; this control shows what the gains alone do.
Best epochs are chosen by each trainer's own fitness (box mAP50-95; box + keypoint mAP50-95 for the pose run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from ultralytics.data.utils import IMG_FORMATS, check_det_dataset, img2label_paths
from ultralytics.utils.metrics import ap_per_class, box_iou

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import headkit  # noqa: E402
from headkit.keypoints import polygon_to_xywhn  # noqa: E402
from headkit.posehead import LOSS_GAINS  # noqa: E402
from headkit.train import default_device, train_head  # noqa: E402

SMALL_AREA = 32**2  # px² at the evaluation size
IOU = 0.5


def match_small(gt_xyxy, gt_cls, gt_small, pred_xyxy, pred_conf, pred_cls, pred_small) -> tuple[np.ndarray, np.ndarray]:
    """COCO area-range matching at IoU 0.5 for one image.

    Args:
        gt_xyxy: (M, 4) boxes; gt_cls, gt_small: (M,). pred_xyxy: (N, 4); pred_conf, pred_cls, pred_small: (N,).

    Returns:
        keep: (N,) bool, the predictions that count; tp: (N,) bool, true positives among them.
    """
    n = len(pred_xyxy)
    keep, tp = np.zeros(n, bool), np.zeros(n, bool)
    iou = box_iou(torch.as_tensor(pred_xyxy, dtype=torch.float32), torch.as_tensor(gt_xyxy, dtype=torch.float32))
    iou = iou.numpy().reshape(n, len(gt_xyxy))
    taken = np.zeros(len(gt_xyxy), bool)
    for i in np.argsort(-pred_conf, kind="stable"):
        candidates = (iou[i] >= IOU) & ~taken & (gt_cls == pred_cls[i])
        for group in (candidates & gt_small, candidates & ~gt_small):
            if group.any():
                j = int(np.argmax(np.where(group, iou[i], -1.0)))
                taken[j] = True
                keep[i] = tp[i] = bool(gt_small[j])
                break
        else:
            keep[i] = bool(pred_small[i])
    return keep, tp


def map50(records: list[dict], *, all_sizes: bool = False) -> tuple[float, int]:
    """mAP50 over small objects (or every object), and the number of ground-truth boxes counted."""
    tps, confs, classes, targets = [], [], [], []
    for r in records:
        gt_small = np.ones(len(r["gt_xyxy"]), bool) if all_sizes else r["gt_area"] < SMALL_AREA
        pred_small = np.ones(len(r["xyxy"]), bool) if all_sizes else r["area"] < SMALL_AREA
        keep, tp = match_small(r["gt_xyxy"], r["gt_cls"], gt_small, r["xyxy"], r["conf"], r["cls"], pred_small)
        tps.append(tp[keep])
        confs.append(r["conf"][keep])
        classes.append(r["cls"][keep])
        targets.append(r["gt_cls"][gt_small])
    target_cls = np.concatenate(targets) if targets else np.zeros(0)
    if not len(target_cls):
        return math.nan, 0
    ap = ap_per_class(np.concatenate(tps)[:, None], np.concatenate(confs), np.concatenate(classes), target_cls)[5]
    return float(ap[:, 0].mean()), len(target_cls)


def _val_images(data: dict) -> list[Path]:
    folders = data["val"] if isinstance(data["val"], list) else [data["val"]]
    images = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise ValueError(f"expected val: to be an image folder, got {folder}; list files are not supported here")
        images += sorted(p for p in folder.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS)
    return images


def _ground_truth(image: Path, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, 4) xyxy pixels and (M,) classes from the image's YOLO label file (boxes or polygons)."""
    label = Path(img2label_paths([str(image)])[0])
    rows = [line.split() for line in label.read_text().splitlines() if line.split()] if label.is_file() else []
    xywhn = [np.array(r[1:5], float) if len(r) == 5 else polygon_to_xywhn(np.array(r[1:], float)) for r in rows]
    cls = np.array([int(float(r[0])) for r in rows], dtype=float)
    if not xywhn:
        return np.zeros((0, 4)), cls
    b = np.stack(xywhn) * [w, h, w, h]
    return np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], axis=1), cls


def predictions(model, images: list[Path], *, imgsz: int, device: str) -> list[dict]:
    """Per val image: predictions and ground truth in original pixels, areas in px² at the evaluation size.

    One image per call: a list of differently shaped images is letterboxed to one square batch, which changes the
    predictions; alone, each image gets its minimal stride-multiple letterbox, as in Ultralytics' rect val batches.
    """
    records = []
    for image in images:
        result = model.predict(str(image), imgsz=imgsz, conf=0.001, iou=0.7, max_det=300, device=device, verbose=False)
        h, w = result[0].orig_shape
        boxes = result[0].boxes
        scale2 = (imgsz / max(h, w)) ** 2
        gt_xyxy, gt_cls = _ground_truth(image, w, h)
        xyxy = boxes.xyxy.cpu().numpy().astype(float)
        records.append(
            {
                "xyxy": xyxy,
                "conf": boxes.conf.cpu().numpy().astype(float),
                "cls": boxes.cls.cpu().numpy().astype(float),
                "area": (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1]) * scale2,
                "gt_xyxy": gt_xyxy,
                "gt_cls": gt_cls,
                "gt_area": (gt_xyxy[:, 2] - gt_xyxy[:, 0]) * (gt_xyxy[:, 3] - gt_xyxy[:, 1]) * scale2,
            }
        )
    return records


def evaluate(base, head, args, images: list[Path], name: str) -> dict:
    model = headkit.merge(base, head, keep_base_head=False)
    val = model.val(
        data=args.data,
        split="val",
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        workers=args.workers or 0,
        plots=False,
        verbose=False,
        project=str(args.project),
        name=f"{name}-val",
        exist_ok=True,
    )
    records = predictions(model, images, imgsz=args.imgsz, device=args.device)
    small, n_small = map50(records)
    every, _ = map50(records, all_sizes=True)
    return {
        "mAP50": float(val.box.map50),
        "mAP50-95": float(val.box.map),
        "mAP50 small": small,
        "mAP50 (matcher)": every,
        "small objects": n_small,
        "objects": int(sum(len(r["gt_cls"]) for r in records)),
        "params": sum(p.numel() for p in model.model.parameters()),
    }


def _ratio(a: float, b: float) -> str:
    return "n/a" if not (b and math.isfinite(a) and math.isfinite(b)) else f"{a / b:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=str(REPO.parent / "shared" / "weights" / "yolov8s-fall.pt"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "license_plates" / "data.yaml"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None, help="dataloader workers (default: headkit's)")
    parser.add_argument("--gains-control", action="store_true", help="also train a plain head with box=dfl=0.01")
    parser.add_argument(
        "--branch", default="head", help="'head' (frozen trunk), 'neck', 'p3' or 'p3-last' (both arms own those layers)"
    )
    parser.add_argument(
        "--class-width",
        default=None,
        type=lambda v: v if v == "narrow" else int(v),
        help="both arms' class branch this many channels wide, or 'narrow'",
    )
    parser.add_argument("--project", type=Path, default=REPO / "runs" / "keypoint_trick")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    args.device = default_device() if args.device == "auto" else args.device
    args.project = args.project.resolve()

    base = headkit.load_model(args.base)
    images = _val_images(check_det_dataset(args.data))
    arms = {"plain": {}, "keypoint-trick": {"keypoint_trick": True}}
    if args.gains_control:
        arms["plain, box=dfl=0.01"] = dict(LOSS_GAINS)
    common = {
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "device": args.device,
        "project": args.project,
        "verbose": False,
        "branch": args.branch,
        "class_width": args.class_width,
    }
    if args.workers is not None:
        common["workers"] = args.workers

    results = {}
    for name, extra in arms.items():
        slug = name.replace(", ", "-").replace("=", "")
        trained = train_head(base, args.data, name=slug, **common, **extra)
        trained.head.save(args.project / f"{slug}.safetensors")
        results[name] = {
            "train s": trained.seconds,
            **evaluate(base, trained.head, args, images, slug),
            "trained_with": trained.head.metadata["trained_with"],
        }

    plain, trick = results["plain"], results["keypoint-trick"]
    print(
        f"{Path(args.data).parent.name} val: {len(images)} images, {plain['objects']} objects, "
        f"{plain['small objects']} small (< 32² px at imgsz {args.imgsz}); epochs {args.epochs}, batch {args.batch}, "
        f"device {args.device}, branch {args.branch}, class width {args.class_width or 'as the base head'}"
    )
    rows = ["mAP50", "mAP50-95", "mAP50 small", "mAP50 (matcher)", "train s", "params"]
    print(f"{'metric':18s}" + "".join(f"{n:>22s}" for n in results) + f"{'trick/plain':>14s}")
    for row in rows:
        cells = "".join(f"{r[row]:>22.4f}" if isinstance(r[row], float) else f"{r[row]:>22}" for r in results.values())
        print(f"{row:18s}{cells}{_ratio(trick[row], plain[row]):>14s}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "settings": {k: str(v) for k, v in vars(args).items()},
            "val_images": len(images),
            "heads": results,
            "trick_over_plain": {row: _ratio(trick[row], plain[row]) for row in rows},
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
