"""Peak memory a training run adds, measured against `headkit.server.estimate_memory` (the up-front refusal's model).

Each point trains the real base on the real plates for a few batches (then presses Stop) in a fresh child process,
the app's way on CPU (`workers=0`), and reads the child's peak resident memory over the training (VmHWM, reset just
before it starts) minus its resident memory just before. Modes: "head" (a Detect head alone), "branch" (the head
owns the neck, `branch="neck"`) and "finetune" (the comparison fine-tune: every layer trains). Prints measured vs
estimated per point; exits 1 when a point's estimate is below what was measured (the estimate must be an upper bound).

    python benchmarks/train_memory.py [--points head:320:2,head:640:8,finetune:320:4] [--batches 2] [--base PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PLATES = REPO.parent / "shared" / "datasets" / "license_plates"
BASE = REPO.parent / "shared" / "weights" / "yolov8s-fall.pt"
POINTS = (
    "head:320:2,head:320:4,head:320:8,head:640:2,head:640:4,head:640:8,"
    "finetune:320:2,finetune:320:4,finetune:320:8,finetune:640:2,finetune:640:4,branch:640:4"
)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(mode: str, imgsz: int, batch: int, batches: int, base_path: str) -> dict:
    """In this process: train `batches` batches and return {"before_mb", "peak_mb", "added_mb", "seconds"}."""
    import headkit
    from headkit.finetune import finetune
    from headkit.progress import TrainingCancelled

    base = headkit.load_model(base_path)
    seen = []
    stop = lambda: len(seen) >= batches  # noqa: E731 (polled by the run's follower thread)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "plates"
        shutil.copytree(PLATES, data)  # Ultralytics writes label caches beside the labels
        options = dict(epochs=1, imgsz=imgsz, batch=batch, device="cpu", project=str(Path(folder) / "runs"),
                       progress=seen.append, stop=stop, workers=0)  # fmt: skip
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current RSS
        before, started = _status_mb("VmRSS"), time.perf_counter()
        try:
            if mode == "finetune":
                finetune(base, data / "data.yaml", **options)
            else:
                headkit.train_head(base, data / "data.yaml", branch="neck" if mode == "branch" else "head", **options)
        except TrainingCancelled:
            pass
        peak = _status_mb("VmHWM")
    return {"before_mb": before, "peak_mb": peak, "added_mb": peak - before, "seconds": time.perf_counter() - started}


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--points", default=POINTS, help="mode:imgsz:batch,... (mode: head, branch, finetune)")
    cli.add_argument("--batches", type=int, default=2, help="training batches per point before Stop")
    cli.add_argument("--base", default=str(BASE))
    cli.add_argument("--timeout", type=float, default=180.0, help="seconds per point")
    cli.add_argument("--one", help=argparse.SUPPRESS)  # child mode: one point, prints its JSON
    args = cli.parse_args()
    if args.one:
        mode, imgsz, batch = args.one.split(":")
        print(json.dumps(measure(mode, int(imgsz), int(batch), args.batches, args.base)))
        return 0

    import headkit

    base, missed = headkit.load_model(args.base), 0
    print(f"{'point':>18} {'measured MiB':>13} {'estimated MiB':>14} {'ratio':>6} {'s':>5}")
    for point in args.points.split(","):
        mode, imgsz, batch = point.split(":")
        child = subprocess.run(
            [sys.executable, __file__, "--one", point, "--batches", str(args.batches), "--base", args.base],
            capture_output=True, text=True, timeout=args.timeout, check=True,
        )  # fmt: skip
        got = json.loads(child.stdout.strip().splitlines()[-1])
        expected = headkit.server.estimate_memory(
            base, imgsz=int(imgsz), batch=int(batch), branch="neck" if mode == "branch" else "head",
            finetune=mode == "finetune",
        )  # fmt: skip
        ratio = expected.mb / got["added_mb"]
        missed += ratio < 1
        print(f"{point:>18} {got['added_mb']:>13.0f} {expected.mb:>14.0f} {ratio:>6.2f} {got['seconds']:>5.0f}",
              flush=True)  # fmt: skip
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
