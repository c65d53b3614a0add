"""The Train tab: a dataset upload and its summary, the estimate, a training run followed live (or found again with
the user key), Stop; the saved head joins every picker."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

import headkit
from headkit import server
from headkit.server import TrainingRequest

from . import texts
from .state import BASE_MODELS, GPU, LIMITS, OWNERS, PLACES, RUNS, SETTINGS, TRAIN_OPTIONS, USER_KEYS
from .visitor import client, comparer, import_dataset, job, roomy_job, served, str_keys, upload, user_errors

if TYPE_CHECKING:
    from .page import Page

METRIC_COLUMNS = ["class", "P", "R", "mAP50", "mAP50-95"]
DEVICE = "gpu" if GPU else "cpu"  # what the estimates of time and memory are for
DEFAULT_SHAPE = "p3-last-narrow"  # fine-tune accuracy at head only's cost (README, "Head shapes")
METRIC_KEYS = {
    "metrics/mAP50(B)": "mAP50",
    "metrics/mAP50-95(B)": "mAP50-95",
    "metrics/precision(B)": "P",
    "metrics/recall(B)": "R",
}


# --- the work of a run: in this process, or inside one ZeroGPU call --------------------------------------------------


def train_on_gpu(request: TrainingRequest):
    """A run's work inside one spaces.GPU call (ZeroGPU lends the GPU per call; what it yields streams back)."""
    yield from server.streamed(request, BASE_MODELS.model(request.base))


if SETTINGS.zero_gpu:
    import spaces  # available on ZeroGPU Spaces only

    train_on_gpu = spaces.GPU(duration=server.gpu_seconds)(train_on_gpu)


def train_here(request: TrainingRequest, stop, report) -> None:
    """A run's work in a worker process that loads the base itself: what training costs (memory, allocator arenas,
    threads) goes with the worker, and a run past `max_worker_mb` or its time is killed, never the server."""
    server.perform_in_worker(request, stop, report, limits=LIMITS)


# What `Runs.start` runs; on ZeroGPU, Stop reaches the GPU process through `in_gpu_call` (the job's stop marker)
WORK = server.in_gpu_call(train_on_gpu) if SETTINGS.zero_gpu else train_here


# --- handlers that need no component of the tab -------------------------------------------------------------------


@user_errors
def load_dataset(base: str, archive: str | None, request: gr.Request):
    """Check a detection dataset (.zip) and summarise it before training: classes, images, labelled images and boxes
    per split, with warnings (e.g. a class the base already has, a val split set aside). Accepts YOLO (Ultralytics or
    Roboflow folder structure) and COCO JSON exports.

    Args:
        base: the base model the dataset's classes are compared with (as /load_model lists it).
        archive: the dataset as a .zip file.

    Returns:
        a Markdown summary: classes, and a table per split of images, labelled images, boxes and boxes per class
        a few images with their labels drawn
        the summary as JSON: names, splits, warnings
        the images per split (what /estimate_training uses)
    """
    summary = import_dataset(
        upload(archive, ".zip", texts.DATASET_ZIP),
        roomy_job(request).file("datasets"),
        base_names=comparer(base).base.names.values(),
    )
    counts = {split: c.images for split, c in summary.splits.items()}
    public = {k: v for k, v in summary.to_dict().items() if k not in ("root", "yaml_path")}
    return dataset_markdown(public), server.label_previews(summary), public, counts


def dataset_markdown(summary: dict) -> str:
    rows = [
        texts.DATASET_ROW.format(
            split=s,
            images=c["images"],
            labelled=c["labelled"],
            boxes=c["boxes"],
            per_class=", ".join(f"{k}: {v}" for k, v in c["per_class"].items()),
        )  # fmt: skip
        for s, c in summary["splits"].items()
    ]
    text = texts.DATASET_CLASSES.format(names=", ".join(summary["names"].values())) + "\n".join(rows)
    return text + "".join(texts.DATASET_WARNING.format(warning=w) for w in summary["warnings"])


def run_estimate(
    base: str, train_images: int, val_images: int, epochs: int, imgsz: int, finetune: bool, *, batch: int, branch: str
):
    """The run's time and memory on this server's device (`server.check_fits` refuses either)."""
    return server.estimate_run(
        comparer(base).base, train_images, val_images, epochs=int(epochs), imgsz=int(imgsz), finetune=finetune,
        device=DEVICE, batch=int(batch), branch=branch,
    )  # fmt: skip


