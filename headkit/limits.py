"""Named resource limits: how big an input headkit accepts before it allocates anything for it.

One crafted file (a head with 50,000 classes, a data.yaml listing 100,000 names) would otherwise cost gigabytes per
request. Each limit is checked where the input enters (`load_dataset`, `load_head`, `merge`, the app), and each
refusal names the limit and how to raise it. Operators raise them with environment variables (read in
`settings.py`); library users pass `Limits(...)` explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


class LimitExceeded(ValueError):
    """An input over one of the named limits; the message names the limit, the value and how to raise it."""


# Environment variable of each limit (read by settings.Settings.from_env).
ENV = {
    "max_classes": "HEADKIT_MAX_CLASSES",
    "max_merged_classes": "HEADKIT_MAX_MERGED_CLASSES",
    "max_heads": "HEADKIT_MAX_HEADS",
    "max_class_name_chars": "HEADKIT_MAX_CLASS_NAME_CHARS",
    "max_image_pixels": "HEADKIT_MAX_IMAGE_PIXELS",
    "max_imgsz": "HEADKIT_MAX_IMGSZ",
    "max_output_mb": "HEADKIT_MAX_OUTPUT_MB",
    "max_session_mb": "HEADKIT_MAX_SESSION_MB",
    "max_train_s": "HEADKIT_MAX_TRAIN_S",
    "max_train_mb": "HEADKIT_MAX_TRAIN_MB",
    "max_head_mb": "HEADKIT_MAX_HEAD_MB",
    "max_hub_cache_mb": "HEADKIT_MAX_HUB_CACHE_MB",
    "max_video_frames": "HEADKIT_MAX_VIDEO_FRAMES",
    "max_video_pixels": "HEADKIT_MAX_VIDEO_PIXELS",
    "max_video_s": "HEADKIT_MAX_VIDEO_S",
    "max_boxes_per_image": "HEADKIT_MAX_BOXES_PER_IMAGE",
    "max_json_mb": "HEADKIT_MAX_JSON_MB",
    "max_json_records": "HEADKIT_MAX_JSON_RECORDS",
    "max_json_values": "HEADKIT_MAX_JSON_VALUES",
    "max_queued_runs": "HEADKIT_MAX_QUEUED_RUNS",
    "max_queued_runs_per_client": "HEADKIT_MAX_QUEUED_RUNS_PER_CLIENT",
    "max_kept_runs": "HEADKIT_MAX_KEPT_RUNS",
    "max_server_mb": "HEADKIT_MAX_SERVER_MB",
    "max_concurrent_imports": "HEADKIT_MAX_CONCURRENT_IMPORTS",
    "max_concurrent_videos": "HEADKIT_MAX_CONCURRENT_VIDEOS",
    "max_concurrent_exports": "HEADKIT_MAX_CONCURRENT_EXPORTS",
    "max_worker_mb": "HEADKIT_MAX_WORKER_MB",
    "max_worker_s": "HEADKIT_MAX_WORKER_S",
    "max_hub_results": "HEADKIT_MAX_HUB_RESULTS",
    "max_hub_header_kb": "HEADKIT_MAX_HUB_HEADER_KB",
    "max_hub_search_s": "HEADKIT_MAX_HUB_SEARCH_S",
}


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what one input may cost (defaults: see the README's "Limits" table for the arithmetic).

    Attributes:
        max_classes: classes of one dataset or one head (LVIS's 1,203 fit).
        max_merged_classes: classes of one merged model, base and every head together.
        max_heads: extra heads stacked in one merge.
        max_class_name_chars: characters of one class name.
        max_image_pixels: width x height of one image to compare or train on (a 50 MP photo fits).
        max_imgsz: the model input size (pixels of the longer side) for compare and training.
        max_output_mb: raw output of one merged model for one image at the chosen size, (4 + classes) x
            (heads x anchors) float32 values; the padded score rows of many heads times many classes grow fast.
        max_session_mb: disk one app session's job folder may take (uploads, datasets, runs, heads).
        max_train_s: the longest training job the app starts, by its time estimate.
        max_train_mb: the most memory a training run may add, by its estimate (`headkit.server.estimate_memory`:
            batch × image size², per base and per stage), refused before it starts.
        max_head_mb: size of one head file downloaded from the Hub or uploaded.
        max_hub_cache_mb: the download cache of visitors' `hf://` heads (under the jobs folder, so counted in
            `max_server_mb` too), swept least recently used first; at most `max_server_mb` in any case.
        max_video_frames: frames of one video run through Compare (900: 30 s at 30 fps).
        max_video_pixels: width x height of one video frame (4K UHD, 3840 x 2160, fits).
        max_video_s: wall time one video call may run before it is stopped.
        max_boxes_per_image: boxes of one image's labels (crowd scenes reach a few hundred).
        max_json_mb: size of the JSON files (COCO annotations) read from one upload, each and all together.
        max_json_records: objects and arrays in one upload's JSON files, each and together (COCO images +
            annotations + categories), counted before any is parsed.
        max_json_values: values and keys (objects, arrays, strings, numbers) in one upload's JSON files, each and
            together, counted before any is parsed; a 128 MB list of short strings would otherwise take ~1.8 GB.
        max_queued_runs: training runs waiting for the training slot, all clients together.
        max_queued_runs_per_client: runs one client (user key) may have waiting or running at once.
        max_kept_runs: finished runs whose records the server keeps for reconnecting pages.
        max_server_mb: disk the whole server's job folders and served outputs may take together.
        max_concurrent_imports: dataset uploads unpacked and read at once (the app's /load_dataset,
            /convert_to_keypoints and /train_head's import share them); more wait their turn.
        max_concurrent_videos: videos decoded and annotated at once (/compare_video).
        max_concurrent_exports: merges exported at once (/merge), and head pushes at once (/push_head), each.
        max_worker_mb: memory (resident, not file-backed) of one worker process (`headkit.worker`): a training run or
            a dataset import, with any processes it starts; over it the worker is killed and the caller gets
            `WorkerLimitExceeded`.
        max_worker_s: wall time of one dataset-import worker; a training worker gets `max_train_s` plus this (it
            stops itself between batches at `max_train_s`; this bounds the batch, validation and saving after it).
        max_hub_results: heads one `find_heads` search asks the Hub for (each costs a header read).
        max_hub_header_kb: safetensors header bytes `find_heads` reads of one Hub file to check it.
        max_hub_search_s: wall time of one `find_heads` search, the Hub's answer and every header read together.
    """

    max_classes: int = 1500
    max_merged_classes: int = 2000
    max_heads: int = 8
    max_class_name_chars: int = 100
    max_image_pixels: int = 50_000_000
    max_imgsz: int = 1280
    max_output_mb: float = 512.0
    max_session_mb: float = 4096.0
    max_train_s: float = 4 * 3600.0
    max_train_mb: float = 7168.0
    max_head_mb: float = 200.0
    max_hub_cache_mb: float = 2048.0
    max_video_frames: int = 900
    max_video_pixels: int = 3840 * 2160
    max_video_s: float = 900.0
    max_boxes_per_image: int = 1000
    max_json_mb: float = 128.0
    max_json_records: int = 1_000_000
    max_json_values: int = 8_000_000
    max_queued_runs: int = 8
    max_queued_runs_per_client: int = 1
    max_kept_runs: int = 64
    max_server_mb: float = 20480.0
    max_concurrent_imports: int = 2
    max_concurrent_videos: int = 1
    max_concurrent_exports: int = 1
    max_worker_mb: float = 8192.0
    max_worker_s: float = 900.0
    max_hub_results: int = 20
    max_hub_header_kb: float = 512.0
    max_hub_search_s: float = 20.0

    @classmethod
    def from_mapping(cls, values: dict[str, str]) -> Limits:
        """Limits from environment-style strings (`ENV` names); unset ones keep their defaults."""
        parsed = {}
        for f in fields(cls):
            raw = (values.get(ENV[f.name]) or "").strip()
            if not raw:
                continue
            try:
                number = float(raw)
            except ValueError as e:
                raise ValueError(f"{ENV[f.name]}={raw!r} is not a number; set it to a positive number") from e
            if number <= 0:
                raise ValueError(f"{ENV[f.name]}={raw!r} must be positive")
            parsed[f.name] = int(number) if f.type in ("int", int) else number
        return cls(**parsed)

    def check(self, name: str, value: float, what: str) -> None:
        """Refuse `value` above the limit `name`, naming what was too large and how to raise the limit.

        Raises:
            LimitExceeded: value > limit.
        """
        limit = getattr(self, name)
        if value > limit:
            raise LimitExceeded(
                f"{what}: {_number(value)} is over the limit of {_number(limit)} ({name}); use a smaller input, or "
                f"raise the limit: set {ENV[name]} on the server, or pass headkit.Limits({name}=...) in Python"
            )


def anchors(imgsz: int, strides: tuple[int, ...] = (8, 16, 32)) -> int:
    """Anchor points of a square `imgsz` input: 8,400 at 640 px for strides 8/16/32."""
    return sum((-(-imgsz // s)) ** 2 for s in strides)


def output_mb(classes: int, heads: int, imgsz: int) -> float:
    """Size of a merged model's raw output for one image: (4 + classes) x (heads x anchors) float32, in MiB."""
    return (4 + classes) * heads * anchors(imgsz) * 4 / 2**20


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() or value >= 100 else f"{value:,.1f}"
