"""`python -m pipeline model-stats-table`: #params and GFLOPs of every Table 1 / Table 3 paper architecture
into one JSON (the DVC stage `model_stats`; read by pipeline.tables). See pipeline/paper_model_stats.py."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "model-stats-table", help="params and GFLOPs of the Table 1/3 paper models -> JSON (DVC stage model_stats)",
        description="Resolves every row of grid.table1 / grid.table3 with the paper profile (real backbones, "
                    "official K), builds the model on CPU without weights and counts nn.Parameters and fvcore "
                    "GFLOPs (detectron2 convention) at the paper's input: the crop for Table 1, a fixed "
                    "800x1067 image for Table 3 (stand-in for the mean over 100 COCO val images). "
                    "Writes the JSON atomically.")
    p.add_argument("--out", default="reports/model_stats/paper_models.json", help="output JSON path")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file (without it, an existing file is refused and left as it is)")
    p.add_argument("--params", default="params.yaml", help="params file (grid.table1/table3, profiles.paper)")
    p.add_argument("--table", action="append", choices=["table1", "table3"],
                   help="only this table (repeatable; default both)")
    p.add_argument("--row", action="append", help="only this row label, e.g. 'MaskFormer R50' or "
                                                   "'table3:MaskFormer Swin-L†' (repeatable)")
    p.add_argument("--params-only", action="store_true", help="count parameters only, no FLOPs")
    p.add_argument("--skip-flops", action="append", default=[], metavar="ROW",
                   help="row whose FLOPs are too costly here; recorded as 'not computed (cost)' (repeatable)")
    p.add_argument("--last-layer", action="store_true",
                   help="also count GFLOPs with the last decoder layer's mask einsum only (a second trace)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import UserError
    from pipeline.paper_model_stats import STATS_TABLES, measure, paper_rows, write_stats
    from pipeline.params import load_params

    from pipeline.config import check_output_file

    check_output_file(args.out, "--out", args.overwrite)
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    params = load_params(args.params)
    specs = paper_rows(params, args.table or STATS_TABLES, args.row)  # validates filters before any work
    import torch

    torch.set_num_threads(args.threads)
    rows = measure(specs, flops=not args.params_only, skip_flops=args.skip_flops, last_layer=args.last_layer,
                   log=lambda line: print(line, file=sys.stderr, flush=True))
    out = write_stats(rows, args.out)
    print(f"model-stats-table: wrote {len(rows)} rows to {out}", file=sys.stderr)
    return 0
