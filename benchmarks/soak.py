"""Soak: a training run, legitimate compares and every known resource attack at once, against the app on loopback;
then many small training runs one after another, for the server's memory.

Starts `app.py` in a child process on 127.0.0.1 (offline but for a Hub on loopback, base from `--base`, disk limits
`--max-server-mb` and `--max-hub-cache-mb`), samples the resident memory (RSS) of the server process alone and of
the server with its children (training and import workers, ffmpeg) every 0.25 s for the whole run, warms the base up
with one compare, then:
1. starts a training run through gradio_client on a small zip of real plate images (24 train / 8 val);
2. while it runs, `--rounds` rounds of `--concurrent` legitimate compares (bus.jpg, head license_plate; one
   gradio_client Client per thread), each of which must report the base's detections unchanged, with the attacks
   (benchmarks/soak_attacks.py) sent among them from other clients. Every round: a valid head widened to 50,000
   classes, a data.yaml of 100,000 names, a merge of 9 heads, a compare at 4096 px, a branch head whose rows carry
   code, a 1 KB head declaring 4,000-channel inputs, a 2-frame 16000 x 16000 video, a COCO zip naming one image in
   10,000 records, a second run of the training client, 20 heads carrying 3.7 MiB of nested lists in their metadata,
   a run at 1,280 px x batch 64, 9 sessions of the training client's address asking for runs (then a visitor from
   another address must still get a place), a playlist naming a server file (as .m3u8, .ts, .mkv) and 20 joins with
   9.5 MiB / 1 MiB session ids. In round 1 only, one after another: a COCO zip of 19,990 images (must import in
   bounded time), 6 Hub addresses of `--hub-file-mb` MiB non-head files, 3 concurrent uploads of three JSON files
   each just under max_json_values, and last 10 concurrent uploads each unpacking to 60 % of the free disk allowance
   (then a legitimate compare every second until one succeeds);
3. a flood of queued runs: max_queued_runs + 1 visitors from distinct addresses each queue a run behind the training
   one; the last is refused (max_queued_runs), and every waiting run is then stopped before it trains; the training
   run is then stopped;
4. `--memory-runs` small training runs (1 epoch, `--memory-imgsz`, 4 + 2 images; every `--finetune-every`-th with
   the comparison fine-tune), one after another: RSS after each, of the server alone and with its children.
Targets: no failed legitimate call, every attack held (refused with its limit's words, or within its bound), the
code payload never ran, the server's own peak RSS under `--max-peak-mb` (its children are held by their own caps,
`max_worker_mb` each, enforced by `headkit.worker`: their peak is printed, not budgeted here), the server's own RSS
drift from the first training run of step 4 to the last under `--max-drift` percent, and from the end of round 1 (the
heavy attacks' round) to the end of the last round under `--max-round-drift` percent.
Exits 1 if a target is missed, 2 if the server does not start.

    python benchmarks/soak.py [--rounds 5] [--concurrent 10] [--memory-runs 20] [--max-peak-mb 6144]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from gradio_client import Client, handle_file

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from load_compare import (  # noqa: E402
    DEFAULT_BASE,
    HOST,
    free_port,
    percentile,
    run_together,
    start_server,
    stop_server,
    wait_until_ready,
)
from soak_attacks import (  # noqa: E402
    HEADS,
    Attack,
    LoopbackHub,
    Outcome,
    Target,
    copy_plates,
    earlier_attacks,
    flood,
    issue_26_attacks,
    last_status,
    wait_for_training,
)

import headkit  # noqa: E402

MIB = 2**20


@dataclass
class Memory:
    """RSS of the server process alone and with its children, sampled in a thread: (monotonic s, own, total)."""

    process: psutil.Process
    interval: float = 0.25
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def rss(self) -> tuple[int, int]:
        """(the server's own RSS, with every child's) in bytes."""
        own = self.process.memory_info().rss
        total = own
        for child in self.process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):  # a child that ended between listing and reading
                pass
        return own, total

    def peak(self, since: float = float("-inf"), *, own: bool = False) -> int:
        return max((s[1] if own else s[2] for s in self.samples if s[0] >= since), default=0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append((time.monotonic(), *self.rss()))
            except psutil.NoSuchProcess:
                return

    def __enter__(self) -> Memory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


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


@dataclass
class Round:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    attacks: dict[str, list[Outcome]] = field(default_factory=dict)
    wall: float = 0.0
    rss_end: tuple[int, int] = (0, 0)


def run_round(
    target: Target, args: argparse.Namespace, expected: int, attacks: list[Attack], chain: list[Attack]
) -> Round:
    """`args.concurrent` compares released together, the attacks started among them 0.5 s apart, and the `chain`
    of attacks one after another beside them."""
    result, lock = Round(), threading.Lock()
    start = threading.Barrier(args.concurrent + len(attacks) + bool(chain) + 1)

    def user() -> None:
        client = Client(target.url, verbose=False)
        start.wait()
        try:
            seconds, found, line = compare(client, target.base, target.image, args.imgsz)
        except Exception as e:  # reported as a failed legitimate call
            with lock:
                result.failures.append(f"{type(e).__name__}: {str(e)[:300]}")
            return
        with lock:
            result.latencies.append(seconds)
            if found != expected or line != clean_line(expected):
                result.failures.append(f"{found} base detections (expected {expected}); line {line!r}")

    def attacker(delay: float, *attacks: Attack) -> None:
        start.wait()
        time.sleep(delay)
        for attack in attacks:
            try:
                outcomes = attack.run()
            except Exception as e:  # the benchmark's own error in an attack: reported as not held
                outcomes = [(False, f"the attack itself failed: {type(e).__name__}: {str(e)[:300]}")]
            with lock:
                result.attacks[attack.name] = outcomes

    threads = [threading.Thread(target=user) for _ in range(args.concurrent)]
    threads += [threading.Thread(target=attacker, args=(0.5 * (i + 1), a)) for i, a in enumerate(attacks)]
    threads += [threading.Thread(target=attacker, args=(0.5, *chain))] if chain else []
    result.wall = run_together(threads, start)
    return result


def memory_runs(
    target: Target, train_zip: Path, args: argparse.Namespace, memory: Memory, failures: list[str]
) -> list[tuple[int, ...]]:
    """`args.memory_runs` small runs one after another from one client: (own RSS, with children, peak with children
    during the run) after each that trained, in bytes; a run that did not train goes to `failures`, and the next
    one starts."""
    client, sizes = Client(target.url, verbose=False), []
    for n in range(1, args.memory_runs + 1):
        finetune = bool(args.finetune_every) and n % args.finetune_every == 0
        started = time.monotonic()
        archive = handle_file(str(train_zip))
        try:
            status = str(
                client.predict(
                    target.base, archive, 1, args.memory_imgsz, 4, False, "head", finetune, api_name="/train_head"
                )[0]  # fmt: skip
            )
        except Exception as e:  # a refused or failed run: reported, and the phase goes on
            status = f"{type(e).__name__}: {str(e)[:300]}"
        if not status.startswith("✅ Trained"):
            failures.append(f"training run {n}: {status[:300]}")
            print(f"  run {n:2d} FAILED: {status[:300]}")
            continue
        time.sleep(1)
        own, total = memory.rss()
        sizes.append((own, total, memory.peak(started)))
        print(
            f"  run {n:2d}{' +fine-tune' if finetune else '           '} {time.monotonic() - started:5.1f} s: "
            f"server {own / MIB:,.0f} MiB, with children {total / MIB:,.0f} MiB, "
            f"peak with children during it {sizes[-1][2] / MIB:,.0f} MiB"
        )
    return sizes


def drift(first: int, last: int) -> float:
    return 100 * (last - first) / first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=10, help="legitimate compares per round")
    parser.add_argument("--imgsz", type=int, default=320, help="compare image size")
    parser.add_argument(
        "--epochs", type=int, default=100, help="of the training run (imgsz 320, batch 8); stopped after the flood"
    )
    parser.add_argument("--max-peak-mb", type=float, default=6144.0, help="peak RSS budget of the server alone, MiB")
    parser.add_argument(
        "--max-drift", type=float, default=5.0, help="the server's own RSS drift over the training runs, percent"
    )
    parser.add_argument(
        "--max-round-drift", type=float, default=10.0, help="the server's own RSS drift over the rounds, percent"
    )
    parser.add_argument("--memory-runs", type=int, default=20, help="small training runs, for the RSS drift")
    parser.add_argument("--memory-imgsz", type=int, default=160, help="image size of those runs")
    parser.add_argument("--finetune-every", type=int, default=2, help="every n-th run also fine-tunes; 0: none")
    parser.add_argument("--max-server-mb", type=int, default=2048, help="the server's disk limit (max_server_mb)")
    parser.add_argument("--max-hub-cache-mb", type=int, default=400, help="the visitors' Hub cache limit")
    parser.add_argument("--hub-file-mb", type=int, default=150, help="size of each non-head file on the Hub")
    args = parser.parse_args()
    from ultralytics.utils import ASSETS

    began = time.monotonic()
    print(
        f"soak: {args.rounds} rounds x {args.concurrent} compares (bus.jpg, heads {HEADS}, imgsz {args.imgsz}) with "
        f"the attacks, during a training run ({args.epochs} epochs, imgsz 320, batch 8); then {args.memory_runs} "
        f"training runs; base {args.base.name}"
    )
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="headkit-soak-") as tmp_name, LoopbackHub(Path(tmp_name) / "hub") as hub:
        tmp, port = Path(tmp_name), free_port()
        env = {
            "PYTHONUNBUFFERED": "1",
            "HF_ENDPOINT": hub.url,
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp / "hf_home"),
            "HF_TOKEN": "",
            "HEADKIT_MAX_SERVER_MB": str(args.max_server_mb),
            "HEADKIT_MAX_HUB_CACHE_MB": str(args.max_hub_cache_mb),
        }
        server = start_server(args.base.resolve(), tmp, port, env=env)
        target = Target(
            url=f"http://{HOST}:{port}",
            base=str(args.base.resolve()),
            image=str(ASSETS / "bus.jpg"),
            jobs=tmp / "jobs",
            served=tmp / "gradio" / "headkit",
            limits=headkit.Limits.from_mapping(env),
            server=psutil.Process(server.pid),
        )
        memory = Memory(target.server)
        rounds: list[Round] = []
        sizes: list[tuple[int, ...]] = []
        flooded: Outcome = (False, "not run")
        running = False
        try:
            with memory:
                try:
                    wait_until_ready(server, target.url, timeout=300)
                except (RuntimeError, TimeoutError) as e:
                    print(f"FAIL: {e}\n{(tmp / 'server.log').read_text()[-3000:]}")
                    return 2
                print(f"server ready in {time.monotonic() - began:.0f} s")
                warm, expected, line = compare(Client(target.url, verbose=False), target.base, target.image, args.imgsz)
                print(f"warm-up compare: {warm:.2f} s, {expected} base detections; {line}")
                if line != clean_line(expected):
                    failures.append(f"warm-up: line {line!r}")
                trainer = Client(target.url, verbose=False)
                train_zip = copy_plates(tmp / "soak_plates", 24, 8)
                job = trainer.submit(
                    target.base, handle_file(str(train_zip)), args.epochs, 320, 8, False, api_name="/train_head"
                )
                started = time.monotonic()
                if not wait_for_training(job, timeout=240):
                    failures.append(f"training did not start: {last_status(job)}")
                print(f"training started ({time.monotonic() - started:.0f} s to its first progress report)")
                small_zip = copy_plates(tmp / "small_plates", 4, 2)
                prepared = time.monotonic()
                light, trouble = earlier_attacks(target, tmp, trainer, small_zip)
                failures += trouble
                new = issue_26_attacks(target, tmp, hub, small_zip, args.hub_file_mb)
                light += [a for a in new if not a.heavy]
                heavy = [a for a in new if a.heavy]
                print(
                    f"attack files made in {time.monotonic() - prepared:.0f} s: {len(light)} attacks every round, "
                    f"{len(heavy)} once\n"
                )

                for r in range(1, args.rounds + 1):
                    result = run_round(target, args, expected, light, heavy if r == 1 else [])
                    result.rss_end = memory.rss()
                    rounds.append(result)
                    outcomes = [o for seen in result.attacks.values() for o in seen]
                    p50 = f"{percentile(result.latencies, 50):.2f} s" if result.latencies else "n/a"
                    print(
                        f"round {r}: {args.concurrent - len(result.failures)}/{args.concurrent} compares ok in "
                        f"{result.wall:.1f} s (p50 {p50}); attacks held {sum(ok for ok, _ in outcomes)}/"
                        f"{len(outcomes)} requests; RSS at end: server {result.rss_end[0] / MIB:,.0f} MiB, with "
                        f"children {result.rss_end[1] / MIB:,.0f} MiB; training: {last_status(job)}"
                    )
                    for name, seen in result.attacks.items():
                        held = sum(ok for ok, _ in seen)
                        wrong = [s for ok, s in seen if not ok]
                        example = wrong[0] if wrong else seen[0][1]
                        print(f"  {'ok   ' if not wrong else 'WRONG'} {name}: {held}/{len(seen)}; {example[:240]}")
                    for failure in result.failures[:3]:
                        print(f"  failed compare: {failure}")
                running = not job.done()
                print(f"\ntraining still running when the compare phase ended: {'yes' if running else 'NO'}")
                flooded = flood(target, small_zip)
                print(f"  {'ok' if flooded[0] else 'WRONG'} flood of queued runs: {flooded[1]}")
                if not job.done():
                    trainer.predict(api_name="/stop_training")
                try:
                    final = str(job.result(timeout=300)[0])
                except Exception as e:  # the run's own error (or a time-out) is its final status
                    final = f"{type(e).__name__}: {str(e)[:300]}"
                own, total = memory.rss()
                print(
                    f"  training run: {final.rstrip('.')[:200]}; RSS after it: server {own / MIB:,.0f} MiB, with "
                    f"children {total / MIB:,.0f} MiB\n"
                )
                if not final.startswith(("✅ Trained", "Training stopped on request")):
                    failures.append(f"training: {final}")
                if args.memory_runs:
                    print(f"{args.memory_runs} training runs, one after another (imgsz {args.memory_imgsz}, 1 epoch):")
                    sizes = memory_runs(target, small_zip, args, memory, failures)
        finally:
            if server.poll() is not None:
                print(f"the server exited with code {server.returncode}:\n{(tmp / 'server.log').read_text()[-2000:]}")
            stop_server(server)
        log = (tmp / "server.log").read_text(errors="replace")
        payload_ran = (tmp / "payload-ran").exists()
        unexpected = [line for line in log.splitlines() if "unexpected error in" in line]  # webapp's LOGGER.exception
        print(f"server log: {len(unexpected)} unexpected error(s)" + "".join(f"\n  {u[:300]}" for u in unexpected[:5]))
    failures += target.collateral
    return report(args, rounds, flooded, running, sizes, memory, failures, payload_ran, began)


def report(args, rounds, flooded, running, sizes, memory, failures, payload_ran, began) -> int:
    """Print the figures and the verdict; the exit status."""
    latencies = [s for r in rounds for s in r.latencies]
    compares = [f for r in rounds for f in r.failures]
    failures = failures + compares
    by_attack: dict[str, list[Outcome]] = {}
    for r in rounds:
        for name, seen in r.attacks.items():
            by_attack.setdefault(name, []).extend(seen)
    by_attack["flood of queued runs -> /train_head"] = [flooded]
    outcomes = [o for seen in by_attack.values() for o in seen]
    held = sum(ok for ok, _ in outcomes)
    legit = len(rounds) * args.concurrent + 1 + len(sizes) + 1  # compares, warm-up, memory runs, the training run
    print(
        f"\nlegitimate calls failed: {len(failures)} (compares {len(compares)}/{len(rounds) * args.concurrent}; "
        f"{legit} legitimate compares and runs in all, besides head uploads and listings) (target 0)"
    )
    for failure in failures[:5]:
        print(f"  {failure[:300]}")
    print(f"attack requests held (refused by their limit, or within their bound): {held}/{len(outcomes)} (target all)")
    for name, seen in by_attack.items():
        print(f"  {sum(ok for ok, _ in seen):3d}/{len(seen):<3d} {name}")
    if latencies:
        print(
            f"compare latency (imgsz {args.imgsz}): p50 {percentile(latencies, 50):.2f} s, "
            f"p95 {percentile(latencies, 95):.2f} s"
        )
    peak, peak_own = memory.peak() / MIB, memory.peak(own=True) / MIB
    print(
        f"peak RSS: server alone {peak_own:,.0f} MiB (budget --max-peak-mb {args.max_peak_mb:,.0f}); server and "
        f"children {peak:,.0f} MiB (each worker capped at max_worker_mb {headkit.Limits().max_worker_mb:,.0f} by default; "
        f"{len(memory.samples)} samples)"
    )
    missed = []
    if rounds:
        (own1, total1), (own2, total2) = rounds[0].rss_end, rounds[-1].rss_end
        compare_drift = drift(own1, own2)
        print(
            f"RSS drift, end of round 1 -> end of round {len(rounds)}: server {own1 / MIB:,.0f} -> {own2 / MIB:,.0f} "
            f"MiB, {compare_drift:+.1f} % (target < {args.max_round_drift:.0f} %); with children {total1 / MIB:,.0f} -> "
            f"{total2 / MIB:,.0f} MiB, {drift(total1, total2):+.1f} % (the training run grows meanwhile)"
        )
        if compare_drift >= args.max_round_drift:
            missed.append(f"server RSS drift over the rounds {compare_drift:+.1f} %")
    if len(sizes) > 1:
        own = [s[0] for s in sizes]
        total = [s[1] for s in sizes]
        runs_drift = drift(own[0], own[-1])
        print(
            f"RSS drift over {len(sizes)} training runs: server {own[0] / MIB:,.0f} -> {own[-1] / MIB:,.0f} MiB, "
            f"{runs_drift:+.1f} % (range {min(own) / MIB:,.0f}-{max(own) / MIB:,.0f}; target < {args.max_drift:.0f} "
            f"%); with children {total[0] / MIB:,.0f} -> {total[-1] / MIB:,.0f} MiB, "
            f"{drift(total[0], total[-1]):+.1f} %; peak during a run {max(s[2] for s in sizes) / MIB:,.0f} MiB"
        )
        if runs_drift >= args.max_drift:
            missed.append(f"server RSS drift over the runs {runs_drift:+.1f} %")
    print(f"code payload in the crafted head ran: {'YES' if payload_ran else 'no'} (target no)")
    if payload_ran:
        missed.append("the crafted head's code ran")
    if failures:
        missed.append(f"{len(failures)} failed legitimate call(s)")
    if held != len(outcomes):
        missed.append(f"{len(outcomes) - held} attack request(s) not held")
    if peak_own > args.max_peak_mb:
        missed.append(f"server peak RSS {peak_own:,.0f} MiB")
    if not running:
        missed.append("training ended before the compare phase did (raise --epochs)")
    if args.memory_runs and len(sizes) < args.memory_runs:
        missed.append(f"{len(sizes)} of {args.memory_runs} training runs")
    print(f"\n{'FAIL: ' + '; '.join(missed) if missed else 'PASS'} ({time.monotonic() - began:.0f} s in all)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
