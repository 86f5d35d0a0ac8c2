"""`python -m pipeline data synth|prepare|validate|make`: synthetic twins, official preparation, checks."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pipeline.errors import UserError

DEFAULT_PARAMS = "params.yaml"


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"image size must look like 96x128, got {text!r}") from exc
    return h, w


def _twin_settings(args) -> dict:
    """num_images / num_classes / image_size / seed / class_boxes: command line > params.yaml data.<dataset> > defaults."""
    from maskformer_core.data import synth

    settings = {"num_images": synth.DEFAULT_NUM_IMAGES, "num_classes": synth.DEFAULT_NUM_CLASSES,
                "image_size": synth.DEFAULT_IMAGE_SIZE, "seed": 0, "class_boxes": False}
    if getattr(args, "params", None):
        from pipeline.yamlio import load_yaml

        path = Path(args.params)
        if not path.is_file():
            raise UserError(f"{path}: params file not found")
        section = (load_yaml(path) or {}).get("data", {}) or {}
        entry = section.get(args.dataset, {}) or {}
        unknown = set(entry) - set(settings)
        if unknown:
            raise UserError(f"{path}: data.{args.dataset}: unknown key(s) {', '.join(sorted(unknown))}; "
                            f"expected {', '.join(settings)}")
        settings.update(entry)
    for key in settings:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    if not isinstance(settings["class_boxes"], bool):
        where = f"{args.params}: " if getattr(args, "params", None) else ""
        raise UserError(f"{where}data.{args.dataset}.class_boxes must be true or false, got {settings['class_boxes']!r}")
    settings["image_size"] = tuple(int(v) for v in settings["image_size"])
    return settings


def _add_twin_args(p) -> None:
    p.add_argument("--num-images", dest="num_images", type=int, default=None,
                   help="images in total (a quarter go to the evaluation split); default 64")
    p.add_argument("--num-classes", dest="num_classes", type=int, default=None, help="K; default 8")
    p.add_argument("--image-size", dest="image_size", type=_size, default=None, help="HxW; default 96x128")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--class-boxes", dest="class_boxes", action="store_true", default=None,
                   help="each class gets a box of its own (thing aspect tall ... wide, stuff band height), "
                        "so a box tells the class (params.yaml data.<dataset>.class_boxes); default: alike boxes")
    p.add_argument("--params", default=None,
                   help=f"read defaults from the data.<dataset> section of this file (e.g. {DEFAULT_PARAMS})")


def register(subparsers) -> None:
    from maskformer_core.data.metadata import DATASETS

    parser = subparsers.add_parser("data", help="datasets: synthetic twins, preparation, validation")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser("synth", help="write a synthetic twin in the raw download layout")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--out", required=True, help="raw root to write, e.g. data/raw/synthetic/ade20k")
    _add_twin_args(p)
    p.set_defaults(func=run)

    p = sub.add_parser("prepare", help="download layout -> training layout (as the official datasets/prepare_*.py)")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--raw", required=True, help="raw download root, e.g. data/raw/ade20k")
    p.add_argument("--out", required=True, help="prepared root, e.g. data/prepared/ade20k")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)

    p = sub.add_parser("validate", help="check a prepared dataset (files, sizes, label values, panoptic ids)")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", required=True, help="prepared root, e.g. data/prepared/ade20k")
    p.add_argument("--split", default=None, help="one split (default: all)")
    p.add_argument("--real", action="store_true",
                   help="the root holds the official release (implied under data/prepared): also check the "
                        "official split sizes and class list, and refuse a SYNTHETIC.json marker")
    p.add_argument("--subset", action="store_true",
                   help="with a real root: accept fewer images than the official splits, knowingly")
    p.set_defaults(func=run)

    p = sub.add_parser("make", help="synth + prepare (+ validate): the smoke twin of one dataset")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--out", required=True, help="prepared twin root, e.g. data/synthetic/ade20k")
    p.add_argument("--raw", default=None, help="where to keep the raw twin, e.g. data/raw/synthetic/ade20k (default: a temp folder)")
    _add_twin_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from maskformer_core.data import get_metadata, prepare, synthesize, validate
    from maskformer_core.data.formats import check_replaceable

    action = args.data_command
    if action == "synth":
        s = _twin_settings(args)
        check_replaceable(args.out, "--out")  # a folder without our marker is the user's: refused, untouched
        synthesize(args.dataset, args.out, **s)
        print(f"wrote synthetic {args.dataset} twin (K={s['num_classes']}, {s['num_images']} images) to {args.out}")
    elif action == "prepare":
        check_replaceable(args.out, "--out")
        prepare(args.dataset, args.raw, args.out, progress=not args.no_progress)
        print(f"prepared {args.dataset} into {args.out}")
    elif action == "validate":
        from maskformer_core.data.validate import check_real_root

        real = args.real or _under_real_root(args.root)
        if real:  # the marker is refused before anything reads the root as a twin
            check_real_root(args.dataset, args.root, {}, subset=args.subset)
        counts = validate(args.dataset, args.root, args.split)
        notes = check_real_root(args.dataset, args.root, counts, subset=args.subset) if real else []
        meta = get_metadata(args.dataset, args.root)
        twin = " (synthetic twin)" if meta.synthetic else (" (official release)" if real else "")
        print(f"{args.dataset}{twin}: K={meta.num_classes}, ok: "
              + ", ".join(f"{k} {v} images" for k, v in counts.items())
              + "".join(f"; note: {n}" for n in notes))
    elif action == "make":
        s = _twin_settings(args)
        check_replaceable(args.out, "--out")  # both targets are checked before the twin is written
        if args.raw:
            check_replaceable(args.raw, "--raw")
        with tempfile.TemporaryDirectory(prefix=f"{args.dataset}-raw-") as tmp:
            raw = Path(args.raw) if args.raw else Path(tmp) / "raw"
            synthesize(args.dataset, raw, **s)
            prepare(args.dataset, raw, args.out, progress=False)
        counts = validate(args.dataset, args.out)
        print(f"made synthetic {args.dataset} twin at {args.out}: "
              + ", ".join(f"{k} {v} images" for k, v in counts.items()))
    return 0


def _under_real_root(root: str) -> bool:
    """True for a root inside the prepared real-data folder (`data/prepared`, pipeline.params.REAL_DATA_ROOT)."""
    from pipeline.params import REAL_DATA_ROOT

    real = (Path.cwd() / REAL_DATA_ROOT).resolve()
    path = Path(root).resolve()
    return path == real or real in path.parents
