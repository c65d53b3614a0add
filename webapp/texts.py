"""Every string a visitor reads: help, labels that explain, status lines and refusals (templates with `{names}`).

Figures from benchmarks come from `figures.py`, limits from the server's `Limits`, so no number here is typed twice.
Component labels that only name a field stay beside their component.
"""

from __future__ import annotations

from headkit.server import COST_VS_HEAD

from . import figures
from .state import LIMITS, WEBCAM_SECONDS

INTRO = """# headkit — teach YOLO new classes without touching old weights
A new class gets its own Detect head, trained on the base's frozen trunk and merged beside the base head: every base
detection stays exactly as it was. **Compare** base / custom / merged on an image, **Train** a head on your dataset,
convert boxes to **keypoints** for small objects, **Merge & share** the result."""
NO_BASE = (  # plain text: it shows in a toast and in the banner alike
    "Base model {base} is not available: {error}. Point the app at a local checkpoint: "
    "HEADKIT_BASE=/path/to/model.pt python app.py (or --base /path/to/model.pt, or put the file in a folder named "
    "by HEADKIT_WEIGHTS_DIR)."
)
UNEXPECTED = "unexpected error ({kind}: {error})"
BODY_TOO_LARGE = "request body over {mb} MiB: inputs travel as JSON, files through /upload"

# --- heads ---------------------------------------------------------------------------------------------------------
HEADS_BASE_LINE = "**Base** `{base}`: {count} classes ({names})"
HEAD_UNAVAILABLE = "- **unavailable** `{key}`: {reason}"
HEAD_KIND = "- `{key}`: {kind}"
HEAD_ASSUMED = "- `{key}`: base fingerprint **assumed, not verified** (imported from a legacy .pth, which records none)"
HEAD_ADDED = "added {key}"
NOT_A_HUB_ADDRESS = (
    "'{address}' is not a Hub address; upload a head (.safetensors) or give hf://owner/repo/head.safetensors"
)
HEADS_CHOSEN = "heads chosen (each one is loaded, some downloaded)"
HEADS_INFO = "shipped, trained in this session, or hf://owner/repo/head.safetensors"
HUB_HEADS_TITLE = (
    "**Heads on the Hub for this base**: found by the tag of the base they were trained on; each one's file header "
    "is read and checked against this base before it is listed, so every head here loads and merges. Click a row to "
    "add that head."
)
HUB_SORTS = {"downloads": "Most downloaded", "newest": "Newest"}
HUB_FOUND = "{count} head(s) on {endpoint} fit this base (searched {at}).{skipped}"
HUB_NONE = (
    "No head on {endpoint} fits this base yet (searched {at}).{skipped} Push one from **Merge & share**: it is "
    "listed here for everyone on this base."
)
HUB_OFFLINE = "**The Hub cannot be searched now** ({why}); {count} head(s) from the listing of {at}.{skipped}"
HUB_UNREACHABLE = "**The Hub cannot be searched now:** {error}"
HUB_SKIPPED = " {count} file(s) under the tag were not listed (not a head for this base)."
UPLOAD_FIRST = "upload {what} first"
WRONG_SUFFIX = "{name}: expected {what} ({suffix} file)"
DATASET_ZIP = "a dataset zip"

