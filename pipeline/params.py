"""Schema of params.yaml (study, recipes, profiles, executor, grid, tables): pydantic, unknown keys forbidden.

`load_params()` reads params.yaml, overlays cluster settings from an untracked `local.yaml` and the
`MASKFORMER_SLURM_*` environment variables, validates everything, and raises `UserError` naming the
key path (``grid.table6.cells[3].queries``) before anything runs. The `data:` section belongs to the
data stages (pipeline.data / dvc.yaml) and is passed through unvalidated here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from maskformer_core.data.metadata import DATASETS, OFFICIAL_NUM_CLASSES, PANOPTIC_DATASETS
from maskformer_core.models.backbones import BACKBONE_NAMES, PAPER_BACKBONES, SMOKE_BACKBONES, backbone_family
from pipeline import cell_overrides
from pipeline.checks import check_cells, check_references
from pipeline.errors import UserError
from pipeline.yamlio import load_yaml

_STRICT = ConfigDict(extra="forbid")

# Datasets and their official K come from the dataset metadata (maskformer_core.data.metadata), backbone
# names and families from the backbone registry (maskformer_core.models.backbones); twins read K from
# their own metadata instead.
BACKBONES = BACKBONE_NAMES
STRATEGIES = ("semantic", "general", "general_semantic", "detr")
# Data layout (docs/ARCHITECTURE.md "Synthetic twins"): twins are prepared into data/synthetic/<d>
# (dvc.yaml `data`), real downloads data/raw/<d> into data/prepared/<d> (data/dvc.yaml `prepare`).
TWIN_DATA_ROOT = "data/synthetic"
REAL_DATA_ROOT = "data/prepared"
RAW_DATA_ROOT = "data/raw"
SLURM_ENV_PREFIX = "MASKFORMER_SLURM_"  # MASKFORMER_SLURM_<KEY> sets executor.slurm.<key> (any key, see SlurmExecutor)


class StudyParams(BaseModel):
    model_config = _STRICT
    profile: str = "smoke"
    runs_root: str = "runs"
    # Trained cells exported for DVC (dvc.yaml `models` stage): models/<profile>/<cell_id>/ (pipeline.models_store).
    models_root: str = "models"
    retries: int = Field(1, ge=0, le=10)
    retry_delay_s: float = Field(2.0, ge=0)
    cell_fn: str = "pipeline.engine:run_cell"
    # After SIGINT/SIGTERM the study waits this long for running cells to checkpoint, then exits hard.
    stop_timeout_s: float = Field(120.0, gt=0)
    # One MLflow server in front of a local SQLite store while cells run concurrently (params.yaml).
    tracking_server: Literal["auto", "always", "never"] = "auto"
    # Address the study's MLflow server binds (pipeline.cluster.tracking_host): null = 127.0.0.1 (one
    # machine), an address of this host on the cluster network, or `auto` (the address this host
    # uses towards the SLURM nodes). MASKFORMER_TRACKING_HOST wins.
    tracking_host: str | None = None
    # Mirror of profiles.<profile>.data_root that dvc.yaml templates the study deps from
    # (`${study.data_root}/<dataset>`); must agree with the active profile (check_data_roots).
    data_root: str | None = None

    @field_validator("cell_fn")
    @classmethod
    def _import_path(cls, v: str) -> str:
        if v.count(":") != 1 or not all(v.split(":")):
            raise ValueError(f"expected 'package.module:function', got {v!r}")
        return v


class Recipe(BaseModel):
    """One dataset's training recipe (official configs/<dataset>/*.yaml)."""

    model_config = _STRICT
    config: str = ""  # the official config file it reproduces
    crop: tuple[int, int] | None = None
    ims_per_batch: int = Field(ge=1)
    max_iter: int = Field(ge=1)
    schedule: Literal["poly", "step"] = "poly"
    steps: list[int] = Field(default_factory=list)
    eval_period: int = Field(0, ge=0)
    # MASK_FORMER.SIZE_DIVISIBILITY of the config (None: the model default 32; coco-panoptic configs 0)
    size_divisibility: int | None = Field(None, ge=0)
    # images per forward pass (solver.micro_batch): the official per-GPU batch where it matters (COCO 1)
    micro_batch: int | None = Field(None, ge=1)


