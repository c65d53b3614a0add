"""Inference cost of merging: base vs merged with 1, 2, 3 heads, with a neck-branch head, with a head-only + a branch
head, vs running base and a single-head model one after the other.

All variants are timed interleaved in one run (round-robin, median of the rounds), so machine load hits them alike.
CPU, batch 1. Targets: merged(1 head) / base <= 1.30, merged(1 head) / (base + single-head model) <= 0.65,
merged(1 neck branch) / base <= 1.65. Cost depends on the architecture only, so without --branch-head the branch head
is the base's own neck and head taken as a branch (same layers, same cost as a trained one).

    python benchmarks/merge_latency.py [--base PATH] [--head PATH|own] [--branch-head PATH] [--imgsz 640] [--rounds 30]
        [--nms-free] [--also PATH ...]

`--head own` takes the base's own head as the extra head (same layers and cost as a trained one: use it for a base
without a shipped head, e.g. a YOLO26 checkpoint); `--nms-free` predicts with nms=False (the one-to-one branch of an
end-to-end base such as YOLO26, no NMS); `--also` adds a row "merged, 1 <file stem>" per head file given (another
shape, e.g. a P3-path head), timed in the same rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from ultralytics.utils import ASSETS
from ultralytics.utils.torch_utils import get_flops

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import headkit  # noqa: E402
from headkit.base import clone_model  # noqa: E402
from headkit.kinds import resolve_branch  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=str(REPO.parent / "shared" / "weights" / "yolov8s-fall.pt"))
    parser.add_argument("--head", default=str(REPO / "weights" / "license_plate.safetensors"), help="a path, or 'own'")
    parser.add_argument("--branch-head", default=None, help="a neck-branch head for this base (.safetensors)")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--nms-free", action="store_true", help="predict with nms=False (end-to-end bases)")
    parser.add_argument("--also", nargs="*", default=[], help="more head files, one merged row each")
    args = parser.parse_args()

    base = headkit.load_model(args.base)
    head = headkit.extract_head(clone_model(base), base) if args.head == "own" else headkit.load_head(args.head)
    options = {"imgsz": args.imgsz, "verbose": False} | ({"nms": False} if args.nms_free else {})
    single = headkit.merge(base, head, keep_base_head=False)
    if args.branch_head:
        branch = headkit.load_head(args.branch_head)
    else:
        start = resolve_branch(base, "neck")
        branch = headkit.extract_head(clone_model(base), base, branch_start=start)
    variants = {
        "base": [base],
        "merged, 1 head": [headkit.merge(base, head)],
        "merged, 2 heads": [headkit.merge(base, head, head)],
        "merged, 3 heads": [headkit.merge(base, head, head, head)],
        "merged, 1 neck branch": [headkit.merge(base, branch)],
        "merged, head + neck branch": [headkit.merge(base, head, branch)],
        "base + single-head model": [base, single],
    }
    for path in args.also:
        variants[f"merged, 1 {Path(path).stem}"] = [headkit.merge(base, headkit.load_head(path))]
    image = str(ASSETS / "bus.jpg")
    for models in variants.values():  # warm-up: predictor setup, fusing, first-call allocations
        for model in models:
            for _ in range(2):
                model.predict(image, **options)

    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, models in variants.items():
            start = time.perf_counter()
            for model in models:
                model.predict(image, **options)
            times[name].append(time.perf_counter() - start)

    median = {name: statistics.median(t) * 1000 for name, t in times.items()}
    print(
        f"CPU ({torch.get_num_threads()} threads), batch 1, imgsz {args.imgsz}, bus.jpg, {args.rounds} rounds, "
        "end-to-end predict (pre-process, forward, " + ("NMS-free selection)" if args.nms_free else "NMS)")
    )
    print(f"{'variant':28s} {'median ms':>10s} {'p90 ms':>8s} {'GFLOPs':>8s} {'vs base':>8s}")
    for name, models in variants.items():
        flops = sum(get_flops(m.model, args.imgsz) for m in models)
        p90 = statistics.quantiles(times[name], n=10)[-1] * 1000
        print(f"{name:28s} {median[name]:10.1f} {p90:8.1f} {flops:8.1f} {median[name] / median['base']:8.2f}")
    one_head = median["merged, 1 head"] / median["base"]
    versus_two = median["merged, 1 head"] / median["base + single-head model"]
    print(f"merged(1 head) / base            = {one_head:.2f}  (target <= 1.30)")
    print(f"merged(1 head) / two models      = {versus_two:.2f}  (target <= 0.65)")
    one_branch = median["merged, 1 neck branch"] / median["base"]
    print(f"merged(1 neck branch) / base     = {one_branch:.2f}  (target <= 1.65)")
    return 0 if one_head <= 1.30 and versus_two <= 0.65 and one_branch <= 1.65 else 1


if __name__ == "__main__":
    raise SystemExit(main())
