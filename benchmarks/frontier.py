"""The head-shape frontier: accuracy against inference cost, for heads that own more or less of the base's neck and
class branch, beside a full fine-tune.

On one dataset, with one seed and the same epochs, image size and batch, trains one head per arm and a full fine-tune,
and prints one table: val mAP50 and mAP50-95 (the head alone on the trunk), GFLOPs and latency of the merged model
(base + that head; the fine-tuned model itself on its row) at 640 px whatever the training size, latency timed
interleaved (round-robin, median) relative to the base, the head file's size and the training wall time relative to
the fine-tune's. It writes an accuracy-against-cost plot (PNG) with the fine-tune's mAP50 as a line.

Arms: head only (the base's class branch, and a narrow one of `--class-width` channels started from the
base's strongest), the P3 path branch (`branch="p3"`: the layers feeding the Detect's P3 input, YOLOv8 10-15, its
P4/P5 inputs the base's own) with either class branch, its last stage alone (`branch="p3-last"`, YOLOv8 13-15) with
the narrow class branch, and the neck branch; head only and the P3 last stage also with `box_branch="shared"` (the
base's box branch where the head reads the base's maps, run once in the merged model). `--sweep` adds the older sweep: every
neck block boundary with the base's and the light (depthwise) class branch.

    python benchmarks/frontier.py [--base PATH] [--data data.yaml] [--epochs 10] [--imgsz 320] [--batch 16]
        [--device auto] [--images N] [--rounds 20] [--class-width 32] [--sweep] [--out results.json] [--plot out.png]
    python benchmarks/frontier.py --replot results.json [--plot out.png]

`--images N` trains and validates on the first N images of each split (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import textwrap
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


LATENCY_IMGSZ = 640  # deployment size: cost is compared here whatever size the heads were trained at


def arms(base, width: int, sweep: bool) -> list[tuple[str, str, dict]]:
    """(label, run name, train_head options) of each head arm, cheapest first."""
    chosen = [
        ("head only", "head", {}),
        (f"head only, class {width}", f"head-c{width}", {"class_width": width}),
        ("head only, shared box", "head-shared", {"box_branch": "shared"}),
        (f"P3 last stage, class {width}", f"p3last-c{width}", {"branch": "p3-last", "class_width": width}),
        (
            f"P3 last stage, class {width}, shared box",
            f"p3last-c{width}-shared",
            {"branch": "p3-last", "class_width": width, "box_branch": "shared"},
        ),
        (f"P3 path, class {width}", f"p3-c{width}", {"branch": "p3", "class_width": width}),
        ("P3 path", "p3", {"branch": "p3"}),
        ("neck branch", "neck", {"branch": "neck"}),
    ]
    if sweep:
        for start in branch_starts(base):
            for style in CLASS_BRANCHES:
                where = "head only" if start is None else f"branch from {start}"
                chosen.append((f"{where}, {style}", f"{start or 'head'}-{style}",
                               {"branch": start or "head", "class_branch": style}))  # fmt: skip
    return chosen


def plot(rows: dict[str, dict], path: Path, title: str) -> Path:
    """mAP50 against merged GFLOPs and latency (x base), the fine-tune's mAP50 a line across both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tuned = rows.get("full fine-tune")
    heads = [(label, row) for label, row in rows.items() if label != "full fine-tune"]
    colours = plt.get_cmap("tab10")
    figure, axes = plt.subplots(1, 2, figsize=(13, 6.5), sharey=True)
    for ax, key, name in ((axes[0], "gflops_vs_base", "merged GFLOPs / base"), (axes[1], "vs_base", "latency / base")):
        for number, (label, row) in enumerate(heads):  # one colour per arm in both panels, named in the legend
            ax.scatter(row[key], row["map50_map50_95"][0], s=50, color=colours(number % 10), label=label)
        if tuned:
            ax.axhline(tuned["map50_map50_95"][0], color="grey", linestyle="--", label="full fine-tune mAP50")
        ax.axvline(1.30, color="red", linestyle=":", linewidth=1, label="budget 1.30x")
        ax.axvline(1.15, color="orange", linestyle=":", linewidth=1, label="stretch 1.15x")
        ax.set_xlabel(f"{name} (at {LATENCY_IMGSZ} px)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val mAP50 (new head alone)")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    figure.suptitle(textwrap.fill(title, 140), fontsize=9)
    figure.tight_layout(rect=(0, 0.12, 1, 1))  # room for the legend below
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(parser)
    parser.add_argument("--images", type=int, default=None, help="use the first N images of each split (smoke run)")
    parser.add_argument("--rounds", type=int, default=20, help="latency rounds")
    parser.add_argument("--class-width", type=int, default=32, help="the narrow class branch's hidden width")
    parser.add_argument("--sweep", action="store_true", help="also every neck block boundary, base and light styles")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--plot", default=None, help="the PNG (default: beside --out, else frontier.png)")
    parser.add_argument("--replot", default=None, help="only draw the plot again from an earlier run's --out JSON")
    args = parser.parse_args()
    if args.replot:
        earlier = json.loads(Path(args.replot).read_text())
        figure = Path(args.plot) if args.plot else Path(args.replot).with_suffix(".png")
        print(f"plot: {plot(earlier['rows'], figure, earlier['title'])}")
        return 0
    started = time.perf_counter()
    device = default_device() if args.device == "auto" else args.device
    project = Path(tempfile.mkdtemp(prefix="frontier-"))
    data = source = Path(args.data)
    if args.images:
        data = subset(source, args.images, project / "data")
    base = headkit.load_model(args.base)
    common = dict(epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device=device, seed=0, deterministic=True)
    val = dict(imgsz=args.imgsz, batch=args.batch, device=device, project=project)
    base_gflops = get_flops(base.model, LATENCY_IMGSZ)

    rows: dict[str, dict] = {}
    models = {"base": base}
    for label, name, options in arms(base, args.class_width, args.sweep):
        result = train_head(base, data, project=project, name=name, plots=False, **options, **common)
        path = result.head.save(project / f"{name}.safetensors")
        custom = headkit.merge(base, result.head, keep_base_head=False)
        models[label] = merged = headkit.merge(base, result.head)
        rows[label] = {
            "map50_map50_95": val_map(custom, data, name=f"val-{name}", **val),
            "gflops": get_flops(merged.model, LATENCY_IMGSZ),
            "file_mb": path.stat().st_size / 2**20,
            "wall_s": result.seconds,
            "kind": result.head.kind.describe(),
            "class_width": result.head.metadata.get("class_width"),
        }
        print(f"{label}: {rows[label]}", flush=True)
    tuned = finetune(base, data, project=project, **common)
    path = save_finetuned(tuned.model, project / "finetune.safetensors")
    models["full fine-tune"] = tuned.model
    rows["full fine-tune"] = {
        "map50_map50_95": val_map(tuned.model, data, name="val-finetune", **val),
        "gflops": get_flops(tuned.model.model, LATENCY_IMGSZ),
        "file_mb": path.stat().st_size / 2**20,
        "wall_s": tuned.seconds,
    }
    latency = interleaved_ms(models, str(ASSETS / "bus.jpg"), LATENCY_IMGSZ, args.rounds)
    tuned_map50, tuned_wall = rows["full fine-tune"]["map50_map50_95"][0], rows["full fine-tune"]["wall_s"]
    for label, row in rows.items():
        row["latency_ms"], row["vs_base"] = latency[label], latency[label] / latency["base"]
        row["gflops_vs_base"] = row["gflops"] / base_gflops
        row["map50_vs_finetune"] = row["map50_map50_95"][0] / tuned_map50 if tuned_map50 else None
        row["wall_vs_finetune"] = row["wall_s"] / tuned_wall

    split = f"{source.parent.name} val split" + (f" (first {args.images} images)" if args.images else "")
    title = (
        f"{split}, {args.epochs} epochs, train imgsz {args.imgsz}, batch {args.batch}, device {device} "
        f"({torch.get_num_threads()} CPU threads); base {base_gflops:.2f} GFLOPs and {latency['base']:.1f} ms per "
        f"bus.jpg at {LATENCY_IMGSZ} px (median of {args.rounds} interleaved rounds)"
    )
    print("\n" + title)
    print(f"{'':24s} {'mAP50':>6s} {'vs FT':>6s} {'50-95':>6s} {'GFLOPs':>7s} {'x base':>6s} {'ms':>7s} "
          f"{'x base':>6s} {'MB':>6s} {'wall s':>7s} {'x FT':>5s}")  # fmt: skip
    for label, row in rows.items():
        m50, m5095 = row["map50_map50_95"]
        vs_ft = f"{row['map50_vs_finetune']:6.2f}" if row["map50_vs_finetune"] is not None else f"{'-':>6s}"
        print(
            f"{label:24s} {m50:6.3f} {vs_ft} {m5095:6.3f} {row['gflops']:7.2f} {row['gflops_vs_base']:6.2f} "
            f"{row['latency_ms']:7.1f} {row['vs_base']:6.2f} {row['file_mb']:6.2f} {row['wall_s']:7.1f} "
            f"{row['wall_vs_finetune']:5.2f}"
        )
    print(f"(head rows: merged = base + that head, at {LATENCY_IMGSZ} px; the fine-tune row: the fine-tuned model, "
          "its .safetensors)")  # fmt: skip
    figure = Path(args.plot) if args.plot else Path(args.out).with_suffix(".png") if args.out else Path("frontier.png")
    print(f"plot: {plot(rows, figure, title)}")
    total = time.perf_counter() - started
    print(f"total wall time {total:.0f} s")
    if args.out:
        report = {"args": vars(args), "rows": rows, "title": title, "total_s": total}
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