# --- Compare, video, webcam ----------------------------------------------------------------------------------------
EXAMPLES_LABEL = "Examples (shipped with Ultralytics) — the first with a synthetic plate drawn by headkit"
NO_IMAGE = "give an image: upload one or pick an example"
NO_VIDEO = "give a video: upload an .mp4, .webm, .mov or .avi file"
VIDEO_HELP = (
    f"Up to {LIMITS.max_video_frames:,} frames (about {LIMITS.max_video_frames // 30} s at 30 fps) of up to "
    f"{LIMITS.max_video_pixels / 1e6:.1f} MP each (4K UHD fits), {LIMITS.max_video_s / 60:g} min of work at most; "
    "larger videos are refused — trim or resize them first. The merged model (base + the heads chosen above, with the "
    f"settings above) runs on every frame; {LIMITS.max_concurrent_videos} video(s) at a time, each frame takes about "
    "as long as one Compare. Objects are followed across frames with Ultralytics' ByteTrack: **objects** counts "
    "distinct people or things per class, **detections** counts boxes over all frames (one person in 30 frames: "
    "1 object, 30 detections)."
)
VIDEO_READING = "reading the video"
VIDEO_FRAME = "frame {done} of {total}"
VIDEO_LINE = (
    "{frames} frames at {fps:.3g} fps; {found} detections by the merged model, {objects} distinct objects tracked"
)
VIDEO_EXAMPLE_LABEL = "Example (the composite above, panned)"
WEBCAM_HELP = (
    "The merged model on your camera, about two frames a second (each frame has the image limits of Compare; "
    f"{WEBCAM_SECONDS} s of work per start). Frames are processed and dropped, never stored. For the side-by-side "
    "comparison, take a snapshot with the camera of the Compare image above."
)

# --- Train ---------------------------------------------------------------------------------------------------------
TRAIN_HELP = """Upload a detection dataset as a **.zip**: YOLO (Ultralytics or Roboflow folder structure, with data.yaml or classes.txt)
or COCO JSON (Roboflow, COCO, CVAT or Label Studio exports: any JSON file with images, annotations and categories).
Without a val split, one is set aside from the train images (the same images every time) and the summary says so.
Its summary and a few labelled images appear first. Training runs one job at a time: while another runs, your place in
the queue shows on the progress bar. Stop ends the run after the current batch (or takes a waiting run out of the
line); nothing is saved then."""
LOGIN_HELP = (
    "Training here needs a Hugging Face sign-in: each person holds one place in the training line, however many "
    "pages or scripts they open."
)
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
BRANCH_CHOICES = {
    "head": "Head only",
    "p3-last-narrow": "P3 last stage, narrow",
    "p3-narrow": "P3 path, narrow",
    "neck": "Neck branch",
}
SHAPE_FIGURES = {  # shape -> (new-class mAP50, merged latency / base, head file MB), as the README's "Head shapes"
    "head": (figures.MAP50_HEAD, figures.LATENCY_HEAD, figures.HEAD_MB),
    "p3-last-narrow": (figures.MAP50_P3_LAST_NARROW, figures.LATENCY_P3_LAST_NARROW, figures.P3_LAST_NARROW_MB),
    "p3-narrow": (figures.MAP50_P3_NARROW, figures.LATENCY_P3_NARROW, figures.P3_NARROW_MB),
    "neck": (figures.MAP50_NECK, figures.LATENCY_NECK, figures.NECK_MB),
}
SHAPE_CHOICES = [
    (f"{BRANCH_CHOICES[shape]} — mAP50 {map50:.3f}, {slower:.2f}× the base's time, {megabytes:.1f} MB", shape)
    for shape, (map50, slower, megabytes) in SHAPE_FIGURES.items()
]
BRANCH_HELP = (
    "Head only: a Detect head on the frozen trunk. P3 last stage, narrow: also its own copy of the last block that "
    "feeds the finest detection level, with a narrow class branch started from the base's strongest channels. P3 "
    "path, narrow: its own copy of every layer on that path. Neck branch: its own copy of the whole neck. Base "
    "detections stay exact with each. Figures: new-class mAP50 on the plates "
    f"benchmark ({figures.BENCH_EPOCHS} epochs at {figures.BENCH_IMGSZ} px; a full fine-tune "
    f"{figures.MAP50_FINETUNE:.3f}, which forgets the base), merged time per image against the base's alone on "
    "YOLOv8s (CPU), head file size."
)
BAD_BRANCH = "branch {branch!r}: expected one of {choices}"
TRAIN_IMGSZ = "training image size (pixels)"
KEYPOINT_TRICK_INFO = (
    "train on box centres as keypoints, keep the box head; on the plates benchmark (30 epochs) it did not help"
)
NO_ESTIMATE = "Upload a dataset to see how long training takes."
DATASET_CLASSES = "**Classes:** {names}\n\n| split | images | labelled | boxes | per class |\n|---|---|---|---|---|\n"
DATASET_ROW = "| {split} | {images} | {labelled} | {boxes} | {per_class} |"
DATASET_WARNING = "\n- **warning:** {warning}"
METRIC_LEGEND = {  # metric -> (colour, its name in the plot's label)
    "mAP50": ("#1f77b4", "blue"),
    "mAP50-95": ("#ff7f0e", "orange"),
    "P": ("#2ca02c", "green (precision)"),
    "R": ("#d62728", "red (recall)"),
}
CURVE_LABEL = "Validation metrics per epoch: " + " · ".join(
    f"{name} {colour_name}" for name, (_, colour_name) in METRIC_LEGEND.items()
)
WAITING = "Waiting for the training slot (another run is going)…"
WAITING_PROGRESS = "waiting for the training slot ({ahead} ahead)"
EPOCH_PROGRESS = "epoch {epoch}/{epochs}"
FINETUNE_PROGRESS = "fine-tune, epoch {epoch}/{epochs}"
EPOCH_DONE = "Epoch {epoch}/{epochs} done."
FINETUNE_EPOCH_DONE = "Head `{head}` saved. Fine-tuning the whole model for comparison: epoch {epoch}/{epochs} done."
TRAINED = "✅ Trained `{key}` in {seconds:.0f} s; it is now selected in Compare."
FINETUNE_NEXT = " Now fine-tuning the whole model for comparison…"
FINETUNED = (
    "✅ Trained `{head}`, and the whole model fine-tuned the usual way in {seconds:.0f} s (val mAP50 {map50:.3f}): "
    "Compare shows it beside the merged model when this head is chosen."
)
STOPPED = "{why}; {saved}."
FINETUNE_STOPPED = "Fine-tune stopped: {why}"
HEAD_SAVED = "the head `{head}` is saved"
NOTHING_SAVED = "no head was saved"
NO_RUN_FOR_KEY = "No training run for this key yet."
STOPPED_WAITING = "Stopped before it started (it was waiting for the training slot); nothing was trained."
STOPPING = "Stopping after the current batch…"
NO_RUN = "No training run of yours is going."

