"""`python app.py` in a subprocess on a free loopback port, as a user starts it; a context manager for tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """Starts the app with `env` on top of this process's environment; `url` is ready once entered.

    Gradio's cache, the job folders and the Hub cache live under `workdir`, so nothing touches the user's own.
    """

    def __init__(self, workdir: Path, env: Mapping[str, str], *, args: tuple[str, ...] = (), timeout: float = 180):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.workdir / "app.log"
        self.jobs = self.workdir / "jobs"
        self.env = {
            **os.environ,
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(self.port),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "GRADIO_TEMP_DIR": str(self.workdir / "gradio"),
            "HEADKIT_JOBS_DIR": str(self.jobs),
            "HF_HOME": str(self.workdir / "hf_home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.args, self.timeout = args, timeout
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> AppServer:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "app.py", *self.args], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as reply:
                    if reply.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        self.__exit__()
        raise TimeoutError(f"app.py did not answer at {self.url} within {self.timeout}s:\n{self.tail()}")

    def __exit__(self, *exc_info: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