class InputOverride(BaseModel):
    model_config = _STRICT
    crop: tuple[int, int] | None = None
    short_sizes: list[int] | None = None
    max_size: int | None = Field(None, ge=1)
    test_short_size: int | None = Field(None, ge=1)
    test_max_size: int | None = Field(None, ge=1)
    tta_sizes: list[int] | None = None
    tta_max_size: int | None = Field(None, ge=1)
    tta_scales: list[float] | None = None  # factors of the test size (paper appendix A, Mapillary); replace tta_sizes
    size_divisibility: int | None = None
    num_workers: int | None = Field(None, ge=0)


class FamilySolver(BaseModel):
    model_config = _STRICT
    base_lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    backbone_multiplier: float | None = Field(None, ge=0)
    warmup_iters: int | None = Field(None, ge=0)
    warmup_factor: float | None = Field(None, gt=0, le=1)


class ProfileSolver(FamilySolver):
    ims_per_batch: int | None = Field(None, ge=1)
    micro_batch: int | None = Field(None, ge=1)  # overrides the recipe's images per forward pass
    max_iter: int | None = Field(None, ge=1)  # absolute iterations for every cell (smoke)
    iter_scale: float | None = Field(None, gt=0, le=10)  # multiplies the recipe's iterations
    # Shrink warmups with the iterations (rehearsal): warmup x max_iter / recipe max_iter, kept >= 1
    # where the recipe has one, so each family's schedule keeps its shape.
    scale_warmup: bool | None = None


class ProfileModel(BaseModel):
    model_config = _STRICT
    hidden_dim: int | None = Field(None, ge=8)
    mask_dim: int | None = Field(None, ge=8)
    conv_dim: int | None = Field(None, ge=8)
    nheads: int | None = Field(None, ge=1)
    dim_feedforward: int | None = Field(None, ge=8)
    dropout: float | None = Field(None, ge=0, lt=1)  # transformer dropout (MODEL.MASK_FORMER.DROPOUT 0.1)
    drop_path: float | None = Field(None, ge=0, lt=1)  # Swin stochastic depth (MODEL.SWIN.DROP_PATH_RATE 0.3)
    # Backbone initialisation: None (random), "hub" (timm), a local file, or a mapping per backbone
    # {"*": hub, R101c: data/weights/R-103.pkl, "Swin-B:in1k": ...} (pipeline.grid.resolve_pretrained).
    pretrained: str | dict[str, str] | None = None

    @field_validator("pretrained")
    @classmethod
    def _pretrained(cls, v):
        if isinstance(v, dict):
            for key, source in v.items():
                backbone, _, pretrain = key.partition(":")
                if key != "*" and (backbone not in BACKBONES or pretrain not in ("", "in1k", "in22k")):
                    raise ValueError(f"unknown key {key!r}: expected '*', a backbone ({', '.join(PAPER_BACKBONES)}) "
                                     f"or '<backbone>:in1k' / '<backbone>:in22k'")
                if not isinstance(source, str) or not source:
                    raise ValueError(f"{key}: expected 'hub', 'hub:<timm tag>' or a weights file, got {source!r}")
        return v


class ProfileTest(BaseModel):
    model_config = _STRICT
    max_images: int | None = Field(None, ge=1)
    fps_images: int | None = Field(None, ge=0)
    fps_warmup: int | None = Field(None, ge=0)


class ProfileRun(BaseModel):
    model_config = _STRICT
    eval_period: int | None = Field(None, ge=0)
    checkpoint_period: int | None = Field(None, ge=1)
    log_period: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] | None = None
    threads: int | None = Field(None, ge=1)
    tracking: bool | None = None  # MLflow on/off for every cell (None: the run config's default, on)


class ProfileSlurm(BaseModel):
    """A profile's SLURM resources: each field set here replaces `executor.slurm`'s for that profile's jobs
    (the smoke profile asks for a CPU and minutes, the paper profile for the official 8 GPUs)."""

    model_config = _STRICT
    gpus_per_node: int | None = Field(None, ge=0, le=16)
    cpus_per_task: int | None = Field(None, ge=1, le=256)
    mem_gb: int | None = Field(None, ge=1)
    timeout_min: int | None = Field(None, ge=1)


