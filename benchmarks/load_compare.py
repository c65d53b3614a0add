"""Load on the app's compare endpoint: many users at once, then a long series, against a local server on loopback.

Starts `app.py` in a child process on 127.0.0.1, waits until it answers, warms the base up with one call, then:
1. `--concurrent` compare calls at once (one thread and one gradio_client Client each): all must succeed with the same
   detections; prints p50/p95 latency and throughput.
2. `--sequential` calls one after another: prints the server's resident memory (RSS) before and after; it must grow
   less than `--max-growth` percent.
Exits 1 if a target is missed, 2 if the server does not start or the run exceeds `--budget` seconds.

    python benchmarks/load_compare.py [--concurrent 20] [--sequential 200] [--imgsz 320] [--base PATH]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import psutil
from gradio_client import Client, handle_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASE = REPO.parent / "shared" / "weights" / "yolov8s-fall.pt"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(base: Path, work: Path, port: int, *, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """`python app.py` on loopback, offline, its folders and log (server.log) under `work`; `env` adds or overrides."""
    env = {
        **os.environ,
        "HEADKIT_BASE": str(base),
        "HEADKIT_BASES": "",
        "HEADKIT_JOBS_DIR": str(work / "jobs"),
        "GRADIO_SERVER_NAME": HOST,
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_TEMP_DIR": str(work / "gradio"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "YOLO_OFFLINE": "1",
        **(env or {}),
    }
    log = (work / "server.log").open("w")
    return subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_server(server: subprocess.Popen) -> None:
    """Terminate the app, waiting up to 30 s before killing it."""
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def wait_until_ready(server: subprocess.Popen, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode} before answering")
        try:
            if httpx.get(f"{url}/gradio_api/info", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def compare(client: Client, base: str, image: str, imgsz: int) -> tuple[float, int]:
    """One compare call; returns its latency in seconds and the number of base detections it reported."""
    started = time.perf_counter()
    result = client.predict(base, handle_file(image), [], 0.25, 0.7, imgsz, api_name="/compare")
    return time.perf_counter() - started, int(result[5]["base_count"])


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def concurrent_phase(
    url: str, base: str, image: str, imgsz: int, n: int, expected: int
) -> tuple[list[float], float, list[str]]:
    clients = [Client(url, verbose=False) for _ in range(n)]
    start = threading.Barrier(n + 1)
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def user(client: Client) -> None:
        start.wait()
        try:
            seconds, found = compare(client, base, image, imgsz)
        except Exception as e:  # any failure of a call is a result to report, not a crash of the benchmark
            with lock:
                failures.append(f"{type(e).__name__}: {e}")
            return
        with lock:
            latencies.append(seconds)
            if found != expected:
                failures.append(f"{found} base detections instead of {expected}")

    wall = run_together([threading.Thread(target=user, args=(c,)) for c in clients], start)
    return latencies, wall, failures


def run_together(threads: list[threading.Thread], start: threading.Barrier) -> float:
    """Start the threads, release them at once through `start` (one party is us) and return the wall seconds."""
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE)
    parser.add_argument("--image", type=Path, default=None, help="default: Ultralytics' bus.jpg")
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--max-growth", type=float, default=10.0, help="allowed RSS growth over the series, percent")
    parser.add_argument("--budget", type=float, default=1800.0, help="seconds for the whole run")
    args = parser.parse_args()
    if args.image is None:
        from ultralytics.utils import ASSETS

        args.image = ASSETS / "bus.jpg"
    began = time.monotonic()
    base, image = str(args.base.resolve()), str(args.image.resolve())
    print(f"compare on {args.image.name} at imgsz={args.imgsz} (small, to keep the run short on CPU); base {base}")

    with tempfile.TemporaryDirectory(prefix="headkit-load-") as tmp:
        work, port = Path(tmp), free_port()
        url = f"http://{HOST}:{port}"
        server = start_server(args.base.resolve(), work, port)
        try:
            try:
                wait_until_ready(server, url, timeout=300)
            except (RuntimeError, TimeoutError) as e:
                print(f"FAIL: {e}\n{(work / 'server.log').read_text()[-3000:]}")
                return 2
            process = psutil.Process(server.pid)
            client = Client(url, verbose=False)
            warm, expected = compare(client, base, image, args.imgsz)
            print(f"warm-up call (loads the base): {warm:.2f} s, {expected} base detections")

            latencies, wall, failures = concurrent_phase(url, base, image, args.imgsz, args.concurrent, expected)
            ok = len(latencies) - sum("instead of" in f for f in failures)
            print(f"\n{args.concurrent} concurrent calls: {ok}/{args.concurrent} succeeded in {wall:.2f} s")
            if latencies:
                print(
                    f"  latency p50 {percentile(latencies, 50):.2f} s, p95 {percentile(latencies, 95):.2f} s, "
                    f"max {max(latencies):.2f} s; throughput {len(latencies) / wall:.2f} calls/s"
                )
            for failure in failures[:5]:
                print(f"  failed: {failure[:300]}")

            rss_start = process.memory_info().rss
            print(f"\n{args.sequential} sequential calls: server RSS at start {rss_start / 2**20:.1f} MiB")
            series, started = [], time.perf_counter()
            for i in range(1, args.sequential + 1):
                seconds, found = compare(client, base, image, args.imgsz)
                series.append(seconds)
                if found != expected:
                    failures.append(f"sequential call {i}: {found} base detections instead of {expected}")
                if i % 50 == 0:
                    print(f"  after {i:4d} calls: RSS {process.memory_info().rss / 2**20:.1f} MiB")
                if time.monotonic() - began > args.budget:
                    print(f"FAIL: over the {args.budget:.0f} s budget after {i} sequential calls")
                    return 2
            total = time.perf_counter() - started
            rss_end = process.memory_info().rss
            growth = 100 * (rss_end - rss_start) / rss_start
            print(f"  RSS at end {rss_end / 2**20:.1f} MiB: growth {growth:+.1f} % (target < {args.max_growth:.0f} %)")
            print(
                f"  latency p50 {percentile(series, 50):.2f} s, p95 {percentile(series, 95):.2f} s; "
                f"throughput {len(series) / total:.2f} calls/s"
            )
        finally:
            stop_server(server)

    missed = []
    if failures or len(latencies) != args.concurrent:
        missed.append(f"{len(failures)} failed call(s)")
    if growth >= args.max_growth:
        missed.append(f"RSS grew {growth:.1f} %")
    print(f"\n{'FAIL: ' + '; '.join(missed) if missed else 'PASS'} ({time.monotonic() - began:.0f} s in all)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
