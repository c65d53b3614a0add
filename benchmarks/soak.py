"""Soak: a training run, legitimate compares and resource attacks at once, against the app on loopback.

Starts `app.py` in a child process on 127.0.0.1 (offline, base from `--base`), samples the server's resident memory
(RSS, children included) every 0.25 s for the whole run, warms the base up with one compare, then:
1. starts a training run through gradio_client on a small zip of real plate images (24 train / 8 val);
2. while it runs, `--rounds` rounds of `--concurrent` legitimate compares (bus.jpg, head license_plate; one
   gradio_client Client per thread), each of which must report the base's detections unchanged, interleaved with one
   attack of each kind from other clients, each of which must be refused with its limit's message:
   a valid head widened to 50,000 classes (/load_head, max_classes), a data.yaml listing 100,000 names
   (/load_dataset, max_classes), a merge of 9 session heads (/merge, max_heads), a compare at 4096 px (refused by the
   image-size slider, whose maximum is the max_imgsz limit), a branch head whose architecture rows carry code
   (/load_head: refused as data, the payload never runs), a 1 KB head declaring 4,000-channel inputs (/load_head,
   max_head_mb), a 2-frame 16000 x 16000 video (/compare_video, max_video_pixels), a COCO zip naming one image in
   10,000 records (/load_dataset), and a second run from the training client (/train_head,
   max_queued_runs_per_client);
3. a flood of queued runs: max_queued_runs + 1 fresh clients each queue a run behind the training one; the last is
   refused (max_queued_runs), and every waiting run is then stopped before it trains;
4. waits for the training run to end (asks it to stop when `--budget` runs short) and prints its final status;
5. `--memory-runs` small training runs with the comparison fine-tune, one after another: server RSS after each.
Targets: no failed legitimate call, every attack refused with the right message, the code payload never ran, peak RSS
under `--max-peak-mb`, RSS drift between the end of round 1 and the end of the last round under `--max-drift`
percent, and RSS drift from the first to the last memory run under `--max-drift` percent.
Exits 1 if a target is missed, 2 if the server does not start.

    python benchmarks/soak.py [--rounds 3] [--concurrent 20] [--imgsz 320] [--epochs 30] [--max-peak-mb 6144]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import Status

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from load_compare import (  # noqa: E402
    DEFAULT_BASE,
    HOST,
    REPO,
    free_port,
    percentile,
    run_together,
    start_server,
    stop_server,
    wait_until_ready,
)

import headkit  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from dataset_attack_files import one_image_many_records  # noqa: E402
from head_attack_files import make_channel_bomb_head, make_crafted_branch_head  # noqa: E402
from video_files import resolution_bomb  # noqa: E402

PLATES = REPO.parent / "shared" / "datasets" / "license_plates"
PLATE_HEAD = REPO / "weights" / "license_plate.safetensors"
HEADS = ["license_plate"]
WIDE_CLASSES = 50_000
HUGE_NAMES = 100_000
MERGED_HEADS = 9
ATTACK_IMGSZ = 4096


@dataclass
class Memory:
    """Resident memory of a process and its children, sampled in a thread: (monotonic seconds, bytes) pairs."""

    process: psutil.Process
    interval: float = 0.25
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def rss(self) -> int:
        total = 0
        for p in [self.process, *self.process.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):  # a child that ended between listing and reading
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append((time.monotonic(), self.rss()))
            except psutil.NoSuchProcess:
                return

    def __enter__(self) -> Memory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def copy_plates(out: Path, train: int, val: int, names: str = "  0: license_plate\n") -> Path:
    """The first `train`/`val` images of the real plate dataset, with labels and a data.yaml, zipped; the zip's path."""
    for split, count in (("train", train), ("val", val)):
        for image in sorted((PLATES / "images" / split).glob("*.jpg"))[:count]:
            for kind, src in (("images", image), ("labels", PLATES / "labels" / split / f"{image.stem}.txt")):
                (out / kind / split).mkdir(parents=True, exist_ok=True)
                shutil.copy(src, out / kind / split / src.name)
    (out / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames:\n{names}")
    return Path(shutil.make_archive(str(out), "zip", out.parent, out.name))


def widened(head: headkit.Head, classes: int) -> headkit.Head:
    """The same head with its class output convs (cv3.<level>.2) widened to `classes`: a valid headkit file."""
    tensors = dict(head.tensors)
    for key, value in head.tensors.items():
        if key.startswith("cv3.") and key.split(".")[2] == "2":
            tensors[key] = torch.zeros((classes, *value.shape[1:]), dtype=value.dtype)
    names = {str(i): f"c{i}" for i in range(classes)}
    return headkit.Head(tensors, {**head.metadata, "names": names, "label": "wide"})


def clean_line(count: int) -> str:
    return (
        f"Merged model: {count} base-class detections (base alone: {count}); "
        "largest confidence change against the base: 0"
    )


def compare(client: Client, base: str, image: str, imgsz: int) -> tuple[float, int, str]:
    """One legitimate compare; its latency in seconds, the base's detection count and the summary line."""
    started = time.perf_counter()
    result = client.predict(base, handle_file(image), HEADS, 0.25, 0.7, imgsz, api_name="/compare")
    return time.perf_counter() - started, int(result[5]["base_count"]), result[5]["summary"]


def refusal(call: Callable[[], object], limit: str) -> tuple[bool, str]:
    """Whether `call` was refused with a message naming `limit`, and what the caller saw."""
    try:
        call()
    except AppError as e:
        return limit in str(e), f"refused: {str(e)[:300]}"
    except Exception as e:  # a crash or a dropped connection is a result to report, not a crash of the benchmark
        return False, f"{type(e).__name__}: {str(e)[:300]}"
    return False, "accepted"


@dataclass
class Round:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    attacks: dict[str, tuple[bool, str]] = field(default_factory=dict)  # attack -> refused right?, what it saw
    wall: float = 0.0
    rss_end: int = 0


def run_round(url: str, base: str, image: str, args: argparse.Namespace, expected: int, attacks: dict) -> Round:
    """`args.concurrent` compares released together, the attacks spread among them (0.5 s apart)."""
    result, lock = Round(), threading.Lock()
    start = threading.Barrier(args.concurrent + len(attacks) + 1)

    def user() -> None:
        client = Client(url, verbose=False)
        start.wait()
        try:
            seconds, found, line = compare(client, base, image, args.imgsz)
        except Exception as e:  # reported as a failed legitimate call
            with lock:
                result.failures.append(f"{type(e).__name__}: {str(e)[:300]}")
            return
        with lock:
            result.latencies.append(seconds)
            if found != expected or line != clean_line(expected):
                result.failures.append(f"{found} base detections (expected {expected}); line {line!r}")

    def attacker(delay: float, name: str, limit: str, call: Callable[[Client], object], client: Client | None):
        client = client or Client(url, verbose=False)
        start.wait()
        time.sleep(delay)
        outcome = refusal(lambda: call(client), limit)
        with lock:
            result.attacks[name] = outcome

    threads = [threading.Thread(target=user) for _ in range(args.concurrent)]
    threads += [
        threading.Thread(target=attacker, args=(0.5 * (i + 1), name, *spec))
        for i, (name, spec) in enumerate(attacks.items())
    ]
    result.wall = run_together(threads, start)
    return result


def prepare_attacks(url: str, base: str, image: str, tmp: Path, failures: list[str], trainer: Client, train_zip: Path):
    """name -> (limit, call(client), client or None for a fresh one); loads the merge attacker's 9 session heads."""
    wide = widened(headkit.load_head(PLATE_HEAD), WIDE_CLASSES).save(tmp / "wide.safetensors")
    crafted = make_crafted_branch_head(tmp / "crafted.safetensors", marker=tmp / "payload-ran")
    bomb_head = make_channel_bomb_head(tmp / "channels.safetensors", channels=4000)
    bomb_video = resolution_bomb(tmp)
    coco_zip = one_image_many_records(Path(image), tmp / "coco_reuse.zip", records=10_000)
    names = "".join(f"  - c{i}\n" for i in range(HUGE_NAMES))
    names_zip = copy_plates(tmp / "names", 2, 1, names)
    print(
        f"attack files: widened head {wide.stat().st_size / 2**20:.1f} MB ({WIDE_CLASSES:,} classes), "
        f"dataset zip {names_zip.stat().st_size / 2**20:.1f} MB ({HUGE_NAMES:,} names)"
    )
    merger = Client(url, verbose=False)  # one session holding the 9 heads it merges every round
    for _ in range(MERGED_HEADS):
        try:
            merger.predict(base, handle_file(str(PLATE_HEAD)), "", api_name="/load_head")
        except Exception as e:  # a legitimate upload failing is a failure to report
            failures.append(f"loading a session head: {type(e).__name__}: {str(e)[:300]}")
    try:
        keys = [h["key"] for h in merger.predict(base, api_name="/list_heads")[0] if h["origin"] == "session"]
    except Exception as e:  # as above
        failures.append(f"listing the session heads: {type(e).__name__}: {str(e)[:300]}")
        keys = []
    if len(keys) != MERGED_HEADS:
        failures.append(f"{len(keys)} session heads after {MERGED_HEADS} uploads")

    def upload_wide(client: Client):
        return client.predict(base, handle_file(str(wide)), "", api_name="/load_head")

    def upload_names(client: Client):
        return client.predict(base, handle_file(str(names_zip)), api_name="/load_dataset")

    def merge_all(client: Client):
        return client.predict(base, keys, True, False, 640, api_name="/merge")

    def compare_huge(client: Client):
        return client.predict(base, handle_file(image), HEADS, 0.25, 0.7, ATTACK_IMGSZ, api_name="/compare")

    def upload(path: Path, endpoint: str):
        def call(client: Client):
            if endpoint == "/load_head":
                return client.predict(base, handle_file(str(path)), "", api_name=endpoint)
            if endpoint == "/compare_video":
                return client.predict(base, handle_file(str(path)), HEADS, 0.25, 0.7, 320, api_name=endpoint)
            return client.predict(base, handle_file(str(path)), api_name=endpoint)

        return call

    def second_run(client: Client):
        return client.predict(base, handle_file(str(train_zip)), 1, 160, 4, False, api_name="/train_head")

    return {
        "widened head -> /load_head": ("max_classes", upload_wide, None),
        f"{HUGE_NAMES // 1000}k names -> /load_dataset": ("max_classes", upload_names, None),
        f"{MERGED_HEADS} heads -> /merge": ("max_heads", merge_all, merger),
        f"imgsz {ATTACK_IMGSZ} -> /compare": ("greater than maximum value", compare_huge, None),
        "code in branch rows -> /load_head": ("which is not a model layer", upload(crafted, "/load_head"), None),
        "4,000-channel head -> /load_head": ("max_head_mb", upload(bomb_head, "/load_head"), None),
        "16000x16000 video -> /compare_video": ("max_video_pixels", upload(bomb_video, "/compare_video"), None),
        "COCO 10k records, 1 image -> /load_dataset": ("one image record", upload(coco_zip, "/load_dataset"), None),
        "second run of one client -> /train_head": ("max_queued_runs_per_client", second_run, trainer),
    }


def flood(url: str, base: str, train_zip: Path, queued: int) -> tuple[bool, str]:
    """`queued` + 1 fresh clients queue a run each behind the running one: the last must be refused by max_queued_runs;
    then every waiting run is stopped before it trains. Whether that held, and what was seen."""
    clients = [Client(url, verbose=False) for _ in range(queued + 1)]
    jobs = []
    for client in clients[:queued]:
        jobs.append(client.submit(base, handle_file(str(train_zip)), 1, 160, 4, False, api_name="/train_head"))
        if not wait_for_training(jobs[-1], timeout=120):  # waiting in line reports progress too
            return False, f"queued run {len(jobs)} did not report: {last_status(jobs[-1])}"
    ok, seen = refusal(
        lambda: clients[-1].predict(base, handle_file(str(train_zip)), 1, 160, 4, False, api_name="/train_head"),
        "max_queued_runs",
    )
    stopped = [client.predict(api_name="/stop_training") for client in clients[:queued]]
    finals = []
    for job in jobs:
        try:
            finals.append(str(job.result(timeout=60)[0]))
        except Exception as e:  # a stopped waiting run may end with its message as an error
            finals.append(f"{type(e).__name__}: {str(e)[:200]}")
    said = [*finals, *map(str, stopped)]  # each run's last status and each Stop's answer
    never_trained = all("before it started" in text.lower() for text in said)
    return (
        ok and never_trained,
        f"{seen[:200]}; waiting runs stopped before training: {never_trained} ({finals[0][:120]})",
    )


def memory_runs(url: str, base: str, train_zip: Path, runs: int, memory: Memory) -> list[float]:
    """`runs` small runs with the comparison fine-tune, one after another, from one client: server RSS (MiB) after each."""
    client, sizes = Client(url, verbose=False), []
    for _ in range(runs):
        status = str(
            client.predict(base, handle_file(str(train_zip)), 1, 160, 4, False, "head", True, api_name="/train_head")[0]
        )
        if not status.startswith("✅ Trained"):
            raise RuntimeError(f"memory run: {status[:300]}")
        time.sleep(1)
        sizes.append(memory.rss() / 2**20)
    return sizes


def wait_for_training(job, timeout: float) -> bool:
    """True once the run reports progress (past its dataset check and estimate); False if it ended or timed out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not job.done():
        if job.status().code in (Status.PROGRESS, Status.ITERATING) or job.outputs():
            return True
        time.sleep(0.5)
    return False


def last_status(job) -> str:
    outputs = job.outputs()
    return str(outputs[-1][0]) if outputs else "(no output yet)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=20, help="legitimate compares per round")
    parser.add_argument("--imgsz", type=int, default=320, help="compare image size")
    parser.add_argument("--epochs", type=int, default=30, help="of the training run (imgsz 320, batch 8)")
    parser.add_argument("--max-peak-mb", type=float, default=6144.0, help="peak server RSS budget, MiB")
    parser.add_argument("--max-drift", type=float, default=10.0, help="RSS drift round 1 -> last round, percent")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds; training is asked to stop near it")
    parser.add_argument("--memory-runs", type=int, default=10, help="small runs with the fine-tune, for RSS drift")
    args = parser.parse_args()
    from ultralytics.utils import ASSETS

    began = time.monotonic()
    base, image = str(args.base.resolve()), str(ASSETS / "bus.jpg")
    print(
        f"soak: {args.rounds} rounds x {args.concurrent} compares (bus.jpg, heads {HEADS}, imgsz {args.imgsz}) + "
        f"4 attacks each, during a training run ({args.epochs} epochs, imgsz 320, batch 8); base {args.base.name}"
    )
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="headkit-soak-") as tmp_name:
        tmp, port = Path(tmp_name), free_port()
        url = f"http://{HOST}:{port}"
        train_zip = copy_plates(tmp / "soak_plates", 24, 8)
        server = start_server(args.base.resolve(), tmp, port, env={"PYTHONUNBUFFERED": "1"})
        memory = Memory(psutil.Process(server.pid))
        try:
            with memory:
                try:
                    wait_until_ready(server, url, timeout=300)
                except (RuntimeError, TimeoutError) as e:
                    print(f"FAIL: {e}\n{(tmp / 'server.log').read_text()[-3000:]}")
                    return 2
                print(f"server ready in {time.monotonic() - began:.0f} s")
                warm, expected, line = compare(Client(url, verbose=False), base, image, args.imgsz)
                print(f"warm-up compare: {warm:.2f} s, {expected} base detections; {line}")
                if line != clean_line(expected):
                    failures.append(f"warm-up: line {line!r}")
                trainer = Client(url, verbose=False)
                job = trainer.submit(
                    base, handle_file(str(train_zip)), args.epochs, 320, 8, False, api_name="/train_head"
                )
                started = time.monotonic()
                if not wait_for_training(job, timeout=240):
                    failures.append(f"training did not start: {last_status(job)}")
                print(f"training started ({time.monotonic() - started:.0f} s to its first progress report)\n")
                small_zip = copy_plates(tmp / "small_plates", 4, 2)
                attacks = prepare_attacks(url, base, image, tmp, failures, trainer, small_zip)

                rounds: list[Round] = []
                for r in range(1, args.rounds + 1):
                    result = run_round(url, base, image, args, expected, attacks)
                    result.rss_end = memory.rss()
                    rounds.append(result)
                    wrong = sum(not ok for ok, _ in result.attacks.values())
                    p50 = f"{percentile(result.latencies, 50):.2f} s" if result.latencies else "n/a"
                    print(
                        f"round {r}: {args.concurrent - len(result.failures)}/{args.concurrent} compares ok "
                        f"in {result.wall:.1f} s (p50 {p50}), attacks refused right "
                        f"{len(result.attacks) - wrong}/{len(attacks)}, RSS at end {result.rss_end / 2**20:.0f} MiB; "
                        f"training: {last_status(job)}"
                    )
                    for name, (ok, seen) in result.attacks.items():
                        if r == 1 or not ok:  # every message once, then only the wrong ones
                            print(f"  {'ok' if ok else 'WRONG'} attack {name}: {seen[:220]}")
                    for failure in result.failures[:3]:
                        print(f"  failed compare: {failure}")
                running = not job.done()
                print(f"\ntraining still running when the compare phase ended: {'yes' if running else 'NO'}")
                flooded, seen = flood(url, base, small_zip, headkit.Limits().max_queued_runs)
                print(f"  {'ok' if flooded else 'WRONG'} flood of queued runs: {seen}")
                rounds[-1].attacks["flood of queued runs -> /train_head"] = (flooded, seen)
                stop_at = began + args.budget - 60
                while not job.done() and time.monotonic() < stop_at:
                    time.sleep(1)
                if not job.done():
                    print(f"  budget: asking it to stop ({last_status(job)})")
                    trainer.predict(api_name="/stop_training")
                try:
                    final = str(job.result(timeout=120)[0])
                except Exception as e:  # the run's own error (or a time-out) is its final status
                    final = f"{type(e).__name__}: {str(e)[:300]}"
                print(f"  final status: {final.rstrip('.')}; server RSS after it: {memory.rss() / 2**20:.0f} MiB")
                if not final.startswith(("✅ Trained", "Training stopped on request")):
                    failures.append(f"training: {final}")
                sizes = memory_runs(url, base, small_zip, args.memory_runs, memory) if args.memory_runs else []
                if sizes:
                    print(
                        "RSS after each run with the comparison fine-tune (MiB): "
                        + ", ".join(f"{m:.0f}" for m in sizes)
                    )
        finally:
            if server.poll() is not None:
                print(f"the server exited with code {server.returncode}:\n{(tmp / 'server.log').read_text()[-2000:]}")
            stop_server(server)
        log = (tmp / "server.log").read_text(errors="replace")
        payload_ran = (tmp / "payload-ran").exists()
        unexpected = [line for line in log.splitlines() if "unexpected error in" in line]  # app.py's LOGGER.exception
        print(f"server log: {len(unexpected)} unexpected error(s)" + "".join(f"\n  {u[:300]}" for u in unexpected[:5]))

    latencies = [s for r in rounds for s in r.latencies]
    failures += [f for r in rounds for f in r.failures]
    legit = args.rounds * args.concurrent
    failed = sum(len(r.failures) for r in rounds)  # one entry per failed call: an error or a wrong result
    outcomes = [o for r in rounds for o in r.attacks.values()]
    refused = sum(ok for ok, _ in outcomes)
    peak = max(rss for _, rss in memory.samples) / 2**20
    drift = 100 * (rounds[-1].rss_end - rounds[0].rss_end) / rounds[0].rss_end
    print(
        f"\nlegitimate compares failed: {failed}/{legit} (target 0); other legitimate calls failed: {len(failures) - failed}"
    )
    print(f"attacks refused with the right message: {refused}/{len(outcomes)} (target all)")
    if latencies:
        print(
            f"compare latency (imgsz {args.imgsz}): p50 {percentile(latencies, 50):.2f} s, p95 {percentile(latencies, 95):.2f} s"
        )
    print(
        f"peak server RSS: {peak:.0f} MiB (budget --max-peak-mb {args.max_peak_mb:.0f}; {len(memory.samples)} samples)"
    )
    print(
        f"RSS drift, end of round 1 -> end of round {args.rounds}: {rounds[0].rss_end / 2**20:.0f} -> "
        f"{rounds[-1].rss_end / 2**20:.0f} MiB, {drift:+.1f} % (target < {args.max_drift:.0f} %)"
    )
    print(f"code payload in the crafted head ran: {'YES' if payload_ran else 'no'} (target no)")
    runs_drift = 100 * (sizes[-1] - sizes[0]) / sizes[0] if len(sizes) > 1 else 0.0
    if sizes:
        print(
            f"RSS drift over {len(sizes)} runs with the fine-tune: {sizes[0]:.0f} -> {sizes[-1]:.0f} MiB, "
            f"{runs_drift:+.1f} % (target < {args.max_drift:.0f} %)"
        )
    missed = []
    if payload_ran:
        missed.append("the crafted head's code ran")
    if runs_drift >= args.max_drift:
        missed.append(f"RSS drift over the runs {runs_drift:+.1f} %")
    if failures:
        missed.append(f"{len(failures)} failed legitimate call(s)")
    if refused != len(outcomes):
        missed.append(f"{len(outcomes) - refused} attack(s) not refused by their limit")
    if peak > args.max_peak_mb:
        missed.append(f"peak RSS {peak:.0f} MiB")
    if drift >= args.max_drift:
        missed.append(f"RSS drift {drift:+.1f} %")
    if not running:
        missed.append("training ended before the compare phase did (raise --epochs)")
    print(f"\n{'FAIL: ' + '; '.join(missed) if missed else 'PASS'} ({time.monotonic() - began:.0f} s in all)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
