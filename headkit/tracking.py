"""Object identities across video frames: Ultralytics' own ByteTrack, fed the model's detections unchanged.

`model.track()` hands the tracker's Kalman-smoothed boxes back in place of the detections and hides unconfirmed
ones, so a tracked video would no longer show the base's detections as `predict` finds them. Here the same tracker,
built from the same `bytetrack.yaml` as `model.track()` builds it, only reads each frame's boxes and names the
track (if any) each one belongs to; boxes, scores and classes stay `predict`'s.
"""

from __future__ import annotations

import numpy as np
import torch

TRACKER = "bytetrack.yaml"  # Ultralytics' config; ByteTrack needs boxes and scores only (no ReID model to fetch)
LAP_PIN = "lap==0.5.13"


def _require_lap() -> None:
    """ByteTrack's assignment solver; without it Ultralytics would try to pip-install it while serving."""
    try:
        import lap
    except ImportError as e:
        raise ImportError(f"tracking needs the 'lap' package: pip install {LAP_PIN} (see requirements.txt)") from e
    if not getattr(lap, "__version__", None):  # a folder named lap on the path, not the package
        raise ImportError(f"'lap' at {getattr(lap, '__path__', '?')} is not the lap package; pip install {LAP_PIN}")


class Tracker:
    """ByteTrack over one video: `ids(result)` for each frame in order."""

    def __init__(self) -> None:
        _require_lap()
        from ultralytics.trackers.track import TRACKER_MAP
        from ultralytics.utils import YAML, IterableSimpleNamespace
        from ultralytics.utils.checks import check_yaml

        config = IterableSimpleNamespace(**YAML.load(check_yaml(TRACKER)))
        self._tracker = TRACKER_MAP[config.tracker_type](args=config)

    def ids(self, result) -> np.ndarray:
        """Track id of each of `result`'s boxes, in its order; -1 where no confirmed track holds the box.

        A new object gets an id once seen in two frames running (or in the first frame), as in `model.track()`.
        """
        tracks = self._tracker.update(result.boxes.cpu().numpy(), result.orig_img)
        ids = np.full(len(result.boxes), -1, dtype=np.int64)
        if len(tracks):
            ids[tracks[:, -1].astype(int)] = tracks[:, 4].astype(int)  # rows: x1 y1 x2 y2 id score cls index
        return ids


def plot_tracked(result, ids: np.ndarray) -> np.ndarray:
    """`result.plot()` (BGR) with 'id:N' before the class of each tracked box; every box as `predict` found it."""
    data = result.boxes.data
    held = torch.as_tensor(ids >= 0, device=data.device)
    if not held.any():
        return result.plot()
    tracked = result[held]
    numbers = torch.as_tensor(ids[ids >= 0], dtype=data.dtype, device=data.device)[:, None]
    tracked.update(boxes=torch.cat([data[held, :4], numbers, data[held, 4:]], 1))  # x1 y1 x2 y2 id conf cls
    return result[~held].plot(img=tracked.plot())