@user_errors
def estimate_training(
    base: str,
    counts: dict | None,
    epochs: int,
    imgsz: int,
    batch: int,
    finetune: bool = False,
    branch: str = DEFAULT_SHAPE,
):
    """Estimate how long training a head on the dataset this session last uploaded (/load_dataset) takes on this
    server, and how much memory it needs, and say whether the server allows it (and what to change if not).

    Args:
        base: the base model (as /load_model lists it).
        counts: images per split of the uploaded dataset (kept by the session; not passed through the API).
        epochs: training epochs, 1 to 300.
        imgsz: training image size in pixels.
        batch: images per batch, 1 to 64.
        finetune: also fine-tune the whole model the usual way afterwards, for comparison (about 4x the time).
        branch: the new head's shape: "head", "p3-last-narrow" (the default), "p3-narrow" or "neck" (as for
            /train_head).

    Returns:
        Markdown: the estimated time and memory, and whether this server allows the run
    """
    if not counts:
        return texts.NO_ESTIMATE
    expected = run_estimate(
        base, counts["train"], counts.get("val", 0), epochs, imgsz, finetune, batch=batch, branch=_known(branch).branch
    )
    zero_gpu_max_s = SETTINGS.zero_gpu_max_s if SETTINGS.zero_gpu else None
    return server.explain_estimate(expected, LIMITS, finetune=bool(finetune), zero_gpu_max_s=zero_gpu_max_s)


@user_errors
def stop_training(request: gr.Request):
    """Stop this session's (or its user key's) training run: a waiting run leaves the line at once, a running one
    stops after its current batch, and a head already saved stays.

    Returns:
        a line saying what was stopped, or that no run of yours is going
    """
    stopped = RUNS.stop(job(request).path)
    if stopped and "running" not in stopped:
        return texts.STOPPED_WAITING
    return texts.STOPPING if stopped else texts.NO_RUN


def _known(branch: str | None) -> headkit.Shape:
    """The head shape chosen (`headkit.SHAPES`), or a refusal naming the choices (a script may send anything)."""
    if branch not in headkit.SHAPES:
        choices = ", ".join(f"{value!r} ({label})" for value, label in texts.BRANCH_CHOICES.items())
        raise gr.Error(texts.BAD_BRANCH.format(branch=branch, choices=choices))
    return headkit.SHAPES[branch]


# --- the tab -------------------------------------------------------------------------------------------------------


