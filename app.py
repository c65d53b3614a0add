"""headkit's web app (also a Hugging Face Space): compare, train, convert, merge and share extra YOLO detection heads.

Run `python app.py` (base from HEADKIT_BASE or `--base`; default the embedded yolov8s-fall base in weights/bases/,
no network needed). Every event is also an API
endpoint named after the headkit function it calls; see the README for gradio_client examples.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import logging
import os
import threading
from pathlib import Path
from typing import Any

# A public server never pip-installs at run time (Ultralytics would, e.g. on an odd upload); set before it is imported.
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import gradio as gr
import pandas as pd
import torch
from PIL import Image
from ultralytics.utils import ASSETS

import headkit
from headkit import server
from headkit.budget import COST_VS_HEAD, TOO_LONG_ADVICE
from headkit.comparing import MODELS as COMPARE_MODELS
from headkit.runs import Failed, Finished, SavedFineTune, SavedHead, Stopped, TrainingRequest, Waiting

LOGGER = logging.getLogger("headkit.app")
SETTINGS = server.Settings.from_env()
CLI = argparse.ArgumentParser(description="headkit web app", epilog="Gradio reads GRADIO_SERVER_NAME/PORT too.")
CLI.add_argument(
    "--base",
    help="base model: a local .pt or base .safetensors, a bare name like yolov8n.pt, or hf://owner/repo/file.pt",
)
BASE = (CLI.parse_known_args()[0].base if __name__ == "__main__" else None) or SETTINGS.base
BASES = list(dict.fromkeys([BASE, *SETTINGS.bases]))
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_HEADS = server.shipped_names(WEIGHTS_DIR)
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# First a composite headkit makes (tools/make_demo_assets.py): bus.jpg with a drawn plate the shipped head finds
EXAMPLES = [str(EXAMPLES_DIR / "bus_plate.jpg"), str(ASSETS / "bus.jpg"), str(ASSETS / "zidane.jpg")]
VIDEO_EXAMPLES = [str(EXAMPLES_DIR / "bus_plate.mp4")]
GPU = SETTINGS.zero_gpu or torch.cuda.is_available()
INFERENCE_DEVICE = "cpu" if SETTINGS.zero_gpu else None  # ZeroGPU attaches a GPU only inside spaces.GPU calls
TRAIN_OPTIONS = {} if GPU else {"workers": 0}  # on CPU, loader processes would only compete with training
MAX_UPLOAD = "500mb"
LIMITS = SETTINGS.limits
USER_ERRORS = (ValueError, OSError, LookupError, headkit.UntrustedSourceError)
METRIC_COLUMNS = ["class", "P", "R", "mAP50", "mAP50-95"]
METRIC_KEYS = {
    "metrics/mAP50(B)": "mAP50",
    "metrics/mAP50-95(B)": "mAP50-95",
    "metrics/precision(B)": "P",
    "metrics/recall(B)": "R",
}
METRIC_LEGEND = {  # metric -> (colour, its name in the plot's label)
    "mAP50": ("#1f77b4", "blue"),
    "mAP50-95": ("#ff7f0e", "orange"),
    "P": ("#2ca02c", "green (precision)"),
    "R": ("#d62728", "red (recall)"),
}
METRIC_COLOURS = {name: colour for name, (colour, _) in METRIC_LEGEND.items()}
DETECTION_COLUMNS = ["model", "origin", "name", "class_id", "confidence", "xyxy"]
INTRO = """# headkit — teach YOLO new classes without touching old weights
A new class gets its own Detect head, trained on the base's frozen trunk and merged beside the base head: every base
detection stays exactly as it was. **Compare** base / custom / merged on an image, **Train** a head on your dataset,
convert boxes to **keypoints** for small objects, **Merge & share** the result."""
NO_BASE = (  # plain text: it shows in a toast and in the banner alike
    "Base model {base} is not available: {error}. Point the app at a local checkpoint: "
    "HEADKIT_BASE=/path/to/model.pt python app.py (or --base /path/to/model.pt, or put the file in a folder named "
    "by HEADKIT_WEIGHTS_DIR)."
)
TRAIN_HELP = """Upload a detection dataset as a **.zip**: YOLO (Ultralytics or Roboflow layout, with data.yaml or classes.txt)
or COCO JSON (Roboflow, COCO, CVAT or Label Studio exports: any JSON file with images, annotations and categories).
Without a val split, one is set aside from the train images (the same images every time) and the summary says so.
Its summary and a few labelled images appear first. Training runs one job at a time: while another runs, your place in
the queue shows on the progress bar. Stop ends the run after the current batch (or takes a waiting run out of the
line); nothing is saved then."""

FINETUNE_HELP = (
    "After the head, train a copy of the whole model on the same data, epochs and size, as a plain Ultralytics "
    f"fine-tune does (about {COST_VS_HEAD:g}× the head's time). Compare then shows it beside the merged model, with "
    "how many of the base's detections each keeps: the fine-tune forgets the base's classes, the merged model keeps "
    "them all. Its weights stay in your session as safetensors."
)
KEY_HELP = (
    "This browser keeps a key that names your training runs and heads, so a run goes on when you close the page and "
    "reopening it shows the run (or its result) again. Scripts: `key, *_ = client.predict('', BASE, "
    "api_name='/resume')` gets a key (or pass one to pick up its run). Keep it secret: it is the only way to them."
)
VIDEO_COLUMNS = ["class", "detections", "frames", "objects"]
VIDEO_HELP = (
    f"Up to {LIMITS.max_video_frames:,} frames (about {LIMITS.max_video_frames // 30} s at 30 fps) of up to "
    f"{LIMITS.max_video_pixels / 1e6:.1f} MP each (4K UHD fits), {LIMITS.max_video_s / 60:g} min of work at most; "
    "larger videos are refused — trim or resize them first. The merged model (base + the heads chosen above, with the "
    "settings above) runs on every frame; one video at a time, each frame takes about as long as one Compare. "
    "Objects are followed across frames with Ultralytics' ByteTrack: **objects** counts distinct people or things "
    "per class, **detections** counts boxes over all frames (one person in 30 frames: 1 object, 30 detections)."
)
WEBCAM_SECONDS = 60
WEBCAM_HELP = (
    "The merged model on your camera, about two frames a second (each frame has the image limits of Compare; "
    f"{WEBCAM_SECONDS} s of work per start). Frames are processed and dropped, never stored. For the side-by-side "
    "comparison, take a snapshot with the camera of the Compare image above."
)
MERGE_HELP = """A merged `.pt` with several heads needs **headkit installed** to load (it holds headkit's `ConcatHead`;
without headkit, Ultralytics would try to `pip install headkit`). **TorchScript** and **ONNX** files run with plain
`ultralytics.YOLO(path)` anywhere, with the merged class names."""
BRANCH_HELP = (
    "Head only: a Detect head on the frozen trunk — smallest (≈4 MB) and cheapest (merged ≈1.13× the base's "
    "latency on YOLOv8s). Neck branch: the head also trains its own copy of the neck — on the plates benchmark "
    "mAP50 0.885 vs 0.642 for head only and 0.844 for a full fine-tune (10 epochs, 320 px); ≈12 MB, merged ≈1.53× "
    "the base's latency. Base detections stay exact either way."
)

# --- the server's state: bases loaded once, session folders, user keys, the line of training runs -----------------
SERVED_DIR = Path(gr.utils.get_upload_folder()) / "headkit"  # outputs are served from here only
USER_KEYS = server.UserKeys(Path(SETTINGS.jobs_dir).parent / f"{Path(SETTINGS.jobs_dir).name}-keys")
# the sweep removes old jobs, served outputs and forgotten keys; max_server_mb bounds all of them together
JOBS = server.JobRoot(SETTINGS.jobs_dir, max_age_s=SETTINGS.job_max_age_s, served_dir=SERVED_DIR, keys=USER_KEYS)
RUNS = server.Runs(slots=1, limits=LIMITS)  # training runs outlive their pages; one trains at a time
BASE_MODELS = server.BaseCache(BASES, device=INFERENCE_DEVICE, limits=LIMITS)
OWNERS: dict[str, str] = {}  # session hash -> the job name of the user key it presented


def comparer(base: str) -> headkit.Comparer:
    """The cached base with its merged variants; why it is unavailable, as the banner says it."""
    try:
        return BASE_MODELS.comparer(base)
    except server.BaseUnavailable as e:
        raise gr.Error(NO_BASE.format(base=e.base, error=e.error)) from e


def user_errors(fn):
    """Bad input of any kind reaches the user as a gr.Error with headkit's message; the app keeps serving."""

    def translate(e: Exception) -> gr.Error:
        if isinstance(e, gr.Error):
            return e
        if not isinstance(e, USER_ERRORS):
            LOGGER.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"{e}" if isinstance(e, USER_ERRORS) else f"unexpected error ({type(e).__name__}: {e})")

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise translate(e) from e

        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise translate(e) from e

    return call


