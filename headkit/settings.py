"""Every environment variable headkit reads, read in this one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _paths(value: str) -> tuple[Path, ...]:
    return tuple(Path(p).expanduser() for p in value.split(os.pathsep) if p)


@dataclass(frozen=True)
class Settings:
    """Operator choices, taken from the environment at call time so tests and Spaces can change them.

    Attributes:
        weights_dirs: folders searched first, by file name, for bare model/head names (`HEADKIT_WEIGHTS_DIR`,
            several joined with the path separator).
        trusted_owners: Hub owners whose pickled `.pt` models may be loaded (`HEADKIT_TRUSTED_OWNERS`, comma list).
        hf_endpoint: Hub address (`HF_ENDPOINT`), e.g. a mirror.
        offline: never touch the network, use the cache only (`HF_HUB_OFFLINE`).
        token: Hub token (`HF_TOKEN`), None for anonymous access.
        hub_cache: Hub download cache (`HF_HUB_CACHE`, else `HF_HOME`/hub), None for huggingface_hub's default.
    """

    weights_dirs: tuple[Path, ...] = ()
    trusted_owners: frozenset[str] = field(default_factory=lambda: frozenset({"ultralytics"}))
    hf_endpoint: str = "https://huggingface.co"
    offline: bool = False
    token: str | None = None
    hub_cache: Path | None = None

    @classmethod
    def from_env(cls) -> Settings:
        owners = os.environ.get("HEADKIT_TRUSTED_OWNERS", "Ultralytics")
        return cls(
            weights_dirs=_paths(os.environ.get("HEADKIT_WEIGHTS_DIR", "")),
            trusted_owners=frozenset(o.strip().lower() for o in owners.split(",") if o.strip()),
            hf_endpoint=os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/"),
            offline=os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in {"1", "true", "yes", "on"},
            token=os.environ.get("HF_TOKEN") or None,
            hub_cache=_hub_cache(),
        )


def _hub_cache() -> Path | None:
    """huggingface_hub reads these once at import; reading them per call lets a process switch caches."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ["HF_HOME"]) / "hub" if os.environ.get("HF_HOME") else None
