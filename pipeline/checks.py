"""Cross-field checks of params.yaml's grid, run by params validation before anything is planned or launched.

- `check_cells`: impossible combinations inside one cell (per-pixel baselines have no matcher, fixed
  matching needs Q = K, box matching a box head, ...), with the official K;
- `check_references`: every grid table, row and column names a number of pipeline/data/paper_numbers.csv,
  and every column a metric key the cell's evaluation writes (`produced_metric_keys`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from maskformer_core.data.metadata import OFFICIAL_NUM_CLASSES, PANOPTIC_DATASETS
from maskformer_core.models.backbones import backbone_family
from pipeline.errors import UserError
from pipeline.paper_numbers import PAPER_NUMBERS, load_paper_numbers

if TYPE_CHECKING:  # types only: pipeline.params imports this module to validate
    from pipeline.params import Cell, Params


def cell_path(table: str, index: int, field: str | None = None) -> str:
    """The key path of a grid cell (or one of its fields) in params.yaml, for error messages."""
    return f"grid.{table}.cells[{index}]" + (f".{field}" if field else "")


def check_cells(params: Params, source: str = "params.yaml") -> None:
    """Cross-field rules of every cell (impossible combinations), checked with the official K."""
    for table, grid in params.grid.items():
        for i, cell in enumerate(grid.cells):
            _check_cell(cell, table, i, OFFICIAL_NUM_CLASSES[cell.dataset], source)


def _check_cell(cell: Cell, table: str, i: int, num_classes: int, source: str) -> None:
    def fail(field: str, msg: str) -> None:
        raise UserError(f"{source}: {cell_path(table, i, field)}: {msg}")

    panoptic = cell.dataset in PANOPTIC_DATASETS
    set_fields = cell.model_fields_set
    if cell.model in ("per_pixel", "per_pixel_plus"):
        for field in ("matching", "inference"):
            if getattr(cell, field) is not None:
                fail(field, f"{cell.model} has no {field} (paper Sec. 4, Baseline models); remove it")
        if cell.box_head:
            fail("box_head", f"{cell.model} has no box head")
        if not cell.self_attention:
            fail("self_attention", f"{cell.model}: the no-self-attention variant exists only for maskformer")
        if panoptic:
            fail("model", f"{cell.model} is a semantic baseline; {cell.dataset} is panoptic")
    if cell.model == "per_pixel":
        if cell.queries is not None:
            fail("queries", "per_pixel has no queries (paper Sec. 4, Baseline models)")
        if "dec_layers" in set_fields:
            fail("dec_layers", "per_pixel has no Transformer decoder (paper Sec. 4, Baseline models)")
    if cell.model == "per_pixel_plus" and cell.queries not in ("K", num_classes):
        fail("queries", f"per_pixel_plus needs queries = K ({num_classes} for {cell.dataset}; paper Table 4: 150 queries = K), got {cell.queries}")
    if cell.matching == "fixed" and cell.queries not in ("K", num_classes):
        fail("queries", f"fixed matching needs queries = K ({num_classes} for {cell.dataset}; paper Table 4), got {cell.queries}")
    if cell.matching == "box" and not cell.box_head:
        fail("matching", "box matching needs a box head (set box_head: true; paper Table 5)")
    if cell.inference in ("general", "detr") and not panoptic:
        fail("inference", f"{cell.inference} inference needs a panoptic dataset; use general_semantic for {cell.dataset}")
    if cell.inference in ("semantic", "general_semantic") and panoptic:
        fail("inference", f"{cell.dataset} is panoptic: use general or detr")
    if cell.tta and panoptic:
        fail("tta", "test-time augmentation applies to semantic segmentation only (paper Sec. 4.2)")
    if cell.pretrain is not None and backbone_family(cell.backbone) != "swin":
        fail("pretrain", "pretrain in1k/in22k selects the Swin checkpoint (paper Tables 1 and 3); ResNets have one")


# ---------------------------------------------------------------------------------------------------
# Cross-references: grid rows <-> paper numbers, columns <-> metric keys (checked at plan time)

# Scalar metric names pipeline/evaluation.py writes (its module docstring): SemSegEvaluator's, PQ^St's
# (official tools/evaluate_pq_for_semantic_segmentation.py) and the panoptic evaluator's (detectron2 panoptic_evaluation.py), each under `val/` (and `val_ms/` with TTA, semantic only).
SEMANTIC_METRICS = ("mIoU", "fwIoU", "mACC", "pACC")
PQ_STUFF_METRICS = ("PQSt", "SQSt", "RQSt")
PANOPTIC_METRICS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")
# Datasets whose panoptic records also carry the semantic GT (official ade20k-150-panoptic configs evaluate sem_seg too).
SEMANTIC_GT_PANOPTIC = ("ade20k_panoptic",)


def produced_metric_keys(cell: Cell) -> set[str]:
    """The scalar keys of the metrics.json a cell's evaluation writes (pipeline.evaluation.evaluate)."""
    strategy = cell.inference or ("per_pixel" if cell.model != "maskformer" else
                                  "general" if cell.dataset in PANOPTIC_DATASETS else "semantic")
    keys = {"perf/fps", "perf/train_peak_mem_mb"}  # measured at evaluation / during training (pipeline.engine)
    if cell.dataset not in PANOPTIC_DATASETS:
        names = SEMANTIC_METRICS + PQ_STUFF_METRICS
        keys |= {f"val/{m}" for m in names}
        if cell.tta:
            keys |= {f"val_ms/{m}" for m in names}
        return keys
    keys |= {f"val/{m}" for m in PANOPTIC_METRICS}
    if cell.dataset in SEMANTIC_GT_PANOPTIC and strategy != "detr":
        keys |= {f"val/{m}" for m in SEMANTIC_METRICS}
    return keys


