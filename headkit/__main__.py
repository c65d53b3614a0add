"""Command line: `headkit train|merge|find ...` (or `python -m headkit ...`) for scripted runs; the app offers the same
verbs."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from . import find_heads, load_head, load_model, merge
from .train import train_head


def _train(args: argparse.Namespace) -> None:
    base = load_model(args.base)
    init = load_head(args.init) if args.init else None
    result = train_head(
        base,
        args.data,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        project=args.project,
        name=args.name,
        init_head=init,
        branch=args.branch,
        class_branch=args.class_branch,
        class_width=args.class_width,
        box_branch=args.box_branch,
        keypoint_trick=args.keypoint_trick,
    )
    result.head.metadata["label"] = args.label or Path(args.out).stem
    result.head.save(args.out)
    print(json.dumps({**result.to_dict(), "head": str(args.out)}, indent=2, default=str))


def _merge(args: argparse.Namespace) -> None:
    merged = merge(load_model(args.base), *(load_head(h) for h in args.heads), keep_base_head=not args.heads_only)
    merged.save(args.out)
    print(json.dumps({"model": str(args.out), "names": merged.names}, indent=2))


def _find(args: argparse.Namespace) -> None:
    found = find_heads(load_model(args.base), limit=args.limit, sort=args.sort)
    rows = [{"address": h.address, "label": h.label, "classes": h.classes, "downloads": h.downloads,
             "likes": h.likes, "metrics": h.metrics.get("all", {})} for h in found]  # fmt: skip
    print(json.dumps({"searched_at": found.searched_at, "offline": found.offline, "heads": rows}, indent=2))


def _class_width(text: str) -> int | str:
    return text if text == "narrow" else int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="headkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a head on a dataset over a frozen base")
    train.add_argument("--base", required=True)
    train.add_argument("--data", required=True, help="data.yaml, dataset folder or .zip")
    train.add_argument("--out", required=True, help="where to write the .safetensors head")
    train.add_argument("--label", default=None, help="a short name for the head (default: file stem)")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--imgsz", type=int, default=640)
    train.add_argument("--batch", type=int, default=16)
    train.add_argument("--device", default="auto")
    train.add_argument("--project", default="runs/headkit")
    train.add_argument("--name", default="head")
    train.add_argument("--init", default=None, help="start from this head (.safetensors) instead of the base head")
    train.add_argument(
        "--branch",
        default="head",
        type=lambda v: int(v) if v.lstrip("-").isdigit() else v,
        help="'head' (Detect only, default), 'neck' (own copy of the neck too), 'p3' (own copy of the layers feeding "
        "the P3 input only), 'p3-last' (only that path's last stage) or the first layer the head owns",
    )
    train.add_argument(
        "--class-branch",
        default="base",
        choices=("base", "light"),
        help="the new head's class branch: 'base' (the base's style, default) or 'light' (depthwise, as YOLO11/YOLO26)",
    )
    train.add_argument(
        "--class-width",
        type=_class_width,
        default=None,
        help="a narrow class branch this many channels wide, started from the base's strongest channels (e.g. 32), "
        "or 'narrow' (picked from the dataset's classes: 32 for up to 32)",
    )
    train.add_argument(
        "--box-branch",
        default="own",
        choices=("own", "shared"),
        help="'own' (default) or 'shared': where the head reads the base's maps its box branch stays the base's, run "
        "once in a merged model",
    )
    train.add_argument(
        "--keypoint-trick", action="store_true", help="train as a one-keypoint pose head (small objects)"
    )
    train.set_defaults(run=_train)
    join = sub.add_parser("merge", help="merge heads into a base and save the merged .pt")
    join.add_argument("--base", required=True)
    join.add_argument("--out", required=True)
    join.add_argument("--heads-only", action="store_true", help="drop the base head (trunk + given heads)")
    join.add_argument("heads", nargs="+")
    join.set_defaults(run=_merge)
    find = sub.add_parser("find", help="list the heads on the Hub that fit a base (checked before listing)")
    find.add_argument("--base", required=True)
    find.add_argument("--limit", type=int, default=10)
    find.add_argument("--sort", choices=("downloads", "newest"), default="downloads")
    find.set_defaults(run=_find)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.run(args)


if __name__ == "__main__":
    main()
