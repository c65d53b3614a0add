"""The soak's attacks (benchmarks/soak.py): each one function that sends the real requests to the app on loopback, as
a stranger would, and says for each request whether it was refused with the words of the limit that must refuse it.

The payloads are the ones the tests perform (tests/*attack_files.py, tests/video_files.py); this module only sends
them. An attack returns one `Outcome` per request: (held, what the caller saw). "Held" is a refusal naming the limit,
or for the few attacks whose fix is a bound rather than a refusal (the 20k-image COCO import is linear and may be
accepted; disk and Hub cache must stay within their limits), that bound measured from outside the server.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import Status

import headkit
from headkit.disk import tree_bytes

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from dataset_attack_files import (  # noqa: E402
    coco_of_tiny_images,
    json_files_each_under_the_limit,
    one_image_many_records,
)
from head_attack_files import make_channel_bomb_head, make_crafted_branch_head, make_metadata_flood_head  # noqa: E402
from hub_server import LoopbackHub  # noqa: E402
from video_files import playlist_naming, private_clip, resolution_bomb  # noqa: E402

PLATES = REPO.parent / "shared" / "datasets" / "license_plates"
PLATE_HEAD = REPO / "weights" / "license_plate.safetensors"
HEADS = ["license_plate"]
Outcome = tuple[bool, str]

WIDE_CLASSES = 50_000
HUGE_NAMES = 100_000
MERGED_HEADS = 9
ATTACK_IMGSZ = 4096
FLOOD_HEADS = 20  # finding 1: 20 uploads took the server from 948 to 4,614 MiB
COCO_RECORDS = 19_990  # finding 2: 19,999 images ran > 240 s per call (a zip holds at most 20,000 entries)
COCO_MAX_S = 180.0  # the linear import of 20k tiny images takes ~30 s of one core on a quiet 2-core machine
DISK_SESSIONS = 10  # finding 3: 10 sessions uploading at once wrote 7.9x max_server_mb
HUB_FILES = 6  # finding 4: six 150 MiB non-head files left 900 MiB in an uncounted cache
JSON_BOMBS = 3  # finding 6: 3 concurrent calls of 3 JSON files, each under the per-file limit, peaked at +4.7 GiB
LINE_SESSIONS = 9  # finding 7: 9 sessions queued 9 runs and a real visitor was refused
HUGE_SESSIONS = 10  # finding 9: joins with 9.5 MiB session ids (and as many at 1 MiB, under the body bound)
TRAIN_ARGS = (1, 160, 4, False, "head", False)  # epochs, imgsz, batch, keypoint trick, branch, fine-tune


@dataclass(frozen=True)
class Target:
    """The app under attack, and what the soak configured it with."""

    url: str
    base: str
    image: str  # bus.jpg
    jobs: Path  # HEADKIT_JOBS_DIR: what max_server_mb counts, with `served`
    served: Path
    limits: headkit.Limits
    server: psutil.Process
    collateral: list[str] = field(default_factory=list)  # legitimate calls an attack made fail (soak's failures)

    def client(self, address: str | None = None) -> Client:
        """A fresh session; `address`: as a visitor from there (X-Forwarded-For, which uvicorn honours on loopback)."""
        return Client(self.url, verbose=False, headers={"X-Forwarded-For": address} if address else None)

    def disk_bytes(self) -> int:
        return tree_bytes(self.jobs) + tree_bytes(self.served)


@dataclass(frozen=True)
class Attack:
    """One attack: `run()` sends its requests and returns an outcome per request; `heavy` ones run once per soak, one
    after another (in `issue_26_attacks`' order: the disk fill last, as it leaves the server's disk figure high for a
    few seconds and would refuse the others by max_server_mb instead of their own limits)."""

    name: str
    run: Callable[[], list[Outcome]]
    heavy: bool = False


def refusal(call: Callable[[], object], *words: str | tuple[str, ...]) -> Outcome:
    """Whether `call` was refused with a message holding every one of `words` (a tuple: any one of its words), and
    what the caller saw."""
    try:
        call()
    except AppError as e:
        held = all(any(w in str(e) for w in ((word,) if isinstance(word, str) else word)) for word in words)
        return held, f"refused: {str(e)[:300]}"
    except Exception as e:  # a crash or a dropped connection is a result to report, not a crash of the benchmark
        return False, f"{type(e).__name__}: {str(e)[:300]}"
    return False, "accepted"


def train_attempt(client: Client, target: Target, archive: Path, args: tuple, *words: str | tuple[str, ...]) -> Outcome:
    """A /train_head request that must be refused (with `words`) before it runs: one that is admitted instead (it
    reports progress or a place in line) is stopped at once and reported as accepted."""
    job = client.submit(target.base, handle_file(str(archive)), *args, api_name="/train_head")
    deadline = time.monotonic() + 300
    while not job.done() and time.monotonic() < deadline:
        if job.status().code in (Status.PROGRESS, Status.ITERATING) or job.outputs():
            client.predict(api_name="/stop_training")
            return False, f"accepted (then stopped): {str(job.outputs()[-1][0])[:200] if job.outputs() else ''}"
        time.sleep(0.25)
    return refusal(lambda: job.result(timeout=60), *words)


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


def compressible_zip(out: Path, *, files: int, mib: int) -> Path:
    """A deflated zip of `files` files of `mib` MiB each that unpack to what they declare, ~50x smaller packed (under
    the bomb check's 100x): per MiB, 20 KiB of random bytes then zeros. Written a MiB at a time."""
    noise = torch.randint(0, 256, (20 << 10,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    chunk = noise.numpy().tobytes() + bytes((1 << 20) - (20 << 10))
    with zipfile.ZipFile(out, "w", compresslevel=1) as zf:
        for n in range(files):
            info = zipfile.ZipInfo(f"fill/images/train/{n:03d}.jpg")
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as entry:
                for _ in range(mib):
                    entry.write(chunk)
    return out


# --- the attacks of earlier reviews -----------------------------------------------------------------------------------


def earlier_attacks(target: Target, tmp: Path, trainer: Client, small_zip: Path) -> tuple[list[Attack], list[str]]:
    """The nine attacks of the earlier soaks; loads the merge attacker's 9 session heads (failures: what went wrong)."""
    base, failures = target.base, []
    wide = widened(headkit.load_head(PLATE_HEAD), WIDE_CLASSES).save(tmp / "wide.safetensors")
    crafted = make_crafted_branch_head(tmp / "crafted.safetensors", marker=tmp / "payload-ran")
    bomb_head = make_channel_bomb_head(tmp / "channels.safetensors", channels=4000)
    bomb_video = resolution_bomb(tmp)
    coco_reuse = one_image_many_records(Path(target.image), tmp / "coco_reuse.zip", records=10_000)
    names_zip = copy_plates(tmp / "names", 2, 1, "".join(f"  - c{i}\n" for i in range(HUGE_NAMES)))
    merger = target.client()  # one session holding the 9 heads it merges every round
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

    def head(path: Path, *words: str | tuple[str, ...]) -> Callable[[], list[Outcome]]:
        client = target.client()
        return lambda: [
            refusal(lambda: client.predict(base, handle_file(str(path)), "", api_name="/load_head"), *words)
        ]

    def dataset(path: Path, *words: str) -> Callable[[], list[Outcome]]:
        client = target.client()
        return lambda: [refusal(lambda: client.predict(base, handle_file(str(path)), api_name="/load_dataset"), *words)]

    def merge_all() -> list[Outcome]:
        return [refusal(lambda: merger.predict(base, keys, True, False, 640, api_name="/merge"), "(max_heads)")]

    def compare_huge() -> list[Outcome]:
        image = handle_file(target.image)
        call = lambda: target.client().predict(base, image, HEADS, 0.25, 0.7, ATTACK_IMGSZ, api_name="/compare")  # noqa: E731
        return [refusal(call, "greater than maximum value")]

    def video_bomb() -> list[Outcome]:
        video = handle_file(str(bomb_video))
        call = lambda: target.client().predict(base, video, HEADS, 0.25, 0.7, 320, api_name="/compare_video")  # noqa: E731
        return [refusal(call, "(max_video_pixels)")]

    def second_run() -> list[Outcome]:
        return [train_attempt(trainer, target, small_zip, TRAIN_ARGS, "(max_queued_runs_per_client)")]

    attacks = [
        Attack("widened head (50,000 classes) -> /load_head", head(wide, "(max_classes)")),
        Attack(f"{HUGE_NAMES // 1000}k names -> /load_dataset", dataset(names_zip, "(max_classes)")),
        Attack(f"{MERGED_HEADS} heads -> /merge", merge_all),
        Attack(f"imgsz {ATTACK_IMGSZ} -> /compare", compare_huge),
        Attack(
            "code in branch rows -> /load_head", head(crafted, ("which is not a model layer", "nested deeper than"))
        ),
        Attack("4,000-channel head -> /load_head", head(bomb_head, "(max_head_mb)")),
        Attack("16000x16000 video -> /compare_video", video_bomb),
        Attack("COCO 10k records, 1 image -> /load_dataset", dataset(coco_reuse, "both name", "one image record")),
        Attack("second run of the training client -> /train_head", second_run),
    ]
    return attacks, failures


# --- attacks on the worker processes, admission and reservations ------------------------------------------------------


def metadata_flood(target: Target, tmp: Path) -> Attack:
    """Finding 1: 20 uploads of the plate head carrying ~3.7 MiB of nested empty lists in its metadata (a new file
    each, as each upload is), under an unknown key and under a known one: refused from the text, before parsing."""
    keys = [("notes", "metrics")[n % 2] for n in range(FLOOD_HEADS)]
    heads = [
        make_metadata_flood_head(tmp / f"flood{n}.safetensors", key=key, mib=3.7 + n / 1000)
        for n, key in enumerate(keys)
    ]
    words = {"notes": ("head metadata holds unknown keys ['notes']",), "metrics": ("'metrics' holds", "its schema")}

    def run() -> list[Outcome]:
        client, outcomes = target.client(), []
        for path, key in zip(heads, keys, strict=True):
            upload = handle_file(str(path))
            outcomes.append(
                refusal(lambda: client.predict(target.base, upload, "", api_name="/load_head"), *words[key])  # noqa: B023
            )
        return outcomes

    return Attack(f"head-metadata flood ({FLOOD_HEADS} x 3.7 MiB) -> /load_head", run)


def coco_20k(target: Target, tmp: Path) -> Attack:
    """Finding 2: a COCO folder of 19,990 tiny images, zipped (~7 MB). The fix is a linear import, not a refusal:
    held when the call returns (accepted with every image, or refused by a limit) within `COCO_MAX_S`."""
    folder = coco_of_tiny_images(tmp / "coco20k" / "export", records=COCO_RECORDS)
    archive = Path(shutil.make_archive(str(tmp / "coco20k"), "zip", folder.parent, folder.name))

    def run() -> list[Outcome]:
        client, started = target.client(), time.monotonic()
        try:
            summary = client.predict(target.base, handle_file(str(archive)), api_name="/load_dataset")[2]
            counts = {split: c["images"] for split, c in summary["splits"].items()}
            seen = f"accepted: images {counts}"
            held = sum(counts.values()) == COCO_RECORDS
        except AppError as e:
            seen, held = f"refused: {str(e)[:200]}", "(max_" in str(e)
        except Exception as e:  # a dropped connection or a crash is the result
            seen, held = f"{type(e).__name__}: {str(e)[:200]}", False
        seconds = time.monotonic() - started
        return [(held and seconds <= COCO_MAX_S, f"{seen} in {seconds:.0f} s (bound {COCO_MAX_S:.0f} s)")]

    return Attack(f"COCO of {COCO_RECORDS:,} images -> /load_dataset", run, heavy=True)


def disk_fill(target: Target, tmp: Path) -> Attack:
    """Finding 3: `DISK_SESSIONS` sessions upload at once a zip that unpacks to 60 % of the server's free disk
    allowance (random-ish files named .jpg: no dataset), so one fits and no two do (imports run
    `max_concurrent_imports` at a time). Held: every call refused, at least one by max_server_mb, and the server's
    folders, sampled every 20 ms from outside, never over max_server_mb. Then a legitimate compare every second
    until one succeeds: each one refused meanwhile is a failed legitimate call (`Target.collateral`)."""
    limit = target.limits.max_server_mb * 2**20
    each = max(32, int(0.6 * (limit - target.disk_bytes()) / 2**20))
    archive = compressible_zip(tmp / "fill.zip", files=4, mib=-(-each // 4))

    def run() -> list[Outcome]:
        peak, done = [target.disk_bytes()], threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], target.disk_bytes())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        outcomes = concurrently(
            DISK_SESSIONS,
            lambda: refusal(
                lambda: target.client().predict(target.base, handle_file(str(archive)), api_name="/load_dataset")
            ),
        )
        done.set()
        sampler.join()
        by_limit = sum("(max_server_mb)" in seen for _, seen in outcomes)
        within = peak[0] <= limit
        summary = (
            f"{sum(s.startswith('refused') for _, s in outcomes)}/{DISK_SESSIONS} refused, {by_limit} by max_server_mb; "
            f"peak on disk {peak[0] / 2**20:,.0f} MiB of {limit / 2**20:,.0f} ({DISK_SESSIONS} x {4 * -(-each // 4)} "
            f"MiB asked)"
        )
        refused = [seen.startswith("refused") and within and by_limit > 0 for _, seen in outcomes]
        summary += "; " + legitimate_compares_after(target, "the disk fills")
        return [(ok, f"{summary}; {seen[:160]}") for ok, (_, seen) in zip(refused, outcomes, strict=True)]

    return Attack(f"{DISK_SESSIONS} concurrent disk fills -> /load_dataset", run, heavy=True)


def hub_cache_fill(target: Target, hub: LoopbackHub, tmp: Path, mib: int) -> Attack:
    """Finding 4: `HUB_FILES` /load_head calls naming `mib` MiB files on a Hub that are not heads (each distinct).
    Held: each refused, and the visitors' Hub cache within max_hub_cache_mb after each download."""
    for n in range(HUB_FILES):
        junk = tmp / "hub-junk" / f"junk{n}.safetensors"
        junk.parent.mkdir(parents=True, exist_ok=True)
        with junk.open("wb") as f:
            f.write(f"not a head {n}".encode())
            f.truncate(mib << 20)  # a sparse file: no disk here, real bytes in the server's cache
        hub.add_file("stranger/junk", junk.name, junk)
    cache, bound = target.jobs / ".hub-cache", min(target.limits.max_hub_cache_mb, target.limits.max_server_mb)

    def run() -> list[Outcome]:
        client, outcomes = target.client(), []
        for n in range(HUB_FILES):
            ok, seen = refusal(
                lambda n=n: client.predict(
                    target.base, None, f"hf://stranger/junk/junk{n}.safetensors", api_name="/load_head"
                )
            )
            held = tree_bytes(cache) / 2**20
            outcomes.append(
                (
                    seen.startswith("refused") and held <= bound,
                    f"cache {held:,.0f} MiB (bound {bound:,.0f}); {seen[:160]}",
                )
            )
        return outcomes

    return Attack(f"Hub-cache fill ({HUB_FILES} x {mib} MiB) -> /load_head", run, heavy=True)


def training_at_1280x64(target: Target, small_zip: Path) -> Attack:
    """Finding 5: a run at 1,280 px, batch 64 (~15 GB by the finding's measure), from an address of its own (the
    soak's address holds its place with the training run): refused by max_train_mb before it trains."""
    args = (1, 1280, 64, False, "head", False)

    def run() -> list[Outcome]:
        client = target.client("203.0.113.64")
        return [train_attempt(client, target, small_zip, args, "(max_train_mb)")]

    return Attack("training at 1,280 x 64 -> /train_head", run)


def json_bombs(target: Target, tmp: Path) -> Attack:
    """Finding 6: `JSON_BOMBS` concurrent uploads, each of three COCO files holding just under max_json_values each
    (~40 MB a file): refused as one upload's JSON files together, before any is parsed."""
    strings = target.limits.max_json_values - 1_000
    archive = json_files_each_under_the_limit(Path(target.image), tmp / "three_json.zip", strings=strings)

    def run() -> list[Outcome]:
        return concurrently(
            JSON_BOMBS,
            lambda: refusal(
                lambda: target.client().predict(target.base, handle_file(str(archive)), api_name="/load_dataset"),
                "3 JSON files together",
                "(max_json_values)",
            ),
        )

    return Attack(f"{JSON_BOMBS} concurrent JSON bombs (3 x {strings:,} values) -> /load_dataset", run, heavy=True)


def line_fill(target: Target, small_zip: Path) -> Attack:
    """Finding 7: `LINE_SESSIONS` sessions from the address whose training run is going each ask for a run: each is
    refused by the address's one place; then a visitor from another address still gets a place in line (and leaves
    it with Stop before it trains)."""

    def run() -> list[Outcome]:
        outcomes = concurrently(
            LINE_SESSIONS,
            lambda: train_attempt(
                target.client(), target, small_zip, TRAIN_ARGS, "however many sessions", "(max_queued_runs_per_client)"
            ),
        )
        visitor = target.client("198.51.100.7")
        job = visitor.submit(target.base, handle_file(str(small_zip)), *TRAIN_ARGS, api_name="/train_head")
        placed = wait_for_training(job, timeout=120)
        stopped = str(visitor.predict(api_name="/stop_training"))
        try:
            final = str(job.result(timeout=60)[0])
        except Exception as e:  # the stopped run's message may come as an error
            final = f"{type(e).__name__}: {str(e)[:200]}"
        seen = f"placed: {placed}; Stop: {stopped[:80]}; final: {final[:120]}"
        return [*outcomes, (placed and "before it started" in (stopped + final).lower(), seen)]

    return Attack(f"{LINE_SESSIONS} sessions from one address -> /train_head", run)


def playlist(target: Target, tmp: Path) -> Attack:
    """Finding 8: a 100-byte HLS playlist naming a clip of the server's (`file:/abs/path.ts`), sent as .m3u8, .ts and
    .mkv: refused without reading it, and no server path in what comes back."""
    (tmp / "server-private").mkdir(parents=True, exist_ok=True)
    secret = private_clip(tmp / "server-private" / "secret.ts")
    files = [playlist_naming(secret, tmp / f"clip.{suffix}") for suffix in ("m3u8", "ts", "mkv")]

    def run() -> list[Outcome]:
        client, outcomes = target.client(), []
        for path in files:
            ok, seen = refusal(
                lambda p=path: client.predict(
                    target.base, handle_file(str(p)), HEADS, 0.25, 0.7, 320, api_name="/compare_video"
                ),
                "not a video ffmpeg can read",
            )
            leaked = str(secret.parent) in seen or str(tmp) in seen
            outcomes.append((ok and not leaked, ("SERVER PATH SHOWN; " if leaked else "") + seen))
        return outcomes

    return Attack("playlist naming a server file -> /compare_video", run)


def huge_session_ids(target: Target) -> Attack:
    """Finding 9: joins of /resume posted with 9.5 MiB session ids (refused 413 by the body bound) and 1 MiB ones
    (refused 400 by the session-id check), `HUGE_SESSIONS` of each, straight to Gradio's queue route."""
    event = next(d for d in target.client().config["dependencies"] if d["api_name"] == "resume")

    def join(http: httpx.Client, session: str) -> httpx.Response:
        body = {"data": ["", target.base], "fn_index": event["id"], "session_hash": session}
        return http.post("/queue/join", json=body)

    def run() -> list[Outcome]:
        outcomes = []
        with httpx.Client(base_url=f"{target.url}/gradio_api", timeout=120) as http:
            for n in range(HUGE_SESSIONS):
                for size, status, words in ((19 * 2**19, 413, "request body over"), (2**20, 400, "a session id of")):
                    reply = join(http, f"{n:02d}" + "x" * size)
                    ok = reply.status_code == status and words in reply.text
                    outcomes.append((ok, f"{reply.status_code} {reply.text[:160]}"))
        return outcomes

    return Attack(f"huge session ids ({HUGE_SESSIONS} x 9.5 MiB, {HUGE_SESSIONS} x 1 MiB) -> /queue/join", run)


def issue_26_attacks(target: Target, tmp: Path, hub: LoopbackHub, small_zip: Path, hub_file_mb: int) -> list[Attack]:
    return [
        metadata_flood(target, tmp),
        coco_20k(target, tmp),
        hub_cache_fill(target, hub, tmp, hub_file_mb),
        training_at_1280x64(target, small_zip),
        json_bombs(target, tmp),
        line_fill(target, small_zip),
        playlist(target, tmp),
        huge_session_ids(target),
        disk_fill(target, tmp),
    ]


# --- the flood of queued runs, and helpers ----------------------------------------------------------------------------


def flood(target: Target, train_zip: Path) -> Outcome:
    """`max_queued_runs` + 1 visitors, each from an address of its own, queue a run each behind the running one: the
    last must be refused by max_queued_runs; then every waiting run is stopped before it trains."""
    queued = target.limits.max_queued_runs
    clients = [target.client(f"198.51.100.{100 + n}") for n in range(queued + 1)]
    jobs = []
    for client in clients[:queued]:
        jobs.append(client.submit(target.base, handle_file(str(train_zip)), *TRAIN_ARGS, api_name="/train_head"))
        if not wait_for_training(jobs[-1], timeout=120):  # waiting in line reports progress too
            return False, f"queued run {len(jobs)} did not report: {last_status(jobs[-1])}"
    ok, seen = train_attempt(clients[-1], target, train_zip, TRAIN_ARGS, "(max_queued_runs)")
    stopped = [str(client.predict(api_name="/stop_training")) for client in clients[:queued]]
    finals = []
    for job in jobs:
        try:
            finals.append(str(job.result(timeout=60)[0]))
        except Exception as e:  # a stopped waiting run may end with its message as an error
            finals.append(f"{type(e).__name__}: {str(e)[:200]}")
    never_trained = all("before it started" in text.lower() for text in [*finals, *stopped])
    return ok and never_trained, f"{seen[:200]}; waiting runs stopped before training: {never_trained}"


def legitimate_compares_after(target: Target, attack: str, *, within_s: float = 180.0) -> str:
    """A legitimate compare every second from a fresh session until one succeeds (at most `within_s`): each refused
    one goes to `target.collateral`; says how long the server refused them."""
    started, refused, seen = time.monotonic(), 0, ""
    while time.monotonic() - started < within_s:
        try:
            target.client().predict(target.base, handle_file(target.image), HEADS, 0.25, 0.7, 320, api_name="/compare")
            break
        except Exception as e:  # a legitimate call refused: the attack's collateral
            refused, seen = refused + 1, f"{type(e).__name__}: {str(e)[:300]}"
            target.collateral.append(f"compare after {attack} (+{time.monotonic() - started:.0f} s): {seen}")
            time.sleep(1)
    return f"legitimate compares right after: refused {refused} time(s) over {time.monotonic() - started:.0f} s" + (
        f" ({seen[:200]})" if refused else ""
    )


def concurrently(n: int, call: Callable[[], Outcome]) -> list[Outcome]:
    """`call` from `n` threads released together; their outcomes."""
    outcomes: list[Outcome] = []
    lock, start = threading.Lock(), threading.Barrier(n)

    def one() -> None:
        start.wait()
        outcome = call()
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


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
