"""Every environment variable headkit reads, read in this one place."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .limits import Limits

# The embedded base's folder beside the package in a checkout (apart from weights/'s heads); searched last for bare
# names.
SHIPPED_BASES = Path(__file__).resolve().parents[1] / "weights" / "bases"
# The embedded demo base (weights/bases/, safetensors, no pickle): every tab works offline with no setting at all.
DEFAULT_BASE = "yolov8s-fall.safetensors"
HUB_BASES = ("yolov8n.pt", "yolo11n.pt", "yolo26n.pt")
DEMO_ASSETS_MAKER = "python tools/make_demo_assets.py"


def restore_hint(path: Path) -> str:
    """How to get the shipped base back, or where a user's own base file comes from (for missing or damaged files)."""
    if path.name == DEFAULT_BASE:
        return f"restore it with 'git checkout weights/bases/{DEFAULT_BASE}' or re-make it with '{DEMO_ASSETS_MAKER}'"
    return "save it again with headkit.basefile.save_base from the checkpoint it was made from"


def _paths(value: str) -> tuple[Path, ...]:
    return tuple(Path(p).expanduser() for p in value.split(os.pathsep) if p)


@dataclass(frozen=True)
class Settings:
    """Operator choices, taken from the environment at call time so tests and Spaces can change them.

    Attributes:
        weights_dirs: folders searched first, by file name, for bare model/head names (`HEADKIT_WEIGHTS_DIR`,
            several joined with the path separator); the shipped `weights/bases/` folder is searched after them.
        trusted_owners: Hub owners whose pickled `.pt` models may be loaded (`HEADKIT_TRUSTED_OWNERS`, comma list).
        hf_endpoint: Hub address (`HF_ENDPOINT`), e.g. a mirror.
        offline: never touch the network, use the cache only (`HF_HUB_OFFLINE`).
        token: Hub token (`HF_TOKEN`), None for anonymous access.
        hub_cache: Hub download cache (`HF_HUB_CACHE`, else `HF_HOME`/hub), None for huggingface_hub's default.
        base: the app's base model (`HEADKIT_BASE`): a path, a bare name or `hf://`; default the embedded
            `yolov8s-fall.safetensors` in weights/bases/ (no network needed).
        bases: more bases the app offers in its picker after `base` (`HEADKIT_BASES`, comma list; default the
            official yolov8n/yolo11n/yolo26n from the Hub), loaded when first picked.
        jobs_dir: root of the app's per-session job folders (`HEADKIT_JOBS_DIR`, default <tmp>/headkit-jobs).
        job_max_age_s: job folders unused for this long are deleted (`HEADKIT_JOB_MAX_AGE_S`, default 6 h).
        zero_gpu: running on ZeroGPU hardware (`SPACES_ZERO_GPU`): GPU work goes through `spaces.GPU` calls.
        zero_gpu_max_s: the longest single ZeroGPU call the app asks for (`HEADKIT_ZEROGPU_MAX_S`, default 120 s).
        oauth: "Sign in with Hugging Face" is configured (`OAUTH_CLIENT_ID`, set on Spaces with `hf_oauth: true`).
        limits: resource limits (`HEADKIT_MAX_*`, see `headkit.limits.ENV`).
        browser_secret: encrypts the user key each browser keeps (`HEADKIT_BROWSER_SECRET`); None: a new one per
            server start, so browsers get new keys after a restart.
        require_login: training needs a Hugging Face sign-in, and runs in line are counted per account
            (`HEADKIT_REQUIRE_LOGIN`; default on when `SPACE_ID` is set, i.e. on a Space); off: per address.
        trust_forwarded_for: the client's address is the last X-Forwarded-For entry, the one the proxy in front
            appended (`HEADKIT_TRUST_FORWARDED_FOR`; default on when `SPACE_ID` is set: every request reaches a
            Space from its proxy's address). Off: the connection's address, as uvicorn resolves it.
    """

    weights_dirs: tuple[Path, ...] = ()
    trusted_owners: frozenset[str] = field(default_factory=lambda: frozenset({"ultralytics"}))
    hf_endpoint: str = "https://huggingface.co"
    offline: bool = False
    token: str | None = None
    hub_cache: Path | None = None
    base: str = DEFAULT_BASE
    bases: tuple[str, ...] = HUB_BASES
    jobs_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "headkit-jobs")
    job_max_age_s: float = 6 * 3600.0
    zero_gpu: bool = False
    zero_gpu_max_s: float = 120.0
    oauth: bool = False
    limits: Limits = field(default_factory=Limits)
    browser_secret: str | None = None
    require_login: bool = False
    trust_forwarded_for: bool = False

    @property
    def visitor_hub_cache(self) -> Path:
        """Where visitors' `hf://` heads are downloaded: a folder of the jobs root (hidden, so the age sweep of job
        folders leaves it to its own size sweep), so its files count in `max_server_mb`; never the operator's cache."""
        return self.jobs_dir / ".hub-cache"

    @classmethod
    def from_env(cls) -> Settings:
        owners = os.environ.get("HEADKIT_TRUSTED_OWNERS", "Ultralytics")
        on_space = "1" if os.environ.get("SPACE_ID") else "0"
        return cls(
            weights_dirs=_paths(os.environ.get("HEADKIT_WEIGHTS_DIR", "")),
            trusted_owners=frozenset(o.strip().lower() for o in owners.split(",") if o.strip()),
            hf_endpoint=os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/"),
            offline=_flag("HF_HUB_OFFLINE"),
            token=os.environ.get("HF_TOKEN") or None,
            hub_cache=_hub_cache(),
            base=os.environ.get("HEADKIT_BASE", "").strip() or DEFAULT_BASE,
            bases=tuple(
                b.strip() for b in os.environ.get("HEADKIT_BASES", ",".join(HUB_BASES)).split(",") if b.strip()
            ),
            jobs_dir=Path(os.environ.get("HEADKIT_JOBS_DIR") or Path(tempfile.gettempdir()) / "headkit-jobs"),
            job_max_age_s=float(os.environ.get("HEADKIT_JOB_MAX_AGE_S", 6 * 3600)),
            zero_gpu=_flag("SPACES_ZERO_GPU"),
            zero_gpu_max_s=float(os.environ.get("HEADKIT_ZEROGPU_MAX_S", 120)),
            oauth=bool(os.environ.get("OAUTH_CLIENT_ID")),
            limits=Limits.from_mapping(dict(os.environ)),
            browser_secret=os.environ.get("HEADKIT_BROWSER_SECRET") or None,
            require_login=_flag("HEADKIT_REQUIRE_LOGIN", on_space),
            trust_forwarded_for=_flag("HEADKIT_TRUST_FORWARDED_FOR", on_space),
        )


def current_limits() -> Limits:
    """The limits in force now: the defaults, raised or lowered by `HEADKIT_MAX_*` variables."""
    return Limits.from_mapping(dict(os.environ))


def _flag(name: str, default: str = "0") -> bool:
    return (os.environ.get(name, "").strip() or default).lower() in {"1", "true", "yes", "on"}


def _hub_cache() -> Path | None:
    """huggingface_hub reads these once at import; reading them per call lets a process switch caches."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ["HF_HOME"]) / "hub" if os.environ.get("HF_HOME") else None
