"""#params and GFLOPs of the REAL paper architectures of Tables 1 and 3 (never the smoke models), for the
DVC stage `model_stats` (`python -m pipeline model-stats-table`) and the tables' params / GFLOPs columns.

Each table row of params.yaml `grid.table1` / `grid.table3` is resolved with the `paper` profile
(pipeline.grid.resolve_cell: official K, Q = 100, "+6 Enc" where the cell says so), built on CPU without
weights, and measured with the model engineer's counters (maskformer_core.models count_parameters /
flops.count_flops; MaskFormer tools/analyze_model.py: nn.Parameters only, fvcore with detectron2's ignored ops,
eval forward of a zero image at batch 1 including the mask upsample, semantic einsum and final resize). Rows
sharing an architecture and input size are measured once.

Input sizes (MaskFormer ``tools/analyze_model.py``; paper Tables 1 and 3):
- Table 1 (ADE20K, semantic): the training crop, 512x512 (Swin-B/L: 640x640, params.yaml
  input_overrides), as the official `analyze_model.py --use-fixed-input-size` does.
- Table 3 (COCO panoptic): the paper averages 100 val images, which we do not have. We use ONE fixed
  input, `pipeline.model_inputs.input_size("coco_panoptic", ...)` = 800x1067 (the test resize,
  short 800 / max 1333, of COCO's most common 640x480 image). Every row says so in `input_note`.

Output JSON (`write_stats`, atomic): {"schema", "created_by", "device", "torch", "params_convention",
"flops_convention", "rows": [{"table", "row", "dataset", "backbone", "model_kwargs", "params",
"params_M", "input_size", "input_note", "gflops", "gflops_last_layer_only" (null unless
--last-layer), "gflops_status"}]} (the build/count `seconds`, `cpu_seconds` are printed, not stored); `gflops_status` is "computed",
"not computed (cost)" or "not requested".
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from maskformer_core.data.metadata import get_metadata
from pipeline.config import atomic_write_text
from pipeline.errors import UserError
from pipeline.grid import resolve_cell
from pipeline.model_inputs import input_size
from pipeline.params import Params

SCHEMA = "maskformer-paper-model-stats/1"
DEFAULT_OUT = Path("reports/model_stats/paper_models.json")
STATS_TABLES = ("table1", "table3")  # the paper tables with params / GFLOPs columns
PAPER_PROFILE = "paper"  # params.yaml profile: the published architectures (paper Sec. 4, official configs/)
PARAMS_CONVENTION = ("nn.Parameters only (FrozenBN buffers excluded), "
                     "fvcore parameter_count as in MaskFormer tools/analyze_model.py")
FLOPS_CONVENTION = (
    "fvcore FlopCountAnalysis with detectron2's ignored ops (1 fused multiply-add = 1 flop), batch 1, eval, "
    "zero image; includes mask upsample + semantic einsum + final resize (MaskFormer tools/analyze_model.py). "
    "`gflops` counts the mask einsums of all 6 decoder layers (what the official tools/analyze_model.py counts, docs/FIDELITY.md §5); "
    "`gflops_last_layer_only` counts the last layer's only (what the paper's numbers appear to use)"
)
COCO_INPUT_NOTE = ("fixed 800x1067 input (test resize of a 640x480 image) standing in for the paper's mean "
                   "over 100 COCO val images, which we do not have (MaskFormer tools/analyze_model.py)")


def paper_rows(params: Params, tables: Iterable[str] = STATS_TABLES,
               rows: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One spec per (table, row label) of the selected grid tables, with the paper architecture.

    Returns dicts {"table", "row", "dataset", "backbone", "model_kwargs", "input_size" [H, W], "input_note"}.
    `rows` filters by row label ("MaskFormer R50") or "table:row"; an unknown filter is a UserError.
    """
    if PAPER_PROFILE not in params.profiles:
        raise UserError(f"params.yaml: profiles.{PAPER_PROFILE} is missing; the model statistics use its "
                        f"published architectures")
    if params.profiles[PAPER_PROFILE].synthetic:
        raise UserError(f"params.yaml: profiles.{PAPER_PROFILE}.synthetic must be false (paper models only)")
    wanted = list(rows) if rows is not None else None
    specs: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for table in tables:
        if table not in params.grid:
            raise UserError(f"params.yaml: grid.{table} is missing")
        for i, cell in enumerate(params.grid[table].cells):
            if (table, cell.row) in seen:
                continue  # the m.s. cell of a row has the same model
            if wanted is not None and cell.row not in wanted and f"{table}:{cell.row}" not in wanted:
                continue
            seen.add((table, cell.row))
            tcfg, _, _, _ = resolve_cell(params, PAPER_PROFILE, cell, 0, where=f"grid.{table}.cells[{i}]",
                                         data_versions={cell.dataset: "n/a"})
            kwargs = {k: v for k, v in tcfg["model"].items() if k not in ("pretrained", "weights")}  # random init: no download
            # the plan's crop; COCO panoptic's DETR mapper crops at random sizes (metadata augmentation "detr")
            crop = tcfg["data"].get("crop_size") if get_metadata(cell.dataset).augmentation != "detr" else None
            if crop:  # semantic rows: the training crop (tools/analyze_model.py --use-fixed-input-size)
                size, note = [int(crop[0]), int(crop[1])], f"fixed {crop[0]}x{crop[1]} crop (MaskFormer tools/analyze_model.py)"
            else:  # COCO panoptic: no crop; one documented stand-in for the 100-image mean
                size, note = list(input_size(cell.dataset, cell.backbone)), COCO_INPUT_NOTE
            specs.append({"table": table, "row": cell.row, "dataset": cell.dataset, "backbone": cell.backbone,
                          "model_kwargs": kwargs, "input_size": size, "input_note": note})
    if wanted is not None:
        found = {s["row"] for s in specs} | {f"{s['table']}:{s['row']}" for s in specs}
        missing = [w for w in wanted if w not in found]
        if missing:
            raise UserError(f"--row {missing[0]!r} is not a row of grid.{'/'.join(tables)} in params.yaml")
    return specs