# --- Keypoint converter, Merge & share -----------------------------------------------------------------------------
KEYPOINTS_HELP = "Box labels → one keypoint per box at its centre, for the keypoint trick in other tools."
MERGE_TITLE = "### Merge\nOne model: base classes first, then each head's, in the order chosen."
MERGE_HELP = """A merged `.pt` with several heads needs **headkit installed** to load (it holds headkit's `ConcatHead`;
without headkit, Ultralytics would try to `pip install headkit`). **TorchScript** and **ONNX** files run with plain
`ultralytics.YOLO(path)` anywhere, with the merged class names."""
NO_HEADS_TO_MERGE = "choose at least one head to merge"
PUSH_TITLE = """### Push a head to the Hub
One commit: the .safetensors head, its model card and an example prediction. The card is tagged with the base the
head was trained on (`headkit-base-` and the first 16 hex digits of the base's fingerprint), so the head is then listed
for that base: in Compare's **Heads on the Hub for this base**, for everyone using the same base, and by
`headkit.find_heads`."""
TOKEN_INFO = "your own token{signin}; this server's token is never used for visitors"
TOKEN_SIGNIN = " (or sign in with Hugging Face, at the top of the page)"
NO_HEAD_TO_PUSH = "choose the head to push"
NEEDS_TOKEN = (
    "pushing needs your own Hub token: sign in with Hugging Face, or paste a token with write access "
    "(huggingface.co/settings/tokens); this server's token is never used for visitors"
)
PUSHED = "✅ Pushed to [{repo_id}]({url}); listed for its base under the tag `{tag}`."