def check_references(params: Params, source: str = "params.yaml") -> None:
    """Every grid table, row and column names a paper number, and every column a key its cell produces.

    A typo would otherwise cut a row off its paper number ("grid only") or mark good cells failed
    ("metrics.json has no ..."); here it is a UserError naming the key path, before anything runs.
    Duplicates are refused too: one (row, column) written by two cells of a table.
    """
    try:
        paper = load_paper_numbers()
    except ValueError as exc:  # a duplicate or malformed line of the CSV, named with its line number
        raise UserError(str(exc)) from None
    rows = {(p["table"], p["row"]) for p in paper}
    metrics_of: dict[str, set[str]] = {}
    for p in paper:
        metrics_of.setdefault(p["table"], set()).add(p["metric"])
    csv_name = f"pipeline/data/{PAPER_NUMBERS.name}"
    for table, grid in params.grid.items():
        if table not in metrics_of:
            raise UserError(f"{source}: grid.{table}: no table {table!r} in {csv_name} "
                            f"(tables there: {', '.join(sorted(metrics_of))})")
        seen: dict[tuple[str, str], int] = {}
        for i, cell in enumerate(grid.cells):
            if (table, cell.row) not in rows:
                known = sorted(r for t, r in rows if t == table)
                raise UserError(f"{source}: {cell_path(table, i, 'row')}: {cell.row!r} is not a row of {table} in "
                                f"{csv_name}; its rows: {', '.join(known)}")
            produced = produced_metric_keys(cell)
            for column, key in (cell.columns or grid.columns).items():
                where = cell_path(table, i, "columns") if cell.columns and column in cell.columns else f"grid.{table}.columns"
                if column not in metrics_of[table]:
                    raise UserError(f"{source}: {where}: column {column!r} is not a metric of {table} in {csv_name}; "
                                    f"its metrics: {', '.join(sorted(metrics_of[table]))}")
                if key not in produced:
                    raise UserError(f"{source}: {where}: {column!r} reads metric key {key!r}, which the evaluation of "
                                    f"{cell_path(table, i)} ({cell.row}) does not write; it writes {', '.join(sorted(produced))}")
                if (cell.row, column) in seen:
                    raise UserError(f"{source}: {cell_path(table, i)}: row {cell.row!r} column {column!r} is already given by "
                                    f"{cell_path(table, seen[(cell.row, column)])}; one of them would be ignored")
                seen[(cell.row, column)] = i