class Profile(BaseModel):
    model_config = _STRICT
    description: str
    synthetic: bool = False
    data_root: str = "data/prepared"
    seeds: dict[str, int] = Field(default_factory=lambda: {"default": 1})
    backbone_map: dict[str, str] = Field(default_factory=dict)
    # Queries of the cells that do not set `queries` (the paper's default 100, MODEL.MASK_FORMER.NUM_OBJECT_QUERIES); rows that set
    # queries (Table 6's Q20..Q1000, Q = K) keep theirs. None: 100.
    default_queries: int | None = Field(None, ge=1)
    # The same per matching (bipartite | fixed | box), over default_queries: the smoke Table 5 box cell.
    queries_by_matching: dict[Literal["bipartite", "fixed", "box"], int] = Field(default_factory=dict)
    model: ProfileModel = Field(default_factory=ProfileModel)
    input: InputOverride = Field(default_factory=InputOverride)
    solver: ProfileSolver = Field(default_factory=ProfileSolver)
    # Per task (semantic | panoptic) over `solver`, e.g. the smoke profile's longer panoptic cells.
    solver_by_task: dict[Literal["semantic", "panoptic"], ProfileSolver] = Field(default_factory=dict)
    test: ProfileTest = Field(default_factory=ProfileTest)
    run: ProfileRun = Field(default_factory=ProfileRun)
    executor: Literal["local", "slurm"] = "local"
    max_concurrent: int = Field(2, ge=1, le=1024)
    # Evaluation-only profile (`zoo`): only cells with a `released:` checkpoint, each evaluated from
    # <checkpoint_root>/<file> instead of trained (pipeline/released.py).
    released: bool = False
    checkpoint_root: str = "checkpoints/released"
    # Processes (GPUs) per training run, keyed like `seeds` (default / semantic / panoptic / dataset):
    # resolved into `run.num_gpus`. Paper Sec. 4.2: 8 GPUs per run, 64 for COCO panoptic (the official configs'
    # SOLVER.IMS_PER_BATCH is the total over them). CPU profiles run that many gloo processes.
    gpus: dict[str, int] = Field(default_factory=lambda: {"default": 1})
    # The profile this one rehearses (same cells, shrunk): `grid list` prints every key that differs.
    rehearses: str | None = None
    # Cheap rehearsals (pipeline/subset.py; CI: tests/test_cluster2.py): cap the processes per run at
    # this many, keeping the per-GPU batch (total batch = per-GPU batch x cap); keep one row per table.
    max_world_size: int | None = Field(None, ge=1, le=1024)
    one_row_per_table: bool = False

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: dict[str, int]) -> dict[str, int]:
        if "default" not in v:
            raise ValueError("needs a 'default' entry (processes per training run)")
        for key, n in v.items():
            if key not in ("default", "panoptic", "semantic") + DATASETS:
                raise ValueError(f"unknown key {key!r}: expected default, semantic, panoptic or a dataset name")
            if not 1 <= n <= 1024:
                raise ValueError(f"{key}: processes per run must be in 1..1024, got {n}")
        return v

    def num_gpus(self, dataset: str) -> int:
        task = "panoptic" if dataset in PANOPTIC_DATASETS else "semantic"
        return self.gpus.get(dataset, self.gpus.get(task, self.gpus["default"]))
    # SLURM resources at this profile's scale (replace executor.slurm's; MASKFORMER_SLURM_* still wins).
    slurm: ProfileSlurm = Field(default_factory=ProfileSlurm)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: dict[str, int]) -> dict[str, int]:
        if "default" not in v:
            raise ValueError("needs a 'default' entry (number of seeds)")
        for key, n in v.items():
            if key not in ("default", "panoptic", "semantic") + DATASETS:
                raise ValueError(f"unknown key {key!r}: expected default, semantic, panoptic or a dataset name")
            if not 1 <= n <= 20:
                raise ValueError(f"{key}: number of seeds must be in 1..20, got {n}")
        return v

    @field_validator("backbone_map")
    @classmethod
    def _bmap(cls, v: dict[str, str]) -> dict[str, str]:
        for src, dst in v.items():
            if src not in PAPER_BACKBONES:
                raise ValueError(f"unknown paper backbone {src!r}; expected one of {', '.join(PAPER_BACKBONES)}")
            if dst not in BACKBONES:
                raise ValueError(f"{src}: unknown backbone {dst!r}; expected one of {', '.join(BACKBONES)}")
        return v

    def solver_for(self, dataset: str) -> ProfileSolver:
        """`solver` with `solver_by_task[semantic|panoptic]` of `dataset` on top (set keys win)."""
        over = self.solver_by_task.get("panoptic" if dataset in PANOPTIC_DATASETS else "semantic")
        if over is None:
            return self.solver
        merged = self.solver.model_dump()
        merged.update({k: v for k, v in over.model_dump().items() if v is not None})
        return ProfileSolver(**merged)

    def num_seeds(self, dataset: str) -> int:
        task = "panoptic" if dataset in PANOPTIC_DATASETS else "semantic"
        return self.seeds.get(dataset, self.seeds.get(task, self.seeds["default"]))