def job(request: gr.Request | None) -> server.Job:
    """The job of this session: its user key's, once the page or script presented one, else the session's own."""
    session = getattr(request, "session_hash", None)
    return JOBS.job(OWNERS.get(session, session) if session else None)


def roomy_job(request: gr.Request | None) -> server.Job:
    """The session's job, refused (with the limit) when its files fill its allowance, or the server's fill its."""
    work = job(request)
    work.check_disk(LIMITS)
    JOBS.check_disk(LIMITS)
    return work


def served(path: Path) -> str:
    return str(JOBS.serve(path))


def heads_for(keys: list[str] | None, request: gr.Request | None) -> list[headkit.Head]:
    """The chosen heads, counted before any is read: each hf:// key is a download of up to max_head_mb."""
    LIMITS.check("max_heads", len(keys or []), "heads chosen (each one is loaded, some downloaded)")
    return [server.load_head_key(k, shipped_dir=WEIGHTS_DIR, job=job(request)) for k in keys or []]


def finetuned_for(keys: list[str] | None, request: gr.Request | None) -> Path | None:
    """The comparison fine-tune kept with the first chosen session head that has one."""
    work = job(request)
    names = [k.removeprefix(server.SESSION_PREFIX) for k in keys or [] if k.startswith(server.SESSION_PREFIX)]
    return next((path for name in names if (path := work.finetuned(name))), None)


def upload(path: str | None, suffix: str, what: str) -> Path:
    if not path:
        raise gr.Error(f"upload {what} first")
    server.refuse_pickle(path)
    if Path(path).suffix.lower() != suffix:
        raise gr.Error(f"{Path(path).name}: expected {what} ({suffix} file)")
    return Path(path)


def _str_keys(names: dict) -> dict[str, str]:
    return {str(k): v for k, v in names.items()}


# --- named outputs: a handler returns a View; its event's outputs are the components of the same names ------------


