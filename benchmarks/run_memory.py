"""Memory per finished training run: RSS after each of N small runs (head + comparison fine-tune), as the app runs them.

With `--worker` each run's work is `headkit.runs.perform_in_worker`: it trains in a worker process that loads the
base itself, as the server does on CPU, so this process only follows it (and never loads the base).

Each run goes the app's way: a `headkit.runs.TrainingRequest` started by `headkit.runs.Runs` (kept for reconnecting
pages) doing `headkit.runs.perform`: the head then the comparison fine-tune, each saved into the job and kept as a
small record. After every run: gc.collect(), then the bytes of every torch tensor still alive (what a leak of
models would show) and this
process's resident memory. Target: RSS after the last run within `--max-drift` percent of RSS after the first (the
first run pays for Ultralytics' one-time imports and caches). Exits 1 when the target is missed.

    python benchmarks/run_memory.py [--runs 10] [--imgsz 64] [--images 4] [--max-drift 10] [--worker]
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import headkit  # noqa: E402
from headkit.runs import Runs, TrainingRequest, perform, perform_in_worker  # noqa: E402

PLATES = REPO.parent / "shared" / "datasets" / "license_plates"
BASE = REPO.parent / "shared" / "weights" / "yolov8s-fall.pt"


def tiny_dataset(out: Path, images: int) -> Path:
    """`images` real plate images for train and for val, with a data.yaml; returns the yaml."""
    for split in ("train", "val"):
        for image in sorted((PLATES / "images" / split).glob("*.jpg"))[:images]:
            for kind, src in (("images", image), ("labels", PLATES / "labels" / split / f"{image.stem}.txt")):
                (out / kind / split).mkdir(parents=True, exist_ok=True)
                shutil.copy(src, out / kind / split / src.name)
    (out / "data.yaml").write_text("train: images/train\nval: images/val\nnames:\n  0: license_plate\n")
    return out / "data.yaml"


def live_tensor_mb() -> float:
    """MiB held by every torch tensor the garbage collector can see (after a collection)."""
    gc.collect()
    return sum(o.numel() * o.element_size() for o in gc.get_objects() if isinstance(o, torch.Tensor)) / 2**20


def run_memory(
    *, runs: int = 10, imgsz: int = 64, images: int = 4, epochs: int = 1, base=None, in_worker: bool = False
) -> dict:
    """Train `runs` heads, each with the comparison fine-tune, through one `Runs`; RSS (MiB) after each (and the
    seconds each run took).

    Returns:
        {"rss_mb": [after run 1, ...], "tensor_mb": [after run 1, ...], "drift_percent": RSS (last - first) /
        first x 100, "kept": runs kept}
    """
    if in_worker:
        work = perform_in_worker
    else:
        base = base if base is not None else headkit.load_model(BASE)
        work = lambda req, stop, report: perform(req, base, stop, report)  # noqa: E731
    process, line, rss, tensors, seconds = psutil.Process(), Runs(slots=1), [], [], []
    with tempfile.TemporaryDirectory() as folder:
        data = tiny_dataset(Path(folder) / "data", images)
        for n in range(runs):
            job = headkit.server.Job(Path(folder) / f"job-{n}")
            request = TrainingRequest(
                base=str(BASE), data=str(data), job_dir=str(job.path), name="plates", epochs=epochs, imgsz=imgsz,
                batch=images, finetune=True, options=(("workers", 0),),
            )  # fmt: skip
            started = time.monotonic()
            run = line.start(job.path, request, work)
            for _ in run.follow():
                pass
            seconds.append(time.monotonic() - started)
            if run.state != "finished":
                raise RuntimeError(f"run {n + 1} ended {run.state}: {run.outcome}")
            tensors.append(live_tensor_mb())
            rss.append(process.memory_info().rss / 2**20)
            print(
                f"run {n + 1}: RSS {rss[-1]:.0f} MiB, live tensors {tensors[-1]:.1f} MiB, {seconds[-1]:.1f} s",
                flush=True,
            )
    drift = (rss[-1] - rss[0]) / rss[0] * 100
    print(f"drift after {runs} runs: {drift:+.1f}% of the RSS after the first ({rss[-1] - rss[0]:+.0f} MiB)")
    print(f"live tensors: {tensors[0]:.1f} MiB after the first run, {tensors[-1]:.1f} MiB after the last")
    kept = sum(1 for _ in line._runs)
    return {"rss_mb": rss, "tensor_mb": tensors, "seconds": seconds, "drift_percent": drift, "kept": kept}


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--runs", type=int, default=10)
    cli.add_argument("--imgsz", type=int, default=64)
    cli.add_argument("--images", type=int, default=4)
    cli.add_argument("--max-drift", type=float, default=10.0, help="percent")
    cli.add_argument("--worker", action="store_true", help="train in worker processes, as the server does on CPU")
    args = cli.parse_args()
    result = run_memory(runs=args.runs, imgsz=args.imgsz, images=args.images, in_worker=args.worker)
    return 0 if result["drift_percent"] < args.max_drift else 1


if __name__ == "__main__":
    raise SystemExit(main())
