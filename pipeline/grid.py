"""The study grid: params.yaml tables -> cells -> resolved run configs per profile, deduplicated by hash.

A table cell (a row of a paper table, one seed) resolves, at plan time, to a complete `RunConfig`
(pipeline/config.py; metadata defaults filled by `resolve_defaults` from `plan_metadata`) and to two ids,
both the readable slug plus that config's `pipeline.config.result_hash` (one hash, one key list):

- the **train id**: scope "train", everything that changes the trained weights (model, loss, data and
  its version, solver, seed, world size). Cells with the same train id share one training run, e.g.
  Table 2's MaskFormer ADE20K row and Table 6's Q100 row, or R50/R101/R101c rows in the smoke profile
  (all SmokeR18).
- the **eval id**: scope "eval", the same plus the `test:` section. A cell whose resolved test section is
  the training run's (its dataset's standard inference, single scale) is evaluated by the training run
  itself (eval id = train id); other cells (Table 7 "general", Table 3 "DETR post-processing",
  multi-scale columns) are evaluation-only variants that reuse the trained checkpoint and never retrain.

Ids look like ``ade20k-mf-SmokeR18-q100-d6-s0-3f9a1c2e`` (variants: ``...-s0-general_semantic-<hash>``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import yaml

from maskformer_core.data.metadata import DatasetMeta, get_metadata, read_synthetic_marker, subset_meta, twin_class_indices
from maskformer_core.errors import CheckpointError
from maskformer_core.models.defaults import default_num_queries
from maskformer_core.models.weights import DEFAULT_PRETRAIN, OFFICIAL_FILES, hub_tag, is_hub
from pipeline.checks import cell_path
from pipeline.config import flatten, parse_config, resolve_defaults, result_hash
from pipeline.errors import UserError
from pipeline.subset import cap_world_size, one_row_per_table
from pipeline.params import (
    Cell,
    Params,
    Profile,
    backbone_family,
)

MAIN_TABLES = ("table1", "table2", "table3")
ABLATION_TABLES = ("table4", "table5", "table6", "table7", "table8")


@dataclasses.dataclass
class TrainUnit:
    """One training run (deduplicated). `config` is a RunConfig dict (pipeline.config)."""

    train_id: str
    config: dict[str, Any]
    gpu_hours: float

    @property
    def run_dir(self) -> str:
        return self.config["run"]["output_dir"]


@dataclasses.dataclass
class EvalUnit:
    """One evaluation: the training run's own (eval_id == train_id) or an evaluation-only variant."""

    eval_id: str
    train_id: str
    config: dict[str, Any]

    @property
    def is_variant(self) -> bool:
        return self.eval_id != self.train_id

    @property
    def run_dir(self) -> str:
        return self.config["run"]["output_dir"]


@dataclasses.dataclass
class GridRow:
    """One cell of a table as written in params.yaml, with its resolved evaluation per seed."""

    table: str
    index: int
    row: str
    columns: dict[str, str]
    cell: Cell
    eval_ids: list[str]


@dataclasses.dataclass
class Grid:
    profile: str
    rows: list[GridRow]
    train: dict[str, TrainUnit]
    evals: dict[str, EvalUnit]

    def tables(self) -> list[str]:
        return list(dict.fromkeys(r.table for r in self.rows))

    def gpu_hours(self) -> float:
        return sum(u.gpu_hours for u in self.train.values())


# ---------------------------------------------------------------------------------------------------
# Data version and number of classes


def data_root(profile: Profile, dataset: str) -> str:
    return str(Path(profile.data_root) / dataset)


def plan_metadata(dataset: str, root: str | Path, synthetic: bool, twin_classes: int | None = None) -> DatasetMeta:
    """The dataset metadata a plan resolves its defaults from, without requiring prepared data.

    Real-data profiles: the dataset's official metadata (official K, splits, sizes; a twin in their root is
    refused by the study). Synthetic profiles: the twin in `root` if it has been made, else the twin that
    params.yaml `data.<dataset>.num_classes` (`twin_classes`) describes (`twin_class_indices`), so cell
    ids do not change once the data stage has run. The job re-reads the data root and checks it agrees
    (pipeline.config.check_against_metadata).
    """
    if not synthetic:
        return get_metadata(dataset)
    if read_synthetic_marker(root) is not None:
        return get_metadata(dataset, root)
    if twin_classes is not None:
        return subset_meta(get_metadata(dataset), twin_class_indices(dataset, int(twin_classes)))
    return get_metadata(dataset)