class View:
    """A handler's outputs by name. Fields left at their default keep what the page shows (`gr.skip()`); an event
    lists its outputs with `targets(...)`, which takes the components named like the fields, in field order."""

    def values(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    @classmethod
    def targets(cls, *holders) -> list:
        found = []
        for f in dataclasses.fields(cls):
            found.append(next(getattr(h, f.name) for h in holders if hasattr(h, f.name)))
        return found


def _kept():
    return dataclasses.field(default_factory=gr.skip)


@dataclasses.dataclass
class HeadsView(View):
    """The head listing and the three head pickers (Compare, Merge, Push)."""

    heads_json: Any = _kept()
    heads_md: Any = _kept()
    compare_heads: Any = _kept()
    merge_heads: Any = _kept()
    push_heads: Any = _kept()


@dataclasses.dataclass
class TrainView(View):
    """What the Train tab shows (and the pickers a saved head joins)."""

    status: Any = _kept()
    curve: Any = _kept()
    head_file: Any = _kept()
    metrics: Any = _kept()
    report: Any = _kept()
    plots: Any = _kept()
    compare_heads: Any = _kept()
    merge_heads: Any = _kept()
    push_heads: Any = _kept()


@dataclasses.dataclass
class CompareView(View):
    base_image: Any = _kept()
    custom_image: Any = _kept()
    merged_image: Any = _kept()
    detections: Any = _kept()
    base_check: Any = _kept()
    compare_json: Any = _kept()
    finetuned_image: Any = _kept()


# --- Compare -------------------------------------------------------------------------------------------------------


def head_listing(base: str, request: gr.Request, *, reset: bool = False, select: str | None = None) -> HeadsView:
    """The heads for `base` (`reset`: pickers open with what fits; `select`: Compare shows this head alone, e.g. the
    one just trained, so its classes appear on the next click)."""
    try:
        model = comparer(base).base
    except gr.Error:  # the banner already says why (load_model): on page load a toast would repeat it
        return HeadsView(heads_json=[], heads_md="")
    entries = server.list_heads(model, shipped_dir=WEIGHTS_DIR, job=job(request))
    lines = [f"**Base** `{server.display_name(base)}`: {len(model.names)} classes ({', '.join(model.names.values())})"]
    lines += [f"- **unavailable** `{e.key}`: {e.reason}" for e in entries if not e.available]
    lines += [f"- `{e.key}`: {e.kind}" for e in entries if e.available and e.kind != "head only"]
    lines += [
        f"- `{e.key}`: base fingerprint **assumed, not verified** (imported from a legacy .pth, which records none)"
        for e in entries
        if not e.fingerprint_verified
    ]
    choices = [(e.label, e.key) for e in entries if e.available]
    if select in {key for _, key in choices}:
        compare_heads = gr.Dropdown(choices=choices, value=[select])
    elif reset:
        shipped = [e.key for e in entries if e.available and e.origin == "shipped"]
        compare_heads = gr.Dropdown(choices=choices, value=server.opening_heads(shipped))
    else:
        compare_heads = gr.Dropdown(choices=choices)
    others = [gr.Dropdown(choices=choices) for _ in range(2)]
    return HeadsView([e.to_dict() for e in entries], "\n".join(lines), compare_heads, *others)


@user_errors
def load_model(base: str):
    """Load (once) the chosen base; returns its status, or what is missing and how to fix it."""
    try:
        model = comparer(base).base
    except gr.Error as e:
        return e.message, {"base": base, "loaded": False, "error": e.message}
    info = {"base": base, "loaded": True, "names": _str_keys(model.names), "fingerprint": headkit.fingerprint(model)}
    return "", info


@user_errors
def list_heads(base: str, request: gr.Request):
    return head_listing(base, request, reset=True).values()


@user_errors
def load_head(base: str, file: str | None, address: str, request: gr.Request):
    address = (address or "").strip()
    if not file and not address.startswith("hf://"):  # the address box never names a file on this server
        raise gr.Error(
            f"'{address}' is not a Hub address; upload a head (.safetensors) or give hf://owner/repo/head.safetensors"
        )
    gr.Info(f"added {server.add_head(file or address, roomy_job(request))}")
    return head_listing(base, request).values()


@user_errors
def compare(base: str, image: str | None, heads: list[str], conf: float, iou: float, imgsz: int, request: gr.Request):
    if not image:
        raise gr.Error("give an image: upload one or pick an example")
    result = comparer(base).compare(
        image,
        heads_for(heads, request),
        labels=heads or [],
        conf=conf,
        iou=iou,
        imgsz=int(imgsz),
        finetuned=finetuned_for(heads, request),
    )
    folder = JOBS.new_output_folder(LIMITS)
    images = {name: _save_image(result.images[name], folder / f"{name}.jpg") for name in COMPARE_MODELS}
    return CompareView(
        base_image=images["base"],
        custom_image=images["custom"],
        merged_image=images["merged"],
        detections=pd.DataFrame([d.to_dict() for d in result.detections], columns=DETECTION_COLUMNS),
        base_check=f"{result.summary()}  \n{result.retention()}  \n{result.timing()}",
        compare_json=result.to_dict(),
        finetuned_image=images["finetuned"],
    ).values()


def _save_image(pixels, path: Path) -> str | None:
    if pixels is None:
        return None
    Image.fromarray(pixels).save(path, quality=90)
    return str(path)


@user_errors
def compare_video(
    base: str,
    video: str | None,
    heads: list[str],
    conf: float,
    iou: float,
    imgsz: int,
    request: gr.Request,
    progress=gr.Progress(),  # noqa: B008 (Gradio's progress tracker is injected this way)
):
    """The merged model on every frame of a video: the annotated video (H.264 mp4) and detections per class."""
    if not video:
        raise gr.Error("give a video: upload an .mp4, .webm, .mov or .avi file")
    model = comparer(base).video_model(heads_for(heads, request), int(imgsz))
    progress(0, desc="reading the video")
    result = headkit.annotate_video(
        model,
        video,
        JOBS.new_output_folder(LIMITS) / "merged.mp4",
        conf=conf,
        iou=iou,
        imgsz=int(imgsz),
        track=True,
        progress=lambda done, total: progress(done / total, desc=f"frame {done} of {total}"),
        limits=LIMITS,
    )
    table = pd.DataFrame(result.table(), columns=VIDEO_COLUMNS)
    found = sum(row["detections"] for row in result.counts.values())
    objects = sum(row["objects"] for row in result.counts.values())
    line = (
        f"{result.frames} frames at {result.fps:.3g} fps; {found} detections by the merged model, "
        f"{objects} distinct objects tracked"
    )
    return str(result.path), table, line, result.to_dict()


@user_errors
def compare_webcam(
    base: str, frame: str | None, heads: list[str], conf: float, iou: float, imgsz: int, request: gr.Request
):
    """One camera frame through the merged model Compare caches; Compare's image limits apply to it."""
    if not frame:
        return None
    found = comparer(base).detect(frame, heads_for(heads, request), conf=conf, iou=iou, imgsz=int(imgsz))
    return found.plot()[..., ::-1]  # pixels were checked from the frame's header before it was decoded


# --- Train ---------------------------------------------------------------------------------------------------------


@user_errors
def load_dataset(base: str, archive: str | None, request: gr.Request):
    summary = headkit.load_dataset(
        upload(archive, ".zip", "a dataset zip"),
        work_dir=roomy_job(request).file("datasets"),
        base_names=comparer(base).base.names.values(),
    )
    counts = {split: c.images for split, c in summary.splits.items()}
    public = {k: v for k, v in summary.to_dict().items() if k not in ("root", "yaml_path")}
    return dataset_markdown(public), server.label_previews(summary), public, counts


def dataset_markdown(summary: dict) -> str:
    rows = [
        f"| {s} | {c['images']} | {c['labelled']} | {c['boxes']} | "
        + ", ".join(f"{k}: {v}" for k, v in c["per_class"].items())
        + " |"
        for s, c in summary["splits"].items()
    ]
    text = f"**Classes:** {', '.join(summary['names'].values())}\n\n| split | images | labelled | boxes | per class |\n"
    text += "|---|---|---|---|---|\n" + "\n".join(rows)
    return text + "".join(f"\n- **warning:** {w}" for w in summary["warnings"])


def run_estimate(base: str, train_images: int, val_images: int, epochs: int, imgsz: int, finetune: bool):
    return server.estimate_run(
        comparer(base).base, train_images, val_images, epochs=int(epochs), imgsz=int(imgsz), finetune=finetune,
        device="gpu" if GPU else "cpu",
    )  # fmt: skip


@user_errors
def estimate_training(base: str, counts: dict | None, epochs: int, imgsz: int, batch: int, finetune: bool = False):
    if not counts:
        return "Upload a dataset to see how long training takes."
    expected = run_estimate(base, counts["train"], counts.get("val", 0), epochs, imgsz, finetune)
    text = f"Estimated training time: {expected.describe()}."
    if finetune:
        text += f" (The head, then the comparison fine-tune: about {COST_VS_HEAD:g}× the head's time.)"
    if expected.seconds > LIMITS.max_train_s:
        text += f"\n\n**Too long for this server** (at most {LIMITS.max_train_s / 3600:g} h): {TOO_LONG_ADVICE}"
    if SETTINGS.zero_gpu:
        try:
            text += f" Fits one ZeroGPU call ({server.zero_gpu_duration(expected, SETTINGS.zero_gpu_max_s)} s)."
        except ValueError as e:
            text += f"\n\n**Too long for ZeroGPU:** {e}"
    return text


def _gpu_seconds(request: TrainingRequest) -> int:
    return int(request.gpu_seconds)


def train_on_gpu(request: TrainingRequest):
    """A run's work inside one spaces.GPU call (ZeroGPU lends the GPU per call; what it yields streams back)."""
    yield from server.streamed(request, BASE_MODELS.model(request.base))


if SETTINGS.zero_gpu:
    import spaces  # available on ZeroGPU Spaces only

    train_on_gpu = spaces.GPU(duration=_gpu_seconds)(train_on_gpu)


def perform_run(request: TrainingRequest, stop, report) -> None:
    """The work of a run (`headkit.runs.Runs.start`): in this process, or inside one ZeroGPU call."""
    if SETTINGS.zero_gpu:  # Stop reaches the GPU process through the job's stop marker (stop_training)
        for event in train_on_gpu(request):
            report(event)
    else:
        server.perform(request, BASE_MODELS.model(request.base), stop, report)


@user_errors
def train_head(
    base: str,
    archive: str | None,
    epochs: int,
    imgsz: int,
    batch: int,
    keypoint_trick: bool,
    branch: str = "head",
    finetune: bool = False,
    request: gr.Request = None,
    progress=gr.Progress(),  # noqa: B008 (Gradio finds its progress tracker by this default)
):
    work, model = roomy_job(request), comparer(base).base
    LIMITS.check("max_imgsz", int(imgsz), "training image size (pixels)")
    RUNS.admit(work.path)  # before the dataset is unpacked; `start` checks again
    summary = headkit.load_dataset(
        upload(archive, ".zip", "a dataset zip"), work_dir=work.file("datasets"), base_names=model.names.values()
    )
    expected = run_estimate(
        base, summary.splits["train"].images, summary.splits["val"].images, epochs, imgsz, bool(finetune)
    )
    server.check_fits(expected, LIMITS)
    plan = TrainingRequest(
        base=base,
        data=str(summary.yaml_path),
        job_dir=str(work.path),
        name=Path(archive).stem,
        epochs=int(epochs),
        imgsz=int(imgsz),
        batch=int(batch),
        branch=branch if branch in headkit.BRANCH_CHOICES else "head",
        keypoint_trick=bool(keypoint_trick),
        finetune=bool(finetune),
        options=tuple(TRAIN_OPTIONS.items()),
        gpu_seconds=server.zero_gpu_duration(expected, SETTINGS.zero_gpu_max_s) if SETTINGS.zero_gpu else 0,
    )
    run = RUNS.start(work.path, plan, perform_run)
    yield from shown_training(run.follow(), base, request, progress=progress)


def shown_training(events, base: str, request: gr.Request, *, progress=None):
    """The Train tab's outputs (TrainView values) for a run's events, live or replayed for a reopened page."""
    progress = (lambda *_, **__: None) if progress is None else progress
    history: list[dict] = []
    report: dict | None = None  # set once the head is saved; a fine-tune may follow
    for event in events:
        if isinstance(event, Waiting):
            progress(0, desc=f"waiting for the training slot ({event.ahead} ahead)")
            yield TrainView(status="Waiting for the training slot (another run is going)…").values()
        elif isinstance(event, headkit.TrainProgress):
            progress(event.fraction, desc=f"{'fine-tune, ' if report else ''}epoch {event.epoch}/{event.epochs}")
            if event.stage == "epoch" and report is None:
                history += [
                    {"epoch": event.epoch, "metric": name, "value": event.metrics.get(key, 0.0)}
                    for key, name in METRIC_KEYS.items()
                ]
                yield TrainView(
                    status=f"Epoch {event.epoch}/{event.epochs} done.", curve=pd.DataFrame(history)
                ).values()
            elif event.stage == "epoch":
                status = (
                    f"Head `{report['head']}` saved. Fine-tuning the whole model for comparison: epoch "
                    f"{event.epoch}/{event.epochs} done."
                )
                yield TrainView(status=status).values()
        elif isinstance(event, SavedHead):
            view = trained(base, event, request, history)
            report = view.report
            if event.finetune_next:
                view.status += " Now fine-tuning the whole model for comparison…"
            yield view.values()
        elif isinstance(event, SavedFineTune):
            report = report | {"finetune": {"mAP50": event.map50, "seconds": round(event.seconds, 1)}}
            status = (
                f"✅ Trained `{report['head']}`, and the whole model fine-tuned the usual way in "
                f"{event.seconds:.0f} s (val mAP50 {event.map50:.3f}): Compare shows it beside the merged model "
                "when this head is chosen."
            )
            yield TrainView(status=status, report=report).values()
        elif isinstance(event, Stopped):
            why = f"{event.message[0].upper()}{event.message[1:]}"
            if report and report.get("finetune") is None and event.message == server.ON_REQUEST:
                why = "Fine-tune stopped on request"
            saved_note = f"the head `{report['head']}` is saved" if report else "no head was saved"
            yield TrainView(status=f"{why}; {saved_note}.").values()
        elif isinstance(event, Failed):
            raise event.fresh_error()
        elif isinstance(event, Finished):
            return


def trained(base: str, record: SavedHead, request: gr.Request, history: list[dict]) -> TrainView:
    """Show the saved head everywhere at once (from the run's record: live, or replayed)."""
    key = f"{server.SESSION_PREFIX}{record.path.stem}"
    listing = head_listing(base, request, select=key)
    return TrainView(
        status=f"✅ Trained `{key}` in {record.seconds:.0f} s; it is now selected in Compare.",
        curve=pd.DataFrame(history),
        head_file=served(record.path),
        metrics=pd.DataFrame([{"class": k, **v} for k, v in record.metrics.items()], columns=METRIC_COLUMNS),
        report=record.summary | {"names": _str_keys(record.names), "head": key},
        plots=[(served(p), p.stem) for p in record.plots if p.is_file()],
        compare_heads=listing.compare_heads,
        merge_heads=listing.merge_heads,
        push_heads=listing.push_heads,
    )


@user_errors
def resume(
    key: str | None,
    base: str,
    request: gr.Request,
    progress=gr.Progress(),  # noqa: B008 (Gradio finds its progress tracker by this default)
):
    """Use the user key (a new one when empty) for this session and show its training run, following it if it runs."""
    key = (key or "").strip() or USER_KEYS.issue()
    OWNERS[request.session_hash] = USER_KEYS.owner(key)
    run = RUNS.get(job(request).path)
    if run is None:
        listing = head_listing(base, request)
        view = TrainView(status="No training run for this key yet.", compare_heads=listing.compare_heads,
                         merge_heads=listing.merge_heads, push_heads=listing.push_heads)  # fmt: skip
        yield key, *view.values()
        return
    for outputs in shown_training(run.follow(), base, request, progress=progress):
        yield key, *outputs


def resume_page(
    key: str | None,
    base: str,
    request: gr.Request,
    progress=gr.Progress(),  # noqa: B008 (Gradio finds its progress tracker by this default)
):
    """On page load: the key the browser kept (a fresh one if it is unknown here), then as `resume`."""
    try:
        USER_KEYS.owner(key or "")
    except PermissionError:
        key = None
    for key_now, *outputs in resume(key, base, request, progress):
        yield key_now, key_now, *outputs


@user_errors
def stop_training(request: gr.Request):
    """Stop this key's run: a waiting one leaves the line now, a running one stops after its batch."""
    work = job(request)
    stopped = RUNS.stop(work.path)
    if SETTINGS.zero_gpu and "running" in stopped:  # the run trains in a ZeroGPU process: tell it by file
        work.request_stop()
    if stopped and "running" not in stopped:
        return "Stopped before it started (it was waiting for the training slot); nothing was trained."
    return "Stopping after the current batch…" if stopped else "No training run of yours is going."


# --- Keypoint converter, Merge & share -----------------------------------------------------------------------------


@user_errors
def convert_to_keypoints(archive: str | None, request: gr.Request):
    source = upload(archive, ".zip", "a dataset zip")
    work = roomy_job(request).folder("keypoints")
    dataset = headkit.load_dataset(source, work_dir=work / "detect")
    converted = headkit.convert_to_keypoints(dataset.root, work / f"{source.stem}-keypoints")
    result = job(request).archive(converted.root, converted.root.name)
    return served(result), {"splits": converted.splits, "kpt_shape": [1, 3], "file": result.name}


@user_errors
def merge(
    base: str,
    heads: list[str],
    keep_base_head: bool,
    onnx: bool,
    imgsz: int,
    torchscript: bool = False,
    request: gr.Request = None,
):
    if not heads:
        raise gr.Error("choose at least one head to merge")
    exported = headkit.export_merged(
        comparer(base).base,
        heads_for(heads, request),
        roomy_job(request).folder("merged"),
        keep_base_head=keep_base_head,
        formats=("pt", *(["torchscript"] if torchscript else []), *(["onnx"] if onnx else [])),
        imgsz=int(imgsz),
    )
    info = {
        "files": [f.name for f in exported.files],
        "names": _str_keys(exported.names),
        "needs_headkit": [f.name for f in exported.needs_headkit],
    }
    return [served(f) for f in exported.files], info


@user_errors
def push_head(
    base: str,
    head: str | None,
    repo_id: str,
    token: str,
    example: str | None,
    request: gr.Request,
    oauth_token: gr.OAuthToken | None = None,
):
    if not head:
        raise gr.Error("choose the head to push")
    chosen = heads_for([head], request)
    picture = comparer(base).compare(example or EXAMPLES[0], chosen, labels=[head]).images["merged"]
    token = (token or "").strip() or (oauth_token.token if oauth_token else None)
    if not token:  # the server's own HF_TOKEN is never lent to a visitor
        raise gr.Error(
            "pushing needs your own Hub token: sign in with Hugging Face, or paste a token with write access "
            "(huggingface.co/settings/tokens); this server's token is never used for visitors"
        )
    url = headkit.push_head(chosen[0], repo_id, token=token, example_image=picture, use_env_token=False)
    return f"✅ Pushed to [{repo_id}]({url})", {"repo_id": repo_id, "commit_url": url}


# --- the page: each tab built by its own function, its events wired beside its components --------------------------


@dataclasses.dataclass
class Page:
    """What the tabs share: the page, the chosen base, the browser's user key, and the three head pickers (made
    up front, unrendered, and placed by their tabs: a trained or added head joins them all)."""

    demo: gr.Blocks
    base: gr.Dropdown
    banner: gr.Markdown
    base_info: gr.JSON
    browser_key: gr.BrowserState
    compare_heads: gr.Dropdown
    merge_heads: gr.Dropdown
    push_heads: gr.Dropdown


def head_pickers() -> dict[str, gr.Dropdown]:
    opening = server.opening_heads(SHIPPED_HEADS)  # before the base is loaded: the listing then checks they fit
    return {
        "compare_heads": gr.Dropdown(
            SHIPPED_HEADS,
            value=opening,
            multiselect=True,
            allow_custom_value=True,
            label="Heads",
            info="shipped, trained in this session, or hf://owner/repo/head.safetensors",
            elem_id="compare-heads",
            render=False,
        ),
        "merge_heads": gr.Dropdown(
            SHIPPED_HEADS, multiselect=True, allow_custom_value=True, label="Heads", render=False
        ),
        "push_heads": gr.Dropdown(SHIPPED_HEADS, value=None, allow_custom_value=True, label="Head", render=False),
    }


@dataclasses.dataclass
class CompareTab:
    """The Compare tab's components; CompareView's and HeadsView's field names are among them."""

    image: gr.Image
    conf: gr.Slider
    iou: gr.Slider
    imgsz: gr.Slider
    heads_md: gr.Markdown
    heads_json: gr.JSON
    base_image: gr.Image
    custom_image: gr.Image
    merged_image: gr.Image
    finetuned_image: gr.Image
    base_check: gr.Markdown
    detections: gr.Dataframe
    compare_json: gr.JSON


def compare_tab(page: Page) -> CompareTab:
    with gr.Row():
        with gr.Column():
            image = gr.Image(
                type="filepath",
                image_mode=None,
                label="Image",
                sources=["upload", "webcam", "clipboard"],
                height=360,
                elem_id="in-image",
            )
            gr.Examples(
                EXAMPLES,
                inputs=[image],
                label="Examples (shipped with Ultralytics) — the first with a synthetic plate drawn by headkit",
            )
        with gr.Column():
            page.compare_heads.render()
            conf = gr.Slider(0.01, 1.0, value=0.25, step=0.01, label="Confidence")
            iou = gr.Slider(0.1, 1.0, value=0.7, step=0.05, label="IoU (NMS)")
            imgsz = gr.Slider(160, LIMITS.max_imgsz, value=640, step=32, label="Image size")
            run_compare = gr.Button("Compare", variant="primary")
            heads_md = gr.Markdown()
            with gr.Accordion("Add a head", open=False):
                head_upload = gr.File(label="Head (.safetensors; .pt pickles are refused)", type="filepath")
                head_address = gr.Textbox(label="…or Hub address", placeholder="hf://owner/repo/head.safetensors")
                add = gr.Button("Add head")
    with gr.Row():
        base_image = gr.Image(label="Base only", interactive=False, elem_id="out-base")
        custom_image = gr.Image(label="Custom: trunk + selected heads", interactive=False, elem_id="out-custom")
        merged_image = gr.Image(label="Merged: base + selected heads", interactive=False, elem_id="out-merged")
        finetuned_image = gr.Image(
            label="Naive fine-tune (when trained with the head)", interactive=False, elem_id="out-finetuned"
        )
    base_check = gr.Markdown(elem_id="base-check")
    detections = gr.Dataframe(pd.DataFrame(columns=DETECTION_COLUMNS), label="Detections", interactive=False)
    with gr.Accordion("Result as JSON", open=False):
        compare_json = gr.JSON()
    settings = [page.compare_heads, conf, iou, imgsz]  # what every Compare event takes after its image or video
    video_section(page, settings)
    webcam_section(page, settings)
    with gr.Accordion("Heads as JSON", open=False):
        heads_json = gr.JSON()
    tab = CompareTab(image, conf, iou, imgsz, heads_md, heads_json, base_image, custom_image, merged_image,
                     finetuned_image, base_check, detections, compare_json)  # fmt: skip

    run_compare.click(
        compare,
        [page.base, image, *settings],
        CompareView.targets(tab),
        api_name="compare",
        concurrency_id="inference",
        concurrency_limit=4,
    )
    listing = HeadsView.targets(tab, page)
    gr.on([page.demo.load, page.base.change], load_model, [page.base], [page.banner, page.base_info],
          api_name="load_model").then(list_heads, [page.base], listing, api_name="list_heads")  # fmt: skip
    add.click(load_head, [page.base, head_upload, head_address], listing, api_name="load_head")
    return tab


def video_section(page: Page, settings: list) -> None:
    with gr.Accordion("Video: the merged model on every frame", open=False):
        gr.Markdown(VIDEO_HELP)
        with gr.Row():
            video_in = gr.Video(label="Video", sources=["upload"], height=300, elem_id="in-video")
            video_out = gr.Video(label="Merged model, annotated", interactive=False, height=300, elem_id="out-video")
        gr.Examples(VIDEO_EXAMPLES, inputs=[video_in], label="Example (the composite above, panned)")
        run_video = gr.Button("Run on video", variant="primary")
        video_line = gr.Markdown()
        video_counts = gr.Dataframe(
            pd.DataFrame(columns=VIDEO_COLUMNS), label="Detections per class", interactive=False
        )
        video_json = gr.JSON(visible=False)
    run_video.click(
        compare_video,
        [page.base, video_in, *settings],
        [video_out, video_counts, video_line, video_json],
        api_name="compare_video",
        concurrency_id="video",
        concurrency_limit=1,
    )


def webcam_section(page: Page, settings: list) -> None:
    with gr.Accordion("Webcam: the merged model, live", open=False):
        gr.Markdown(WEBCAM_HELP)
        with gr.Row():
            webcam = gr.Image(
                label="Camera",
                sources=["webcam"],
                streaming=True,
                type="filepath",  # checked from its header (pixels) before it is decoded
                image_mode=None,
                height=300,
                elem_id="webcam",
            )
            webcam_out = gr.Image(label="Merged model", interactive=False, height=300, elem_id="out-webcam")
    webcam.stream(
        compare_webcam,
        [page.base, webcam, *settings],
        [webcam_out],
        api_name="compare_webcam",
        stream_every=0.5,
        time_limit=WEBCAM_SECONDS,
        concurrency_id="inference",
        concurrency_limit=4,
    )


@dataclasses.dataclass
class TrainTab:
    """The Train tab's components; the names of TrainView's fields are among them."""

    status: gr.Markdown
    curve: gr.LinePlot
    head_file: gr.File
    metrics: gr.Dataframe
    report: gr.JSON
    plots: gr.Gallery
    user_key: gr.Textbox


def train_tab(page: Page) -> TrainTab:
    gr.Markdown(TRAIN_HELP)
    counts = gr.State()
    with gr.Row():
        dataset = gr.File(label="Dataset (.zip)", type="filepath", elem_id="dataset")
        with gr.Column():
            dataset_md = gr.Markdown()
            previews = gr.Gallery(label="Label previews", columns=4, height=240)
    with gr.Accordion("Dataset summary as JSON", open=False):
        dataset_json = gr.JSON()
    with gr.Row():
        epochs = gr.Slider(1, 300, value=30, step=1, label="Epochs", elem_id="epochs")
        imgsz = gr.Slider(160, LIMITS.max_imgsz, value=640, step=32, label="Image size", elem_id="train-size")
        batch = gr.Slider(1, 64, value=16, step=1, label="Batch", elem_id="batch")
        branch = gr.Radio(
            [("Head only", "head"), ("Neck branch", "neck")],
            value="head",
            label="What the new head owns",
            info=BRANCH_HELP,
            elem_id="branch",
        )
        keypoint_trick = gr.Checkbox(
            label="Keypoint trick (small objects)", info="train on box centres as keypoints, keep the box head"
        )
        finetune = gr.Checkbox(
            label="Also fine-tune the whole model the usual way, for comparison", info=FINETUNE_HELP, elem_id="finetune"
        )
    estimate = gr.Markdown("Upload a dataset to see how long training takes.")
    with gr.Row():
        train = gr.Button("Train", variant="primary")
        stop = gr.Button("Stop", variant="stop")
    status = gr.Markdown()
    curve = gr.LinePlot(
        x="epoch",
        y="value",
        color="metric",
        # Gradio cuts the plot's own legend off under the axis, so the colours are fixed and named in the label
        color_map=METRIC_COLOURS,
        label="Validation metrics per epoch: "
        + " · ".join(f"{name} {colour_name}" for name, (_, colour_name) in METRIC_LEGEND.items()),
        height=300,
    )
    with gr.Row():
        head_file = gr.File(label="Trained head (.safetensors)", elem_id="head-out")
        metrics = gr.Dataframe(pd.DataFrame(columns=METRIC_COLUMNS), label="Metrics (val)", interactive=False)
    plots = gr.Gallery(label="Ultralytics plots", columns=4, height=260)
    with gr.Accordion("Training result as JSON", open=False):
        report = gr.JSON()
    with gr.Accordion("Your key: runs and heads that outlive this page", open=False):
        gr.Markdown(KEY_HELP)
        with gr.Row():
            user_key = gr.Textbox(label="User key", type="password", elem_id="user-key", scale=4)
            use_key = gr.Button("Use this key", scale=1)
    tab = TrainTab(status, curve, head_file, metrics, report, plots, user_key)
    shown = TrainView.targets(tab, page)

    dataset.upload(
        load_dataset, [page.base, dataset], [dataset_md, previews, dataset_json, counts], api_name="load_dataset"
    )
    gr.on(
        [counts.change, epochs.change, imgsz.change, batch.change, finetune.change],
        estimate_training,
        [page.base, counts, epochs, imgsz, batch, finetune],
        [estimate],
        api_name="estimate_training",
    )
    train.click(
        train_head,
        [page.base, dataset, epochs, imgsz, batch, keypoint_trick, branch, finetune],
        shown,
        api_name="train_head",
        # RUNS keeps the one training slot and its bounded line: a request only starts or follows a run, and a
        # client over its share must be refused at once, not left waiting behind another user's run in Gradio's queue
        concurrency_limit=None,
        show_progress_on=[status],
    )
    stop.click(stop_training, None, [status], api_name="stop_training", concurrency_limit=None)
    use_key.click(resume, [user_key, page.base], [user_key, *shown], api_name="resume", show_progress_on=[status])
    page.demo.load(  # a reopened page shows (and follows) its key's run
        resume_page,
        [page.browser_key, page.base],
        [page.browser_key, user_key, *shown],
        api_visibility="private",
        show_progress_on=[status],
    )
    user_key.change(lambda key: key, [user_key], [page.browser_key], api_visibility="private")
    return tab


def keypoint_tab() -> None:
    gr.Markdown("Box labels → one keypoint per box at its centre, for the keypoint trick in other tools.")
    archive = gr.File(label="Dataset (.zip)", type="filepath")
    convert = gr.Button("Convert", variant="primary")
    with gr.Row():
        converted = gr.File(label="Keypoint dataset (.zip)")
        summary = gr.JSON(label="Summary")
    convert.click(convert_to_keypoints, [archive], [converted, summary], api_name="convert_to_keypoints")


def merge_tab(page: Page) -> None:
    with gr.Row():
        with gr.Column():
            gr.Markdown("### Merge\nOne model: base classes first, then each head's, in the order chosen.")
            page.merge_heads.render()
            keep = gr.Checkbox(value=True, label="Keep the base head")
            torchscript = gr.Checkbox(value=False, label="Also export TorchScript (runs with plain Ultralytics)")
            onnx = gr.Checkbox(value=False, label="Also export ONNX (runs with plain Ultralytics)")
            export_size = gr.Slider(160, LIMITS.max_imgsz, value=640, step=32, label="TorchScript / ONNX image size")
            gr.Markdown(MERGE_HELP)
            merge_button = gr.Button("Merge", variant="primary")
            merged_files = gr.File(label="Merged model", file_count="multiple")
            merged_json = gr.JSON(label="Classes")
        with gr.Column():
            gr.Markdown(
                "### Push a head to the Hub\nOne commit: the .safetensors head, its model card and an example prediction."
            )
            page.push_heads.render()
            repo = gr.Textbox(label="Repository", placeholder="your-name/plate-head")
            if SETTINGS.oauth:  # a Space with `hf_oauth: true`
                gr.LoginButton()
            token = gr.Textbox(
                label="Hub token (write)",
                type="password",
                info="your own token"
                + (" (or sign in with Hugging Face)" if SETTINGS.oauth else "")
                + "; this server's token is never used for visitors",
            )
            example = gr.Image(
                type="filepath",
                image_mode=None,
                label="Example image for the card (default: bus.jpg)",
                sources=["upload", "clipboard"],
                height=240,
            )
            push = gr.Button("Push", variant="primary")
            pushed = gr.Markdown()
            pushed_json = gr.JSON(visible=False)
    merge_button.click(
        merge,
        [page.base, page.merge_heads, keep, onnx, export_size, torchscript],
        [merged_files, merged_json],
        api_name="merge",
        concurrency_id="inference",
        concurrency_limit=4,
    )
    push.click(
        push_head, [page.base, page.push_heads, repo, token, example], [pushed, pushed_json], api_name="push_head"
    )


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="headkit", delete_cache=(3600, int(SETTINGS.job_max_age_s))) as demo:
        gr.Markdown(INTRO)
        banner = gr.Markdown()
        # the user key, in this browser's local storage (outside the tabs: it must load with the page)
        browser_key = gr.BrowserState(None, storage_key="headkit-user-key", secret=SETTINGS.browser_secret)
        with gr.Row():
            base = gr.Dropdown([(server.display_name(b), b) for b in BASES], value=BASE, label="Base model")
            base_info = gr.JSON(label="Base", visible=False)
        page = Page(demo, base, banner, base_info, browser_key, **head_pickers())
        with gr.Tab("Compare"):
            compare_tab(page)
        with gr.Tab("Train"):
            train_tab(page)
        with gr.Tab("Keypoint converter"):
            keypoint_tab()
        with gr.Tab("Merge & share"):
            merge_tab(page)
    return demo


demo = build_demo()

if __name__ == "__main__":
    CLI.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    threading.Thread(target=load_model, args=(BASE,), daemon=True).start()  # warm the cache; the UI starts at once
    demo.queue(default_concurrency_limit=4).launch(max_file_size=MAX_UPLOAD, show_error=True)
