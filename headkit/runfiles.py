"""The run folder as the channel between a training process and headkit: progress lines, Stop, final metrics.

With `device="0,1"` Ultralytics trains in worker processes it starts itself (`torch.distributed.run`), from a
cloudpickled copy of the trainer's class, arguments, model and callbacks: nothing in memory is shared with the caller.
So a run reports through files in its own folder, which every process can write and read, and headkit uses the same
files when the run is in this process: one path, tested on one CPU, for both.

    <run>/headkit-progress.jsonl   one TrainProgress per line, appended by the trainer (rank 0)
    <run>/headkit-metrics.json     per-class val metrics of the final validation, written at the end (rank 0)
    <run>/STOP                     exists once a stop was asked for; every rank checks it after each batch
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROGRESS = "headkit-progress.jsonl"
METRICS = "headkit-metrics.json"
STOP = "STOP"

# where reading left off in the progress file: (inode, byte offset); a new inode means the file was made anew
Cursor = tuple[int, int]
START: Cursor = (0, 0)


@dataclass(frozen=True)
class RunFiles:
    """headkit's files in one Ultralytics run folder (`<project>/<name>`)."""

    folder: Path

    def reset(self) -> None:
        """Remove what an earlier run in this folder left (the folder is reused: `exist_ok=True`)."""
        for name in (PROGRESS, METRICS, STOP):
            (self.folder / name).unlink(missing_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        """Add one progress record; one `write` of a whole line, so a reader never sees half of one but at the end."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / PROGRESS, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read(self, cursor: Cursor = START) -> tuple[list[dict[str, Any]], Cursor]:
        """The whole records appended since `cursor`, and the cursor after them."""
        try:
            with open(self.folder / PROGRESS, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                # Ultralytics' DDP launch empties the run folder: a new file is read from its start
                offset = cursor[1] if inode == cursor[0] else 0
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], START
        end = data.rfind(b"\n") + 1
        records = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
        return records, (inode, offset + end)

    def request_stop(self) -> None:
        """Ask the run to stop after its current batch, in whichever process it trains."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / STOP).touch()

    def stop_requested(self) -> bool:
        return (self.folder / STOP).exists()

    def clear_stop(self) -> None:
        (self.folder / STOP).unlink(missing_ok=True)

    def write_metrics(self, table: dict[str, dict[str, float]]) -> None:
        """Write the per-class metrics table whole (a reader never sees a half-written one)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".{METRICS}.partial"
        partial.write_text(json.dumps(table), encoding="utf-8")
        os.replace(partial, self.folder / METRICS)

    def metrics(self) -> dict[str, dict[str, float]]:
        """The per-class metrics the run's final validation wrote.

        Raises:
            FileNotFoundError: the run ended without writing them (it failed, or trained without headkit's callbacks).
        """
        path = self.folder / METRICS
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: the run wrote no final metrics; it ended before its final validation or was started "
                "without headkit's callbacks (see the run's log), so train again"
            )
        return json.loads(path.read_text(encoding="utf-8"))