def data_version(
    root: str | Path, lock_path: str | Path | tuple[str | Path, ...] = ("dvc.lock", "data/dvc.lock")
) -> str:
    """Version of a prepared data folder: its md5 in a lock file, else a hash of SYNTHETIC.json, else 'none'.

    Twins (data/synthetic/<d>) are outputs of dvc.yaml's `data` stages (dvc.lock); real datasets
    (data/prepared/<d>) of data/dvc.yaml's `prepare` stages (data/dvc.lock, paths from the repo root).
    """
    root = Path(root)
    locks = [Path(p) for p in ((lock_path,) if isinstance(lock_path, (str, Path)) else lock_path)]
    for lock in locks:
        if not lock.is_file():
            continue
        try:
            stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        except Exception:  # a half-written lock file is read again next time
            stages = {}
        for stage in stages.values():
            for out in stage.get("outs", []) or []:
                if Path(out.get("path", "")).as_posix().rstrip("/") == root.as_posix().rstrip("/"):
                    if out.get("md5"):
                        return str(out["md5"]).replace(".dir", "")[:12]
    marker = root / "SYNTHETIC.json"
    if marker.is_file():
        return hashlib.sha256(marker.read_bytes()).hexdigest()[:12]
    return "none"


# ---------------------------------------------------------------------------------------------------
# Pretrained weights per backbone


def resolve_pretrained(spec: str | dict[str, str] | None, backbone: str, pretrain: str | None, where: str) -> str | None:
    """The backbone initialisation of one cell: None, a local file or "hub:<timm tag>" (UserError naming `where`).

    `spec` is the profile's `model.pretrained`: one source for every backbone, or a mapping backbone ->
    source with "*" as the fallback and "<backbone>:<pretrain>" for a non-default pretraining (Swin-B
    "in1k" rows of Tables 1/3). "hub" resolves to the timm tag of that backbone and pretraining, so the
    resolved config names the exact weights (Swin-B IN-1K: swin_base_patch4_window12_384.ms_in1k).
    """
    if spec is None:
        return None
    default = DEFAULT_PRETRAIN.get(backbone, "in1k")
    custom = pretrain is not None and pretrain != default
    if isinstance(spec, dict):
        if custom:
            value = spec.get(f"{backbone}:{pretrain}") or (spec.get("*") if spec.get("*") == "hub" else None)
            if value is None:
                raise UserError(f"{where}: no source for {backbone} {pretrain} weights; add "
                                f"'{backbone}:{pretrain}: hub' or a local file to the mapping")
        else:
            value = spec.get(backbone) or spec.get(f"{backbone}:{default}") or spec.get("*")
            if value is None:
                raise UserError(f"{where}: no entry for {backbone} (and no '*'); add '{backbone}: hub' or a local file")
    else:
        value = spec
        if custom and not is_hub(value):
            raise UserError(f"{where}: one file {value!r} cannot give both the {default} and the {pretrain} "
                            f"{backbone} weights; use a mapping with a '{backbone}:{pretrain}' entry")
    if value == "hub":
        try:
            return "hub:" + hub_tag(backbone, pretrain)
        except CheckpointError as exc:
            example = OFFICIAL_FILES.get(backbone, "weights.pth").split(" ")[0]
            raise UserError(f"{where}: {exc}. Give {backbone} its own local file in the mapping, e.g. "
                            f"{{'*': hub, {backbone}: data/weights/{example}}}") from None
    return value


def check_pretrained_files(grid: "Grid", source: str) -> None:
    """Every local weights file the grid's training runs start from exists (UserError naming it and where
    to put it), so a study stops before any job is submitted rather than in each job."""

    for unit in grid.train.values():
        src = unit.config["model"].get("pretrained")
        if src and not is_hub(src) and not Path(src).is_file():
            backbone = unit.config["model"]["backbone"]
            raise UserError(f"{source}: pretrained weights for {backbone} (cell {unit.train_id}) not found at {src}; "
                            f"download {OFFICIAL_FILES.get(backbone, 'the weights file')} and put it there "
                            f"(or change the path in the profile's model.pretrained)")


# ---------------------------------------------------------------------------------------------------
# Resolution