class LocalExecutor(BaseModel):
    model_config = _STRICT
    timeout_min: int = Field(60, ge=1)


class SlurmExecutor(BaseModel):
    """submitit SLURM settings. A cell of world size W (`run.num_gpus`) runs as W tasks, one per GPU:
    `tasks_per_node = min(W, gpus_per_node)`, `nodes = W / tasks_per_node` (pipeline.executor.slurm_layout)."""

    model_config = _STRICT
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    exclusive: bool | None = None
    gpus_per_node: int = Field(8, ge=0, le=16)  # GPUs (and processes) per node; paper Sec. 4.2: 8 V100 per machine; 0: CPU nodes
    cpus_per_task: int = Field(10, ge=1, le=256)
    mem_gb: int = Field(64, ge=1)
    timeout_min: int = Field(4320, ge=1)
    array_parallelism: int = Field(16, ge=1)
    use_array: bool = True
    # submitit requeues a job on preemption; after a time limit at most `max_num_timeout` times.
    requeue_on_preemption: bool = True
    max_num_timeout: int = Field(3, ge=0, le=100)  # submitit default 3
    signal_delay_s: int = Field(90, ge=10, le=3600)  # --signal=USR2@<s> (submitit default 90)
    setup: list[str] = Field(default_factory=list)  # lines run before the job (`module load`, conda activate)
    srun_args: list[str] = Field(default_factory=list)
    additional_parameters: dict[str, Any] = Field(default_factory=dict)  # extra #SBATCH --key=value
    # Any other submitit SlurmExecutor parameter (mail_user, gres, nodelist, ...), checked by name.
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("extra")
    @classmethod
    def _extra(cls, v: dict[str, Any]) -> dict[str, Any]:
        import submitit  # noqa: PLC0415 - the names submitit 1.5.x accepts

        valid = submitit.SlurmExecutor._valid_parameters() - MANAGED_SLURM_KEYS
        for key in v:
            if key not in valid:
                raise ValueError(f"unknown or managed submitit SLURM parameter {key!r}; allowed: {', '.join(sorted(valid))}")
        return v


# Set by the executor from the cell (nodes, tasks, GPUs, name, time) or by the typed fields above.
MANAGED_SLURM_KEYS = frozenset({
    "job_name", "nodes", "ntasks_per_node", "gpus_per_node", "num_gpus", "gpus_per_task", "time", "mem",
    "partition", "account", "qos", "constraint", "exclude", "exclusive", "cpus_per_task", "array_parallelism",
    "signal_delay_s", "setup", "srun_args", "additional_parameters"})


class ExecutorParams(BaseModel):
    model_config = _STRICT
    local: LocalExecutor = Field(default_factory=LocalExecutor)
    slurm: SlurmExecutor = Field(default_factory=SlurmExecutor)


class TimeModel(BaseModel):
    model_config = _STRICT
    train_factor: float = Field(3.0, gt=0)
    fps: dict[str, tuple[float, int]]
    eval_hours: float = Field(0.1, ge=0)


class TablesParams(BaseModel):
    model_config = _STRICT
    tolerance: dict[str, float] = Field(default_factory=dict)
    # column -> fraction of the paper's value (columns whose scale is not a percentage, e.g. memory in MB)
    relative_tolerance: dict[str, float] = Field(default_factory=dict)


