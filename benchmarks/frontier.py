"""The branch-head frontier: accuracy against inference cost, for a head that owns more or less of the base's neck.

On one dataset, with one seed and the same epochs, image size and batch, trains a head from each block boundary of
the base's neck (the first neck layer, the layer after each Detect input but the last, and the Detect head alone),
each with the base's class branch and with the light (depthwise) one, plus a full fine-tune, and prints one table:
val mAP50 and mAP50-95 (the head alone on the trunk), GFLOPs and latency of the merged model (base + that head; the
fine-tuned model itself on its row) relative to the base, timed interleaved (round-robin, median), the head file's size
and the training wall time. For YOLOv8s the starts are 10 (whole neck), 16, 19 (last block) and the head alone.

    python benchmarks/frontier.py [--base PATH] [--data data.yaml] [--epochs 10] [--imgsz 320] [--batch 16]
        [--device auto] [--images N] [--rounds 20] [--out results.json]

`--images N` trains and validates on the first N images of each split (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from ultralytics.data.utils import img2label_paths
from ultralytics.utils import ASSETS
from ultralytics.utils.torch_utils import get_flops

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from head_vs_finetune import add_run_options, val_map  # noqa: E402

import headkit  # noqa: E402
from headkit.finetune import finetune, save_finetuned  # noqa: E402
from headkit.kinds import resolve_branch  # noqa: E402
from headkit.train import CLASS_BRANCHES, default_device, train_head  # noqa: E402
from headkit.trunk import base_facts  # noqa: E402


def branch_starts(base) -> list[int | None]:
    """The neck's block boundaries, read from the base's rows: its first layer, the layer after each Detect input
    but the last, then None (the Detect head alone)."""
    facts = base_facts(base)
    starts = {resolve_branch(base, "neck"), *(i + 1 for i in facts.detect_from[:-1])}
    return [*sorted(s for s in starts if 1 <= s < facts.head_index), None]


def subset(data: Path, count: int, out: Path) -> Path:
    """A copy of the first `count` images (and labels) of each split of a YOLO dataset, with its own data.yaml."""
    spec = yaml.safe_load(data.read_text())
    root = Path(spec.get("path") or data.parent)
    root = root if root.is_absolute() else data.parent / root
    for split in ("train", "val"):
        images = sorted(p for p in (root / spec[split]).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        for image in images[:count]:
            label = Path(img2label_paths([str(image)])[0])
            for src, kind in ((image, "images"), (label, "labels")):
                if src.is_file():
                    (out / kind / split).mkdir(parents=True, exist_ok=True)
                    shutil.copy(src, out / kind / split / src.name)
    names = spec["names"] if isinstance(spec["names"], dict) else dict(enumerate(spec["names"]))
    (out / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/val", "names": names}))
    return out / "data.yaml"


def interleaved_ms(models: dict[str, object], image: str, imgsz: int, rounds: int) -> dict[str, float]:
    """Median predict time per model in ms, timed round-robin so machine load hits them alike."""
    for model in models.values():  # warm-up: predictor setup, fusing, first-call allocations
        for _ in range(2):
            model.predict(image, imgsz=imgsz, verbose=False)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.predict(image, imgsz=imgsz, verbose=False)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(parser)
    parser.add_argument("--images", type=int, default=None, help="use the first N images of each split (smoke run)")
    parser.add_argument("--rounds", type=int, default=20, help="latency rounds")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    started = time.perf_counter()
    device = default_device() if args.device == "auto" else args.device
    project = Path(tempfile.mkdtemp(prefix="frontier-"))
    data = source = Path(args.data)
    if args.images:
        data = subset(source, args.images, project / "data")
    base = headkit.load_model(args.base)
    common = dict(epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device=device, seed=0, deterministic=True)
    val = dict(imgsz=args.imgsz, batch=args.batch, device=device, project=project)

    rows: dict[str, dict] = {}
    models = {"base": base}
    for start in branch_starts(base):
        for style in CLASS_BRANCHES:
            where = "head only" if start is None else f"branch from {start}"
            label, name = f"{where}, {style}", f"{start or 'head'}-{style}"
            result = train_head(base, data, project=project, name=name, branch=start or "head", class_branch=style,
                                plots=False, **common)  # fmt: skip
            path = result.head.save(project / f"{name}.safetensors")
            custom = headkit.merge(base, result.head, keep_base_head=False)
            models[label] = merged = headkit.merge(base, result.head)
            rows[label] = {
                "map50_map50_95": val_map(custom, data, name=f"val-{name}", **val),
                "gflops": get_flops(merged.model, args.imgsz),
                "file_mb": path.stat().st_size / 2**20,
                "wall_s": result.seconds,
            }
    tuned = finetune(base, data, project=project, **common)
    path = save_finetuned(tuned.model, project / "finetune.safetensors")
    models["full fine-tune"] = tuned.model
    rows["full fine-tune"] = {
        "map50_map50_95": val_map(tuned.model, data, name="val-finetune", **val),
        "gflops": get_flops(tuned.model.model, args.imgsz),
        "file_mb": path.stat().st_size / 2**20,
        "wall_s": tuned.seconds,
    }
    latency = interleaved_ms(models, str(ASSETS / "bus.jpg"), args.imgsz, args.rounds)
    for label, row in rows.items():
        row["latency_ms"], row["vs_base"] = latency[label], latency[label] / latency["base"]

    split = f"{source.parent.name} val split" + (f" (first {args.images} images)" if args.images else "")
    print(
        f"\n{split}, {args.epochs} epochs, imgsz {args.imgsz}, batch {args.batch}, device {device} "
        f"({torch.get_num_threads()} CPU threads); base {get_flops(base.model, args.imgsz):.2f} GFLOPs, "
        f"{latency['base']:.1f} ms per bus.jpg (median of {args.rounds} interleaved rounds)"
    )
    print(
        f"{'':26s} {'mAP50':>7s} {'mAP50-95':>9s} {'GFLOPs':>7s} {'ms':>7s} {'vs base':>8s} {'MB':>6s} {'wall s':>7s}"
    )
    for label, row in rows.items():
        m50, m5095 = row["map50_map50_95"]
        print(
            f"{label:26s} {m50:7.3f} {m5095:9.3f} {row['gflops']:7.2f} {row['latency_ms']:7.1f} {row['vs_base']:8.2f} "
            f"{row['file_mb']:6.2f} {row['wall_s']:7.1f}"
        )
    print("(head rows: merged = base + that head; the fine-tune row: the fine-tuned model, its .safetensors)")
    total = time.perf_counter() - started
    print(f"total wall time {total:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "total_s": total}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