def measure(specs: list[dict[str, Any]], *, flops: bool = True, skip_flops: Iterable[str] = (),
            last_layer: bool = False, log=print) -> list[dict[str, Any]]:
    """Build each spec's model and count params (and GFLOPs unless skipped); identical models are built once.

    `skip_flops`: row labels (or "table:row") whose FLOPs are too costly here -> "not computed (cost)".
    `last_layer`: also count `gflops_last_layer_only` (a second fvcore trace, doubling the FLOP cost).
    `seconds` is wall time, `cpu_seconds` process CPU time (all threads) of building + counting.
    """
    import torch

    from maskformer_core.models import build_model, count_parameters
    from maskformer_core.models.flops import count_flops

    skip = set(skip_flops)
    cache: dict[str, dict[str, Any]] = {}
    out = []
    for spec in specs:
        want_flops = flops and spec["row"] not in skip and f"{spec['table']}:{spec['row']}" not in skip
        key = json.dumps([spec["model_kwargs"], spec["input_size"], want_flops], sort_keys=True)
        if key not in cache:
            start, cpu_start = time.perf_counter(), time.process_time()
            torch.manual_seed(0)
            model = build_model(**spec["model_kwargs"])
            res: dict[str, Any] = {"params": count_parameters(model), "gflops": None,
                                   "gflops_last_layer_only": None}
            if want_flops:
                size = tuple(spec["input_size"])
                res["gflops"] = round(count_flops(model, size)["total"], 3)
                if last_layer:
                    res["gflops_last_layer_only"] = round(
                        count_flops(model, size, last_layer_only_masks=True)["total"], 3)
            res["seconds"] = round(time.perf_counter() - start, 1)
            res["cpu_seconds"] = round(time.process_time() - cpu_start, 1)
            del model
            cache[key] = res
        res = cache[key]
        status = "computed" if want_flops else ("not computed (cost)" if flops else "not requested")
        row = dict(spec, params=res["params"], params_M=round(res["params"] / 1e6, 3), gflops=res["gflops"],
                   gflops_last_layer_only=res["gflops_last_layer_only"], gflops_status=status,
                   seconds=res["seconds"], cpu_seconds=res["cpu_seconds"])
        out.append(row)
        gf = f"{row['gflops']:.2f} GFLOPs" if row["gflops"] is not None else f"GFLOPs {status}"
        if row["gflops_last_layer_only"] is not None:
            gf += f" (last layer only {row['gflops_last_layer_only']:.2f})"
        log(f"{spec['table']} {spec['row']}: {row['params_M']:.3f} M params, {gf} at "
            f"{spec['input_size'][0]}x{spec['input_size'][1]} [{res['seconds']:.1f} s wall, "
            f"{res['cpu_seconds']:.1f} s CPU]")
    return out


TIMING_KEYS = ("seconds", "cpu_seconds")  # measured per run: printed by `measure`, never written


def write_stats(rows: list[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Write the stats JSON atomically (temp file in the same folder, then rename)."""
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The file is tracked in git (dvc.yaml model_stats, cache: false): only deterministic values go in it,
    # so a fresh clone's `dvc repro` rewrites it byte for byte; timings are printed, not stored.
    rows = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]
    doc = {"schema": SCHEMA, "created_by": "python -m pipeline model-stats-table", "device": "cpu",
           "torch": torch.__version__, "params_convention": PARAMS_CONVENTION, "flops_convention": FLOPS_CONVENTION,
           "rows": rows}
    atomic_write_text(out, json.dumps(doc, indent=1) + "\n")  # no temp file left; an OSError names `out`
    return out


def load_stats(path: str | os.PathLike) -> dict[tuple[str, str], dict[str, Any]] | None:
    """{(table, row): row dict} from a stats JSON, or None when the file does not exist.

    A file of another schema or without "rows" is a UserError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); rerun `dvc repro model_stats`") from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("rows"), list):
        raise UserError(f"{path}: not a {SCHEMA} file; rerun `dvc repro model_stats`")
    return {(r["table"], r["row"]): r for r in doc["rows"]}