class Cell(BaseModel):
    """One row (or one column group of a row) of a paper table, as written in params.yaml."""

    model_config = _STRICT
    row: str
    dataset: str
    model: Literal["maskformer", "per_pixel", "per_pixel_plus"] = "maskformer"
    backbone: str = "R50"
    pretrain: Literal["in1k", "in22k"] | None = None  # None: in22k for Swin-B/L (†), in1k otherwise
    queries: Union[int, Literal["K"], None] = None  # None: 100 (MODEL.MASK_FORMER.NUM_OBJECT_QUERIES); "K" = number of classes
    dec_layers: int = Field(6, ge=1, le=12)
    self_attention: bool = True
    pixel_decoder: Literal["base", "+6Enc"] = "base"
    matching: Literal["bipartite", "fixed", "box"] | None = None
    box_head: bool = False
    inference: Literal["semantic", "general", "general_semantic", "detr"] | None = None
    tta: bool = False
    seeds: int | None = Field(None, ge=1, le=20)  # None: the profile's number of seeds
    columns: dict[str, str] | None = None

    @field_validator("queries")
    @classmethod
    def _queries(cls, v: Any) -> Any:
        if isinstance(v, int) and not 1 <= v <= 2000:
            raise ValueError(f"must be in 1..2000 or 'K', got {v}")
        return v

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; expected one of {', '.join(DATASETS)}")
        return v

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, v: str) -> str:
        if v not in BACKBONES:
            raise ValueError(f"unknown backbone {v!r}; expected one of {', '.join(BACKBONES)}")
        return v


class ReleasedCheckpoint(BaseModel):
    """One released MaskFormer checkpoint (facebookresearch/MaskFormer MODEL_ZOO.md) and the grid cells it
    fills: cells with the same dataset, backbone, pixel decoder and pretraining (None: the official one)."""

    model_config = _STRICT
    dataset: str
    backbone: str
    pixel_decoder: Literal["base", "+6Enc"] = "base"
    pretrain: Literal["in1k", "in22k"] | None = None
    tables: list[str] = Field(min_length=1)  # the tables whose rows it fills
    file: str  # local name under the profile's checkpoint_root (a .pkl, an HF folder or a converted .pt)
    config: str  # the official config file it was trained with
    url: str | None = None  # download location (MODEL_ZOO.md)
    hf_id: str | None = None  # the same weights converted by HF (facebook/maskformer-*)
    md5_prefix: str | None = Field(None, pattern=r"^[0-9a-f]{6,32}$")  # MODEL_ZOO.md: the file name carries it
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")  # not published for MaskFormer's files

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return Cell._dataset(v)

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, v: str) -> str:
        if v not in PAPER_BACKBONES:
            raise ValueError(f"unknown paper backbone {v!r}; expected one of {', '.join(PAPER_BACKBONES)}")
        return v

    def fits(self, table: str, cell: "Cell") -> bool:
        """The cell is a row of one of `tables` with the released model: its dataset, backbone, pixel decoder
        and pretraining, and the official decoder (Q 100, 6 layers, self-attention, bipartite, no box head; add_mask_former_config)."""
        official = (cell.model == "maskformer" and cell.queries in (None, 100) and cell.dec_layers == 6
                    and cell.self_attention and cell.matching in (None, "bipartite") and not cell.box_head)
        return (table in self.tables and official and cell.dataset == self.dataset and cell.backbone == self.backbone
                and cell.pixel_decoder == self.pixel_decoder and cell.pretrain == self.pretrain)


class TableGrid(BaseModel):
    model_config = _STRICT
    title: str
    columns: dict[str, str]
    cells: list[Cell] = Field(min_length=1)