class TrainTab:
    """The dataset, the settings, the run's status and results, and the user key."""

    def __init__(self, page: Page) -> None:
        self.page = page
        gr.Markdown(texts.TRAIN_HELP)
        if SETTINGS.require_login:
            gr.Markdown(texts.LOGIN_HELP)
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
        with gr.Row():
            branch = gr.Radio(
                texts.SHAPE_CHOICES,
                value=DEFAULT_SHAPE,
                label="What the new head owns",
                info=texts.BRANCH_HELP,
                elem_id="branch",
                scale=3,
            )
            keypoint_trick = gr.Checkbox(label="Keypoint trick (small objects)", info=texts.KEYPOINT_TRICK_INFO)
            finetune = gr.Checkbox(
                label="Also fine-tune the whole model the usual way, for comparison",
                info=texts.FINETUNE_HELP,
                elem_id="finetune",
            )
        estimate = gr.Markdown(texts.NO_ESTIMATE)
        with gr.Row():
            train = gr.Button("Train", variant="primary")
            stop = gr.Button("Stop", variant="stop")
        self.status = gr.Markdown()
        self.curve = gr.LinePlot(
            x="epoch",
            y="value",
            color="metric",
            # Gradio cuts the plot's own legend off under the axis, so the colours are fixed and named in the label
            color_map={name: colour for name, (colour, _) in texts.METRIC_LEGEND.items()},
            label=texts.CURVE_LABEL,
            height=300,
        )
        with gr.Row():
            self.head_file = gr.File(label="Trained head (.safetensors)", elem_id="head-out")
            self.metrics = gr.Dataframe(pd.DataFrame(columns=METRIC_COLUMNS), label="Metrics (val)", interactive=False)
        self.plots = gr.Gallery(label="Ultralytics plots", columns=4, height=260)
        with gr.Accordion("Training result as JSON", open=False):
            self.report = gr.JSON()
        with gr.Accordion("Your key: runs and heads that outlive this page", open=False):
            gr.Markdown(texts.KEY_HELP)
            with gr.Row():
                self.user_key = gr.Textbox(label="User key", type="password", elem_id="user-key", scale=4)
                use_key = gr.Button("Use this key", scale=1)
        shown = [self.status, self.curve, self.head_file, self.metrics, self.report, self.plots, *page.heads.pickers]

        dataset.upload(load_dataset, [page.base, dataset], [dataset_md, previews, dataset_json, counts],
                       api_name="load_dataset", concurrency_id="dataset",
                       concurrency_limit=LIMITS.max_concurrent_imports)  # fmt: skip
        gr.on(
            [counts.change, epochs.change, imgsz.change, batch.change, finetune.change, branch.change],
            estimate_training,
            [page.base, counts, epochs, imgsz, batch, finetune, branch],
            [estimate],
            api_name="estimate_training",
        )
        train.click(
            self.train_head,
            [page.base, dataset, epochs, imgsz, batch, keypoint_trick, branch, finetune],
            shown,
            api_name="train_head",
            # The run line is this event's admission (one training slot, places per client, a bounded line; its
            # dataset import takes one of state.IMPORTS): a request only starts or follows a run, and a client over
            # its share must be refused at once, not left waiting behind another user's run in Gradio's queue
            concurrency_limit=None,
            show_progress_on=[self.status],
        )
        stop.click(stop_training, None, [self.status], api_name="stop_training", concurrency_limit=None)
        use_key.click(self.resume, [self.user_key, page.base], [self.user_key, *shown], api_name="resume",
                      show_progress_on=[self.status])  # fmt: skip
        page.demo.load(  # a reopened page shows (and follows) its key's run
            self.resume_page,
            [page.browser_key, page.base],
            [page.browser_key, self.user_key, *shown],
            api_visibility="private",
            show_progress_on=[self.status],
        )
        self.user_key.change(lambda key: key, [self.user_key], [page.browser_key], api_visibility="private")

    @user_errors
    def train_head(
        self,
        base: str,
        archive: str | None,
        epochs: int,
        imgsz: int,
        batch: int,
        keypoint_trick: bool,
        branch: str = DEFAULT_SHAPE,
        finetune: bool = False,
        request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
        progress=gr.Progress(),  # noqa: B008 (Gradio finds its progress tracker by this default)
    ):
        """Train a new detection head for the dataset's classes on the base's frozen trunk, following the run live;
        the base's own detections stay exactly as they were. The run goes on if the caller goes away (find it again
        with /resume and the user key). Refused at once when the run would be too long or need too much memory.

        Args:
            base: the base model to train on (as /load_model lists it).
            archive: the dataset as a .zip file (YOLO or COCO JSON; see /load_dataset).
            epochs: training epochs, 1 to 300.
            imgsz: training image size in pixels (up to the server's max_imgsz).
            batch: images per batch, 1 to 64.
            keypoint_trick: train on box centres as keypoints, and keep the box head (measured: no gain on the plates).
            branch: the new head's shape: "head" (a Detect head only), "p3-last-narrow" (the default: its own copy
                of the last block feeding the finest Detect input and a narrow class branch, fine-tune accuracy at
                head only's cost), "p3-narrow" (the whole path to that input) or "neck" (its own copy of the neck).
            finetune: afterwards, also fine-tune the whole model the usual way, for comparison in /compare.

        Returns:
            a status line (waiting, epoch done, trained, stopped)
            the validation metrics per epoch (a plot's data)
            the trained head file (.safetensors)
            the validation metrics per class: P, R, mAP50, mAP50-95
            JSON: the head's key (session/<name>, for /compare, /merge, /push_head), metrics, kind, timings
            Ultralytics' training plots
            the Compare, Merge and Push pickers' choices, the new head selected in Compare
        """
        shape = _known(branch)
        branch = shape.branch
        who = client(request, profile)  # refused here when this server asks visitors to sign in
        work, model = roomy_job(request), comparer(base).base
        LIMITS.check("max_imgsz", int(imgsz), texts.TRAIN_IMGSZ)
        memory = server.estimate_memory(
            model, imgsz=int(imgsz), batch=int(batch), branch=branch, finetune=bool(finetune), device=DEVICE
        )
        server.check_memory(memory, LIMITS)  # before the dataset is unpacked: the estimate needs only the settings
        with PLACES.place(who) as hold:  # before the dataset is unpacked: one place per client, however many sessions
            RUNS.admit(work.path)
            summary = import_dataset(
                upload(archive, ".zip", texts.DATASET_ZIP), work.file("datasets"), base_names=model.names.values()
            )
            train_images, val_images = summary.splits["train"].images, summary.splits["val"].images
            expected = run_estimate(
                base, train_images, val_images, epochs, imgsz, bool(finetune), batch=batch, branch=branch
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
                branch=branch,
                class_width=shape.class_width,
                box_branch=shape.box_branch,
                keypoint_trick=bool(keypoint_trick),
                finetune=bool(finetune),
                options=tuple(TRAIN_OPTIONS.items()),
                gpu_seconds=server.zero_gpu_duration(expected, SETTINGS.zero_gpu_max_s) if SETTINGS.zero_gpu else 0,
            )
            run = RUNS.start(work.path, plan, WORK)
            hold(run)
        yield from self.shown_training(run, base, request, progress=progress)

    def shown_training(self, run: server.Run, base: str, request: gr.Request, *, progress=None):
        """The tab's outputs for a run's events, live or replayed for a reopened page."""
        progress = (lambda *_, **__: None) if progress is None else progress
        history: list[dict] = []
        report: dict | None = None  # set once the head is saved; a fine-tune may follow
        for event in run.follow():
            if isinstance(event, server.Waiting):
                progress(0, desc=texts.WAITING_PROGRESS.format(ahead=event.ahead))
                yield {self.status: texts.WAITING}
            elif isinstance(event, headkit.TrainProgress):
                step = texts.FINETUNE_PROGRESS if report else texts.EPOCH_PROGRESS
                progress(event.fraction, desc=step.format(epoch=event.epoch, epochs=event.epochs))
                if event.stage == "epoch" and report is None:
                    history += [
                        {"epoch": event.epoch, "metric": name, "value": event.metrics.get(key, 0.0)}
                        for key, name in METRIC_KEYS.items()
                    ]
                    done = texts.EPOCH_DONE.format(epoch=event.epoch, epochs=event.epochs)
                    yield {self.status: done, self.curve: pd.DataFrame(history)}
                elif event.stage == "epoch":
                    yield {self.status: texts.FINETUNE_EPOCH_DONE.format(
                        head=report["head"], epoch=event.epoch, epochs=event.epochs)}  # fmt: skip
            elif isinstance(event, server.SavedHead):
                shown = self.trained(base, event, request, history)
                report = shown[self.report]
                if event.finetune_next:
                    shown[self.status] += texts.FINETUNE_NEXT
                yield shown
            elif isinstance(event, server.SavedFineTune):
                report = report | {"finetune": {"mAP50": event.map50, "seconds": round(event.seconds, 1)}}
                status = texts.FINETUNED.format(head=report["head"], seconds=event.seconds, map50=event.map50)
                yield {self.status: status, self.report: report}
            elif isinstance(event, server.Stopped):
                if server.stopped_stage(run) == "fine-tune":
                    why = texts.FINETUNE_STOPPED.format(why=event.message)
                else:
                    why = f"{event.message[0].upper()}{event.message[1:]}"
                saved = texts.HEAD_SAVED.format(head=report["head"]) if report else texts.NOTHING_SAVED
                yield {self.status: texts.STOPPED.format(why=why, saved=saved)}
            elif isinstance(event, server.Failed):
                raise event.fresh_error()
            elif isinstance(event, server.Finished):
                return

    def trained(self, base: str, record: server.SavedHead, request: gr.Request, history: list[dict]) -> dict[Any, Any]:
        """Show the saved head everywhere at once (from the run's record: live, or replayed)."""
        key = f"{server.SESSION_PREFIX}{record.path.stem}"
        heads = self.page.heads
        return {
            self.status: texts.TRAINED.format(key=key, seconds=record.seconds),
            self.curve: pd.DataFrame(history),
            self.head_file: served(record.path),
            self.metrics: pd.DataFrame([{"class": k, **v} for k, v in record.metrics.items()], columns=METRIC_COLUMNS),
            self.report: record.summary | {"names": str_keys(record.names), "head": key},
            self.plots: [(served(p), p.stem) for p in record.plots if p.is_file()],
        } | heads.picked(heads.listing(base, request, select=key))

    @user_errors
    def resume(
        self,
        key: str | None,
        base: str,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008 (Gradio finds its progress tracker by this default)
    ):
        """Use a user key for this session (a new one when empty) and show its training run, following it live: a
        run outlives the page or script that started it, and its key finds it (and its heads) again.

        Args:
            key: the user key from an earlier /resume; empty for a new key.
            base: the base model (as /load_model lists it).

        Returns:
            the user key (keep it secret: it is the only way back to its runs and heads)
            then the same outputs as /train_head, for the key's run (or a line saying it has none)
        """
        server.check_session(request.session_hash)  # before a key is issued for it
        key = (key or "").strip() or USER_KEYS.issue()
        OWNERS.set(request.session_hash, USER_KEYS.owner(key))
        run = RUNS.get(job(request).path)
        if run is None:
            heads = self.page.heads
            yield {self.user_key: key, self.status: texts.NO_RUN_FOR_KEY} | heads.picked(heads.listing(base, request))
            return
        for shown in self.shown_training(run, base, request, progress=progress):
            yield {self.user_key: key} | shown

    def resume_page(
        self,
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
        for shown in self.resume(key, base, request, progress):
            yield {self.page.browser_key: shown[self.user_key]} | shown