def _merge_input(params: Params, profile: Profile, dataset: str, paper_backbone: str, official: Any) -> dict[str, Any]:
    """data-section sizes: recipe < input_overrides[dataset]['*' / backbone] < profile.input."""
    out: dict[str, Any] = {}
    recipe = params.recipes[dataset]
    if recipe.crop is not None:
        out["crop"] = list(recipe.crop)
    for key in ("*", paper_backbone):
        over = params.input_overrides.get(dataset, {}).get(key)
        if over is not None:
            out.update({k: v for k, v in over.model_dump().items() if v is not None})
    prof = {k: v for k, v in profile.input.model_dump().items() if v is not None}
    if "size_divisibility" in prof:
        # Only datasets that pad to the crop keep padding (Cityscapes -1 and COCO panoptic 0 stay; INPUT.SIZE_DIVISIBILITY of the official configs).
        official_div = getattr(official, "size_divisibility", 1) if official is not None else 1
        if official_div <= 0:
            prof.pop("size_divisibility")
    out.update(prof)
    if "crop" in out:
        out["crop"] = list(out["crop"])
    return out


def resolve_cell(
    params: Params, profile_name: str, cell: Cell, seed: int, *, where: str, data_versions: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """(train config, eval config, train_id, eval_id) of one cell and seed. Raises UserError naming `where`."""
    profile = params.profiles[profile_name]
    recipe = params.recipes[cell.dataset]
    root = data_root(profile, cell.dataset)
    twin = params.data.get(cell.dataset, {})
    meta = plan_metadata(cell.dataset, root, profile.synthetic,
                         twin.get("num_classes") if isinstance(twin, dict) else None)
    k = meta.num_classes
    if cell.model == "per_pixel_plus" or cell.matching == "fixed":
        if cell.queries not in ("K", k):
            raise UserError(f"{where}.queries: needs queries = K = {k} for {cell.dataset} in profile {profile_name}")
    backbone = profile.backbone_map.get(cell.backbone, cell.backbone)
    family = backbone_family(backbone)
    sizes = _merge_input(params, profile, cell.dataset, cell.backbone, get_metadata(cell.dataset))
    enc = cell.pixel_decoder == "+6Enc"
    if cell.model == "per_pixel":
        queries = None
    elif cell.queries == "K" or cell.model == "per_pixel_plus":
        queries = k
    else:
        # None: MODEL.MASK_FORMER.NUM_OBJECT_QUERIES (resolve_defaults), unless the profile scales the
        # default down (smoke: default_queries, queries_by_matching for one matching's cells)
        default = profile.queries_by_matching.get(cell.matching or "bipartite") or profile.default_queries
        queries = cell.queries if cell.queries is not None else default
    model = {
        "arch": cell.model,
        "backbone": backbone,
        "num_classes": k,
        "num_queries": queries,
        "dec_layers": cell.dec_layers,
        "dec_self_attention": cell.self_attention,
        "pixel_decoder": "transformer_encoder" if enc else "base",  # paper Table 3 "+6 Enc": TransformerEncoderPixelDecoder
        "transformer_in_feature": "transformer_encoder" if enc else "res5",  # MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        "box_head": cell.box_head,
    }
    if recipe.size_divisibility is not None and cell.model == "maskformer":
        model["size_divisibility"] = recipe.size_divisibility  # coco-panoptic configs: SIZE_DIVISIBILITY 0
    model.update({k2: v for k2, v in profile.model.model_dump().items() if v is not None and k2 != "pretrained"})
    model["pretrained"] = resolve_pretrained(profile.model.pretrained, backbone, cell.pretrain,
                                             where=f"profiles.{profile_name}.model.pretrained ({where})")
    matching = cell.matching or "bipartite"  # one spelling from params.yaml to build_criterion
    data = {
        "dataset": cell.dataset,
        "root": root,
        "crop_size": sizes.get("crop"),
        "short_sizes": sizes.get("short_sizes"),
        "max_size": sizes.get("max_size"),
        "test_short_size": sizes.get("test_short_size"),
        "test_max_size": sizes.get("test_max_size"),
        "size_divisibility": sizes.get("size_divisibility"),
        "version": (data_versions or {}).get(cell.dataset) or data_version(root),
    }
    if "num_workers" in sizes:
        data["num_workers"] = sizes["num_workers"]
    solver: dict[str, Any] = {}
    for source in (params.families.get(family), params.schedule_warmup.get(recipe.schedule, {}).get(family)):
        if source is not None:
            solver.update({k2: v for k2, v in source.model_dump().items() if v is not None})
    if recipe.micro_batch is not None:
        solver["micro_batch"] = recipe.micro_batch  # the official per-GPU batch (COCO panoptic: 1)
    ps = profile.solver_for(cell.dataset)
    solver.update({k2: v for k2, v in ps.model_dump(exclude={"ims_per_batch", "max_iter", "iter_scale", "scale_warmup"}).items()
                   if v is not None})
    max_iter = ps.max_iter or max(1, round(recipe.max_iter * (ps.iter_scale or 1.0)))
    scale = max_iter / recipe.max_iter
    solver.update(
        {
            "schedule": recipe.schedule,
            # milestones keep their fraction of training (coco-panoptic SOLVER.STEPS: 369,600 of 554,400 = 2/3)
            "steps": [max(1, round(s * scale)) for s in recipe.steps],
            "max_iter": max_iter,
            "ims_per_batch": ps.ims_per_batch or recipe.ims_per_batch,
        }
    )
    if solver.get("micro_batch") and solver["micro_batch"] >= solver["ims_per_batch"]:
        solver.pop("micro_batch")  # one pass per iteration anyway
    if ps.scale_warmup and solver.get("warmup_iters", 0) > 0:
        solver["warmup_iters"] = min(max_iter - 1, max(1, round(solver["warmup_iters"] * scale)))
    if solver.get("warmup_iters", 0) >= max_iter:
        raise UserError(
            f"{where}: warmup of {solver['warmup_iters']} iterations >= max_iter {max_iter} in profile {profile_name} "
            f"(set profiles.{profile_name}.solver.warmup_iters or solver_by_task)"
        )
    num_gpus = profile.num_gpus(cell.dataset)  # world size: one process per GPU (detectron2 launch)
    num_gpus = cap_world_size(solver, num_gpus, profile.max_world_size, where)  # a deviation; pipeline/subset.py
    if solver["ims_per_batch"] % num_gpus:
        raise UserError(
            f"{where}: solver.ims_per_batch {solver['ims_per_batch']} is not divisible by the {num_gpus} "
            f"processes of profile {profile_name} (profiles.{profile_name}.gpus): the per-GPU batch must be whole")
    arch_short = {"maskformer": "mf", "per_pixel": "pp", "per_pixel_plus": "ppp"}[cell.model]
    slug = f"{cell.dataset}-{arch_short}-{backbone}"
    if cell.model == "maskformer":
        slug += f"-q{queries or default_num_queries(cell.model, k)}"
    if cell.model != "per_pixel":
        slug += f"-d{cell.dec_layers}"
    if not cell.self_attention:
        slug += "-nosa"
    if enc:
        slug += "-enc6"
    if matching != "bipartite":
        slug += f"-{matching}"
    if model.get("pretrained") and cell.pretrain:
        slug += f"-{cell.pretrain}"
    slug += f"-s{seed}"
    # test: None strategy = the dataset's standard inference (resolve_defaults: the one place it is chosen)
    test = {"strategy": cell.inference, "tta": cell.tta}
    if cell.tta:
        if sizes.get("tta_scales"):  # paper appendix A: Mapillary 0.5/1.0/1.5 of the test size
            test["tta_scales"] = sizes["tta_scales"]
        else:
            test.update({"tta_sizes": sizes.get("tta_sizes"), "tta_max_size": sizes.get("tta_max_size")})
    profile_test = {k2: v for k2, v in profile.test.model_dump().items() if v is not None}
    test.update(profile_test)
    default_test = dict(profile_test, tta=False)
    run = {
        "seed": seed,
        "experiment": f"maskformer-{profile_name}",
        "tags": {"profile": profile_name, "data_version": data["version"]},
        "eval_period": recipe.eval_period,
        "num_gpus": num_gpus,
    }
    run.update({k2: v for k2, v in profile.run.model_dump().items() if v is not None})
    train_raw = {
        "model": model,
        "loss": {"matching": matching},
        "data": {k2: v for k2, v in data.items() if v is not None},
        "solver": solver,
        "test": {k2: v for k2, v in default_test.items() if v is not None},
        "run": run,
    }
    eval_raw = json.loads(json.dumps(train_raw))
    eval_raw["test"] = {k2: v for k2, v in test.items() if v is not None}
    # Plan time: the complete, validated RunConfig (metadata defaults filled); a bad cell fails here,
    # before any job is submitted, naming the cell.
    source = f"profile {profile_name}: {where} ({cell.row}, seed {seed})"
    train_cfg = resolve_defaults(parse_config(train_raw, source=source), meta)
    eval_cfg = resolve_defaults(parse_config(eval_raw, source=source), meta)
    train_id = f"{slug}-{result_hash(train_cfg, 'train')}"
    if eval_cfg.test == train_cfg.test:
        eval_id, eval_cfg = train_id, train_cfg
    else:
        tag = eval_cfg.test.strategy + ("-tta" if cell.tta else "")
        eval_id = f"{slug}-{tag}-{result_hash(eval_cfg, 'eval')}"
    runs = Path(params.study.runs_root) / profile_name
    train_out, eval_out = train_cfg.to_dict(), eval_cfg.to_dict()
    # The ids name the run folders and runs (result-free keys: the hashes above do not change).
    train_out["run"].update(output_dir=str(runs / train_id), run_name=train_id,
                            tags=dict(train_out["run"]["tags"], cell_id=train_id))
    eval_out["run"].update(output_dir=str(runs / eval_id), run_name=eval_id,
                           tags=dict(eval_out["run"]["tags"], cell_id=eval_id, train_id=train_id))
    return train_out, eval_out, train_id, eval_id


def estimate_gpu_hours(params: Params, cfg: dict[str, Any], paper_backbone: str, num_gpus: int = 1) -> float:
    """GPU-hours of one training run (time_model in params.yaml): images x train_factor / fps, area-scaled."""
    tm = params.time_model
    fps, ref = tm.fps.get(cfg["model"]["backbone"], tm.fps.get(paper_backbone, (10.0, 512)))
    crop = cfg["data"].get("crop_size") or [ref, ref]
    area = (crop[0] * crop[1]) / float(ref * ref)
    images = cfg["solver"]["max_iter"] * cfg["solver"]["ims_per_batch"]
    seconds = images * tm.train_factor * area / fps
    return seconds / 3600.0 + tm.eval_hours


def select_tables(params: Params, tables: Iterable[str] | None) -> list[str]:
    """Table names to run; accepts 'table6', '6', 'main' (1-3), 'ablations' (4-8), 'all'."""
    if not tables:
        return list(params.grid)
    out: list[str] = []
    for t in tables:
        t = str(t).strip()
        if t in ("all",):
            names = list(params.grid)
        elif t == "main":
            names = [n for n in MAIN_TABLES if n in params.grid]
        elif t == "ablations":
            names = [n for n in ABLATION_TABLES if n in params.grid]
        elif t.isdigit() and f"table{t}" in params.grid:
            names = [f"table{t}"]
        elif t in params.grid:
            names = [t]
        else:
            raise UserError(f"unknown table {t!r}; expected one of {', '.join(params.grid)}, main, ablations, all")
        out.extend(n for n in names if n not in out)
    return out


def expand(
    params: Params,
    profile: str | None = None,
    tables: Iterable[str] | None = None,
    data_versions: dict[str, str] | None = None,
) -> Grid:
    """Every selected table's cells for one profile, resolved and deduplicated."""
    profile = profile or params.study.profile
    if profile not in params.profiles:
        raise UserError(f"unknown profile {profile!r}; defined in params.yaml: {', '.join(params.profiles)}")
    prof = params.profiles[profile]
    rows: list[GridRow] = []
    train: dict[str, TrainUnit] = {}
    evals: dict[str, EvalUnit] = {}
    versions = dict(data_versions or {})
    for table in select_tables(params, tables):
        grid = params.grid[table]
        for i, cell in enumerate(grid.cells):
            where = cell_path(table, i)
            entry = next((r for r in params.released if r.fits(table, cell)), None)
            if prof.released and entry is None:
                continue  # evaluation-only profile: rows without a released checkpoint are not in it
            if cell.dataset not in versions:
                versions[cell.dataset] = data_version(data_root(prof, cell.dataset))
            n = cell.seeds or prof.num_seeds(cell.dataset)
            ids = []
            for seed in range(n):
                tcfg, ecfg, tid, eid = resolve_cell(params, profile, cell, seed, where=where, data_versions=versions)
                if prof.released:
                    tcfg, tid = released_unit(params, prof, entry, ecfg, eid)
                    eid = tid
                if tid not in train:
                    hours = params.time_model.eval_hours if prof.released else estimate_gpu_hours(params, tcfg, cell.backbone)
                    train[tid] = TrainUnit(tid, tcfg, hours)
                if eid not in evals:
                    evals[eid] = EvalUnit(eid, tid, tcfg if eid == tid else ecfg)
                ids.append(eid)
            rows.append(GridRow(table, i, cell.row, dict(cell.columns or grid.columns), cell, ids))
    if prof.one_row_per_table:
        return one_row_per_table(Grid(profile, rows, train, evals))
    return Grid(profile, rows, train, evals)


def released_unit(params: Params, prof: Profile, entry: Any, ecfg: dict[str, Any], eid: str) -> tuple[dict[str, Any], str]:
    """An evaluation-only unit of a `released` profile: the cell's evaluation config with `model.weights`
    = <checkpoint_root>/<file> (no backbone pretraining: the released file holds every weight) and the
    file's sources as run tags (the offline message and the tables read them). Its id is the evaluation's
    slug, "rel" and the config's `result_hash` (scope "eval"; the weights count by file name), so pointing
    the entry at another file re-runs the cell."""
    cfg = json.loads(json.dumps(ecfg))
    cfg["model"]["weights"] = str(Path(prof.checkpoint_root) / entry.file)
    cfg["model"]["pretrained"] = None
    tags = {f"released_{k}": str(v) for k, v in entry.model_dump().items()
            if k in ("url", "hf_id", "md5_prefix", "sha256", "config", "file") and v is not None}
    uid = f"{eid.rsplit('-', 1)[0]}-rel-{result_hash(cfg, 'eval')}"
    cfg["run"].update(output_dir=str(Path(cfg["run"]["output_dir"]).with_name(uid)), run_name=uid,
                      eval_period=0, tags=dict(cfg["run"]["tags"], cell_id=uid, train_id=uid, **tags))
    return cfg, uid


def profile_differences(params: Params, profile: str, tables: Iterable[str] | None = None) -> dict[str, tuple[set, set]]:
    """What a rehearsal profile changes against the profile it rehearses (`profiles.<p>.rehearses`):
    {flattened config key: (values there, values here)} over every table cell's training config,
    leaving out the keys that only name folders, runs and data versions. {} for other profiles."""
    base = params.profiles[profile].rehearses
    if not base:
        return {}
    ours, theirs = expand(params, profile, tables), expand(params, base, tables)
    skip = ("run.output_dir", "run.run_name", "run.tags", "run.experiment", "data.root", "data.version", "run.seed")
    diff: dict[str, tuple[set, set]] = {}
    by_place = {(r.table, r.index): r for r in theirs.rows}
    for a, b in ((by_place[(r.table, r.index)], r) for r in ours.rows):  # ours: maybe one row per table
        ca = flatten(theirs.train[theirs.evals[a.eval_ids[0]].train_id].config)
        cb = flatten(ours.train[ours.evals[b.eval_ids[0]].train_id].config)
        for key in sorted(set(ca) | set(cb)):
            if key.startswith(skip) or ca.get(key) == cb.get(key):
                continue
            there, here = diff.setdefault(key, (set(), set()))
            there.add(json.dumps(ca.get(key)))
            here.add(json.dumps(cb.get(key)))
        if len(a.eval_ids) != len(b.eval_ids):
            there, here = diff.setdefault("seeds (runs per row)", (set(), set()))
            there.add(str(len(a.eval_ids)))
            here.add(str(len(b.eval_ids)))
    return diff


def find_cell(grid: Grid, cell_id: str) -> TrainUnit | EvalUnit:
    """A train or eval unit by id or unique id prefix."""
    if cell_id in grid.evals:
        return grid.evals[cell_id]
    if cell_id in grid.train:
        return grid.train[cell_id]
    hits = sorted({i for i in list(grid.train) + list(grid.evals) if i.startswith(cell_id)})
    if len(hits) == 1:
        return grid.evals.get(hits[0]) or grid.train[hits[0]]
    if not hits:
        raise UserError(f"no cell {cell_id!r} in profile {grid.profile}; see `python -m pipeline grid list`")
    raise UserError(f"cell id prefix {cell_id!r} is ambiguous: {', '.join(hits[:5])}")