class Params(BaseModel):
    model_config = _STRICT
    study: StudyParams = Field(default_factory=StudyParams)
    data: dict[str, Any] = Field(default_factory=dict)  # owned by the data stages
    recipes: dict[str, Recipe]
    input_overrides: dict[str, dict[str, InputOverride]] = Field(default_factory=dict)
    families: dict[Literal["resnet", "swin"], FamilySolver]
    schedule_warmup: dict[Literal["poly", "step"], dict[Literal["resnet", "swin"], FamilySolver]] = Field(
        default_factory=dict
    )
    profiles: dict[str, Profile] = Field(min_length=1)
    executor: ExecutorParams = Field(default_factory=ExecutorParams)
    time_model: TimeModel
    tables: TablesParams = Field(default_factory=TablesParams)
    grid: dict[str, TableGrid] = Field(min_length=1)
    released: list[ReleasedCheckpoint] = Field(default_factory=list)  # evaluated by `released` profiles (zoo)

    @field_validator("released")
    @classmethod
    def _unique_released(cls, v: list[ReleasedCheckpoint]) -> list[ReleasedCheckpoint]:
        seen: dict[tuple, int] = {}
        for i, r in enumerate(v):
            key = (r.dataset, r.backbone, r.pixel_decoder, r.pretrain)
            if key in seen:
                raise ValueError(f"entries {seen[key]} and {i} are both for {key}: one checkpoint per cell")
            seen[key] = i
        return v

    @field_validator("recipes", "input_overrides")
    @classmethod
    def _known_datasets(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if name not in DATASETS:
                raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
        return v


def format_loc(loc: tuple[Any, ...]) -> str:
    """('grid', 'table6', 'cells', 3, 'queries') -> 'grid.table6.cells[3].queries'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "literal['K']", "none", "function-after[_queries(), int]"):
            continue  # pydantic's union-branch markers are not keys
        elif str(part).startswith(("function-", "literal[", "constrained-")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _got(err: dict[str, Any]) -> str:
    """', got <repr of the bad value>' for a wrong type / out-of-range / unknown choice error, else ''.

    Our own validators (type `value_error`) already name the value; missing keys have none. Long
    values (a whole mapping) are cut to 80 characters.
    """
    if err.get("type") in ("value_error", "missing", "extra_forbidden") or "input" not in err:
        return ""
    text = repr(err["input"])
    return f", got {text if len(text) <= 80 else text[:77] + '...'}"


def validate_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a params dict, then the cross-field rules; `UserError` names the key path."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping at the top level")
    raw = cell_overrides.apply(raw, Cell.model_fields, source)  # `cell_overrides.<table>.<i>.<field>` -> grid.<table>.cells[i]
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        seen: list[str] = []
        for err in exc.errors():
            line = f"{format_loc(err['loc'])}: {err['msg']}{_got(err)}"
            if err.get("type") == "extra_forbidden":
                line = f"{format_loc(err['loc'])}: unknown key (typo?)"
            if line not in seen:
                seen.append(line)
        raise UserError(f"{source}: " + "; ".join(seen[:6])) from None
    if params.study.profile not in params.profiles:
        raise UserError(
            f"{source}: study.profile: unknown profile {params.study.profile!r}; "
            f"defined: {', '.join(params.profiles)}"
        )
    missing = [d for d in {c.dataset for t in params.grid.values() for c in t.cells} if d not in params.recipes]
    if missing:
        raise UserError(f"{source}: recipes: no recipe for dataset(s) {', '.join(sorted(missing))}")
    for bb in BACKBONES:
        if bb not in params.time_model.fps:
            raise UserError(f"{source}: time_model.fps: missing backbone {bb!r}")
    check_data_roots(params, source)
    check_cells(params, source)
    check_references(params, source)
    return params


def _norm_root(root: str) -> str:
    """'./data/synthetic/' -> 'data/synthetic' (relative roots are relative to the repository root)."""
    return os.path.normpath(root).replace(os.sep, "/")


def _under(root: str, base: str) -> bool:
    return root == base or root.startswith(base + "/")


def check_data_roots(params: Params, source: str = "params.yaml") -> None:
    """Keep twins and real data apart; raise `UserError` naming the key.

    - a real-data profile (`synthetic: false`) may not read the twins (data/synthetic) or raw
      downloads (data/raw): its numbers would silently come from the wrong data;
    - a synthetic profile may not read data/prepared (real data) or data/raw; any other root is
      accepted (a custom twin folder, e.g. a test's temp dir: the study reads K from its SYNTHETIC.json);
    - `study.data_root`, which dvc.yaml's study deps are templated from, must equal the active
      profile's data_root, or DVC would track different folders than the study reads.
    """
    for name, prof in params.profiles.items():
        root = _norm_root(prof.data_root)
        key = f"profiles.{name}.data_root"
        if _under(root, RAW_DATA_ROOT):
            raise UserError(
                f"{source}: {key}: {prof.data_root!r} is the raw download folder; point it at the prepared "
                f"datasets ({TWIN_DATA_ROOT if prof.synthetic else REAL_DATA_ROOT})"
            )
        if not prof.synthetic and _under(root, TWIN_DATA_ROOT):
            raise UserError(
                f"{source}: {key}: profile {name} trains on real data (synthetic: false) but {prof.data_root!r} "
                f"holds the synthetic twins; use {REAL_DATA_ROOT} (README \"Datasets\")"
            )
        if prof.synthetic and _under(root, REAL_DATA_ROOT):
            raise UserError(
                f"{source}: {key}: profile {name} is synthetic but {prof.data_root!r} holds the real prepared "
                f"datasets; use {TWIN_DATA_ROOT} (the twins dvc.yaml's data stage makes)"
            )
    mirror = params.study.data_root
    active = params.profiles[params.study.profile]
    if mirror is not None and _norm_root(mirror) != _norm_root(active.data_root):
        raise UserError(
            f"{source}: study.data_root: {mirror!r} differs from profiles.{params.study.profile}.data_root "
            f"{active.data_root!r} (the active profile); dvc.yaml's study deps follow study.data_root, "
            f"so set it to {active.data_root!r} when switching study.profile"
        )


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    raw = load_yaml(path) or {}  # a key written twice is an error naming it (pipeline.yamlio)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return raw


def _env_overlay(environ: dict[str, str]) -> dict[str, Any]:
    """`MASKFORMER_SLURM_<KEY>=value` -> executor.slurm.<key> (`<KEY>` of SlurmExecutor, or of submitit's
    parameters -> `extra`). Values are YAML scalars/lists (`8`, `true`, `[a, b]`); an unknown name is an error."""
    slurm: dict[str, Any] = {}
    fields = set(SlurmExecutor.model_fields) - {"extra"}
    for var in sorted(environ):
        if not var.startswith(SLURM_ENV_PREFIX) or environ[var] == "":
            continue
        key = var[len(SLURM_ENV_PREFIX):].lower()
        text = environ[var]
        if key in ("partition", "account", "qos", "constraint", "exclude"):
            value: Any = text
        else:
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise UserError(f"environment {var}={text!r}: not a YAML value") from None
        if key in fields:
            if isinstance(SlurmExecutor.model_fields[key].default, int) and not isinstance(value, int):
                raise UserError(f"environment {var}={text!r}: expected an integer")
            slurm[key] = value
        else:
            import submitit  # noqa: PLC0415

            if key not in submitit.SlurmExecutor._valid_parameters() - MANAGED_SLURM_KEYS:
                raise UserError(f"environment {var}: unknown SLURM setting {key!r}; expected one of "
                                f"{', '.join(sorted(fields))} or a submitit SlurmExecutor parameter")
            slurm.setdefault("extra", {})[key] = value
    return {"executor": {"slurm": slurm}} if slurm else {}


def load_params(
    path: str | os.PathLike = "params.yaml",
    local: str | os.PathLike | None = None,
    environ: dict[str, str] | None = None,
) -> Params:
    """params.yaml < local.yaml (untracked; only `executor:` and `study:` keys) < MASKFORMER_SLURM_* env."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"params file not found: {path}")
    raw = _read_yaml(path)
    local_path = Path(local) if local is not None else path.with_name("local.yaml")
    if local_path.is_file():
        overlay = _read_yaml(local_path)
        bad = [k for k in overlay if k not in ("executor", "study")]
        if bad:
            raise UserError(f"{local_path}: only 'executor' and 'study' may be set locally, not {', '.join(bad)}")
        raw = _deep_merge(raw, overlay)
    raw = _deep_merge(raw, _env_overlay(dict(os.environ if environ is None else environ)))
    return validate_params(raw, source=str(path))


def slurm_resources(params: "Params", profile: str | None, environ: dict[str, str] | None = None) -> SlurmExecutor:
    """The jobs' SLURM resources: `executor.slurm` < `profiles.<profile>.slurm` < `MASKFORMER_SLURM_*`
    (a cluster's own setting in the environment still wins over the profile's scale)."""
    base = params.executor.slurm
    if not profile or profile not in params.profiles:
        return base
    environ = dict(os.environ if environ is None else environ)
    from_env = set(_env_overlay(environ).get("executor", {}).get("slurm", {}))
    update = {k: v for k, v in params.profiles[profile].slurm.model_dump(exclude_none=True).items() if k not in from_env}
    return base.model_copy(update=update)
