"""`python -m pipeline convert`: released and trained checkpoints between formats.

    python -m pipeline convert --from hf DIR --out FILE.pt            # HF save_pretrained folder -> ours
    python -m pipeline convert --from detectron2 model_final_x.pkl --out FILE.pt
    python -m pipeline convert runs/.../checkpoints/final.pt --to hf OUTDIR     # ours -> HF folder
    python -m pipeline convert FILE.pt --to detectron2 OUT.pkl                   # ours -> official names

A converted `.pt` holds the weights under our (= official detectron2) names, the build_model options
and where they came from; `python -m pipeline evaluate --checkpoint FILE.pt --dataset D` evaluates it.
Nothing is overwritten: an existing output is an error.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import UserError

TARGETS = ("hf", "detectron2")


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert checkpoints: HF transformers / detectron2 .pkl <-> this project",
                              description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="fmt", choices=("hf", "detectron2", "ours"),
                   help="source format (default: detected: a folder is hf, .pkl detectron2, .pt ours)")
    p.add_argument("source", help="source checkpoint: HF save_pretrained folder, detectron2 .pkl, or .pt")
    p.add_argument("--out", help="write our checkpoint (.pt) here")
    p.add_argument("--to", nargs=2, metavar=("{hf,detectron2}", "DEST"),
                   help="write an HF save_pretrained folder (hf DEST) or an official-names .pkl (detectron2 DEST)")
    p.add_argument("--nheads", type=int, default=8,
                   help="attention heads of a detectron2 .pkl (not stored in the file; MASK_FORMER.NHEADS 8 in every official config)")
    p.set_defaults(func=run)


def _class_names(prov: dict, num_classes: int) -> dict[int, str] | None:
    """id2label for an HF export: the source's own (HF), else the trained dataset's class names (F) when K fits."""
    if prov.get("id2label"):
        return {int(k): v for k, v in prov["id2label"].items()}
    dataset = prov.get("trained_config_dataset")
    if dataset:
        from maskformer_core.data import get_metadata

        names = list(get_metadata(dataset).class_names)
        if len(names) == num_classes:
            return dict(enumerate(names))
    return None  # class_0 .. class_{K-1}


def run(args) -> int:
    from maskformer_core.models import build_model
    from pipeline.released import load_any, write_converted

    src, fmt = args.source, args.fmt
    if bool(args.out) == bool(args.to):
        raise UserError("give exactly one of --out FILE.pt or --to {hf,detectron2} DEST")
    if args.to and args.to[0] not in TARGETS:
        raise UserError(f"--to {args.to[0]!r}: expected one of {', '.join(TARGETS)}")
    dest = Path(args.out or args.to[1])
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise UserError(f"{dest} exists; choose a new output (nothing is overwritten)")
    if args.out and dest.suffix != ".pt":
        raise UserError(f"--out {dest}: expected a .pt file")
    kwargs, sd, prov = load_any(src, fmt, nheads=args.nheads)
    if args.out:
        write_converted(kwargs, sd, prov, dest)
    else:
        model = build_model(**{k: v for k, v in kwargs.items() if k != "pretrained"})
        model.load_state_dict(sd, strict=True)
        if args.to[0] == "hf":
            from maskformer_core.models.hf import save_hf_pretrained

            save_hf_pretrained(model, kwargs, dest, id2label=_class_names(prov, int(kwargs["num_classes"])))
        else:
            from maskformer_core.models.official import save_official_pkl

            save_official_pkl(model, dest)
    shown = {k: kwargs[k] for k in ("backbone", "num_classes", "num_queries", "pixel_decoder", "dec_layers") if k in kwargs}
    print(json.dumps({"written": str(dest), "from": prov.get("format"), "model": shown}, indent=1))
    return 0
