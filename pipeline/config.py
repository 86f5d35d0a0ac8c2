"""The resolved run configuration (`RunConfig`): one grid cell, validated, saved as config.yaml in its run folder.

Sections mirror the packages (docs/ARCHITECTURE.md "Resolved run config"):

- `model:`  keyword arguments of `maskformer_core.models.build_model` (official mask_former/config.py add_mask_former_config; paper Sec. 3.3);
- `loss:`   matcher + criterion options for `build_criterion` (paper Sec. 3.2; official modeling/criterion.py);
- `data:`   dataset, root, crop and resize sizes, loader workers (official configs/<dataset>/Base-*.yaml INPUT);
- `solver:` AdamW, learning rate schedule, batch size, clipping (official configs SOLVER);
- `test:`   inference strategy, thresholds, test-time augmentation (paper Sec. 3.4; official mask_former_model.py inference);
- `run:`    seed, run folder, periods, device, tracking.

Fields left `None` mean "the official default for this dataset/backbone"; `resolve_defaults` fills them
(from the dataset metadata, the backbone family and `maskformer_core.models.defaults`) at plan time, so
that the config the grid hashes, the executor ships, the run folder saves, MLflow logs and resume
compares is fully explicit. `result_hash` is the one hash of what changes results (the cell id's suffix,
the MLflow `config_hash`/`group` tags); `training_keys_differ` (resume) reads the same key list. Every
section forbids unknown keys, so a typo in a params file is an error naming the key.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from maskformer_core.models.backbones import is_swin
from maskformer_core.models.defaults import MODEL_DEFAULTS as D
from maskformer_core.models.defaults import default_drop_path, default_enc_layers, default_num_queries
from maskformer_core.models.weights import is_hub
from pipeline.errors import UserError
from pipeline.yamlio import load_yaml

_STRICT = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(BaseModel):
    """`build_model` keyword arguments (docs/ARCHITECTURE.md model contract; values from the official add_mask_former_config and configs)."""

    model_config = _STRICT | ConfigDict(protected_namespaces=())

    # Defaults: maskformer_core.models.defaults.MODEL_DEFAULTS (official add_mask_former_config), the same
    # object build_model's signature reads; None = a default that depends on other options, filled by
    # `resolve_defaults` with the rule build_model applies (tests/test_grid.py checks both agree).
    arch: Literal["maskformer", "per_pixel", "per_pixel_plus"] = D.arch  # type: ignore[assignment]
    backbone: str = D.backbone
    num_classes: int | None = None  # None: K from the dataset metadata
    num_queries: int | None = None  # None: defaults.default_num_queries (100; K for per_pixel_plus, paper Table 4)
    dec_layers: int = D.dec_layers  # MODEL.MASK_FORMER.DEC_LAYERS
    dec_self_attention: bool = D.dec_self_attention  # False = the no-self-attention variant (paper appendix Table VIII)
    pixel_decoder: Literal["base", "transformer_encoder"] = D.pixel_decoder  # type: ignore[assignment]
    enc_layers: int | None = None  # None: defaults.default_enc_layers (6 for "transformer_encoder", 0 for "base")
    transformer_in_feature: Literal["res5", "transformer_encoder"] = D.transformer_in_feature  # type: ignore[assignment]
    hidden_dim: int = D.hidden_dim  # MODEL.MASK_FORMER.HIDDEN_DIM
    mask_dim: int = D.mask_dim  # MODEL.SEM_SEG_HEAD.MASK_DIM
    conv_dim: int = D.conv_dim  # MODEL.SEM_SEG_HEAD.CONVS_DIM
    nheads: int = D.nheads  # MODEL.MASK_FORMER.NHEADS
    dim_feedforward: int = D.dim_feedforward  # MODEL.MASK_FORMER.DIM_FEEDFORWARD
    dropout: float = D.dropout  # MODEL.MASK_FORMER.DROPOUT
    box_head: bool = D.box_head  # paper Table 5 box matching (no official config)
    deep_supervision: bool = D.deep_supervision  # MODEL.MASK_FORMER.DEEP_SUPERVISION
    pretrained: str | None = None  # None | local weights file | "hub" | "hub:<timm tag>"
    swin_window: int | None = None  # MODEL.SWIN.WINDOW_SIZE: per backbone (7, or 12 for the 384 models)
    drop_path: float | None = None  # None: defaults.default_drop_path (MODEL.SWIN.DROP_PATH_RATE 0.3; Swin only)
    size_divisibility: int | None = None  # None: 32 for maskformer (MODEL.MASK_FORMER.SIZE_DIVISIBILITY; 0 in the coco-panoptic configs), the backbone's own for the per-pixel baselines
    enforce_input_proj: bool = D.enforce_input_proj  # MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ (True in the COCO Swin configs)
    # Evaluation-only cell: the full-model weights to evaluate instead of training (a released checkpoint:
    # HF folder, official .pkl or a `convert`ed .pt; pipeline/released.py). None: train.
    weights: str | None = None

    def build_kwargs(self, num_classes: int) -> dict[str, Any]:
        """The kwargs for `build_model`, with K filled in and unset per-backbone options left out."""
        kwargs = self.model_dump(exclude={"weights"})
        kwargs["num_classes"] = self.num_classes if self.num_classes is not None else num_classes
        if kwargs["num_queries"] is None:  # the criterion reads it too
            kwargs["num_queries"] = default_num_queries(self.arch, kwargs["num_classes"])
        for key in ("swin_window", "drop_path", "enc_layers", "size_divisibility"):
            if kwargs[key] is None:
                del kwargs[key]  # build_model applies the same maskformer_core.models.defaults rule
        return kwargs


class LossConfig(BaseModel):
    """Matcher and criterion options (paper Sec. 3.2, official modeling/matcher.py + criterion.py); `build_criterion` kwargs."""

    model_config = _STRICT

    # paper Sec. 3.2 bipartite matching (Hungarian, by mask) | fixed (Table 4) | box (Table 5): one spelling,
    # the one `maskformer_core.criterion.build_criterion` takes.
    matching: Literal["bipartite", "fixed", "box"] = "bipartite"
    no_object_weight: float = 0.1  # MODEL.MASK_FORMER.NO_OBJECT_WEIGHT
    mask_weight: float = 20.0  # MODEL.MASK_FORMER.MASK_WEIGHT (focal)
    dice_weight: float = 1.0  # MODEL.MASK_FORMER.DICE_WEIGHT


class DataConfig(BaseModel):
    """Dataset and input sizes. `None` sizes come from the dataset metadata (maskformer_core.data.metadata; official configs INPUT)."""

    model_config = _STRICT

    dataset: str = "ade20k"
    root: str = "data/prepared/ade20k"
    train_split: str | None = None  # None: metadata split names
    val_split: str | None = None  # the evaluation split (metadata `test_split`: val, or test for COCO-Stuff)
    crop_size: tuple[int, int] | None = None  # (H, W); 512x512 ADE, 512x1024 Cityscapes, ...
    short_sizes: list[int] | None = None  # ResizeShortestEdge "choice" set (INPUT.MIN_SIZE_TRAIN)
    max_size: int | None = None  # longest side at training
    test_short_size: int | None = None
    test_max_size: int | None = None
    num_workers: int = 4  # DATALOADER.NUM_WORKERS (official Base configs)
    # The prepared data's version (its DVC md5, or the twin's SYNTHETIC.json hash; pipeline.grid.data_version):
    # part of the result hash, so new data gives new cell ids. None: unversioned (a hand-written config).
    version: str | None = None
    size_divisibility: int | None = None  # mapper padding (INPUT.SIZE_DIVISIBILITY: -1 in configs/cityscapes-19)
    color_aug: bool = True  # INPUT.COLOR_AUG_SSD (False for COCO panoptic)


class SolverConfig(BaseModel):
    """Optimiser and schedule (official configs SOLVER). `None` fields take the backbone family's official value."""

    model_config = _STRICT

    optimizer: Literal["AdamW"] = "AdamW"  # SOLVER.OPTIMIZER
    base_lr: float | None = None  # SOLVER.BASE_LR: 1e-4 ResNet, 6e-5 Swin (configs/*/swin/*.yaml)
    weight_decay: float | None = None  # SOLVER.WEIGHT_DECAY: 1e-4 ResNet, 0.01 Swin
    weight_decay_norm: float = 0.0  # SOLVER.WEIGHT_DECAY_NORM
    weight_decay_embed: float = 0.0  # SOLVER.WEIGHT_DECAY_EMBED
    backbone_multiplier: float | None = None  # SOLVER.BACKBONE_MULTIPLIER: 0.1 ResNet, 1.0 Swin
    betas: tuple[float, float] = (0.9, 0.999)  # torch AdamW defaults (official train_net.py build_optimizer)
    eps: float = 1e-8
    schedule: Literal["poly", "step"] = "poly"  # SOLVER.LR_SCHEDULER_NAME WarmupPolyLR; COCO panoptic keeps multi-step
    poly_power: float = 0.9  # SOLVER.POLY_LR_POWER
    warmup_iters: int | None = None  # SOLVER.WARMUP_ITERS: 0 ResNet, 1500 Swin; 10 for COCO multi-step
    warmup_factor: float | None = None  # SOLVER.WARMUP_FACTOR: 1.0 ResNet, 1e-6 Swin
    warmup_method: Literal["linear", "constant"] = "linear"
    steps: list[int] = Field(default_factory=list)  # multi-step milestones (369,600 for COCO)
    gamma: float = 0.1  # SOLVER.GAMMA
    max_iter: int = 160_000
    ims_per_batch: int = 16  # SOLVER.IMS_PER_BATCH: TOTAL over all processes
    # Images per forward pass on one process (None: the whole per-process batch). Smaller values
    # accumulate gradients over ims_per_batch / (processes x micro_batch) passes, each normalised like one
    # official GPU (mask losses divided by the step's masks per pass, as criterion.py `num_masks`): the
    # COCO panoptic configs train 64 GPUs x 1 image with MASK_FORMER.SIZE_DIVISIBILITY 0, so micro_batch 1
    # means no image is ever padded.
    micro_batch: int | None = None
    clip_type: Literal["full_model", "none"] = "full_model"  # SOLVER.CLIP_GRADIENTS.CLIP_TYPE
    clip_value: float = 0.01  # SOLVER.CLIP_GRADIENTS.CLIP_VALUE (L2 norm)
    amp: bool = False  # SOLVER.AMP.ENABLED False: training is fp32

    @model_validator(mode="after")
    def _check(self) -> "SolverConfig":
        if self.max_iter < 1:
            raise ValueError(f"solver.max_iter must be >= 1, got {self.max_iter}")
        if self.ims_per_batch < 1:
            raise ValueError(f"solver.ims_per_batch must be >= 1, got {self.ims_per_batch}")
        if self.micro_batch is not None and not 1 <= self.micro_batch <= self.ims_per_batch:
            raise ValueError(f"solver.micro_batch must be in 1..ims_per_batch ({self.ims_per_batch}), got {self.micro_batch}")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:])):
            raise ValueError(f"solver.steps must increase, got {self.steps}")
        return self


class TestConfig(BaseModel):
    """Inference strategy and evaluation (paper Sec. 3.4 and 4; official mask_former_model.py)."""

    model_config = _STRICT
    __test__ = False  # not a pytest class

    strategy: Literal["semantic", "general", "general_semantic", "detr", "per_pixel"] | None = None
    object_mask_threshold: float | None = None  # TEST.OBJECT_MASK_THRESHOLD: 0.8 COCO, 0.7 ADE panoptic; 0.3 for appendix Table VII
    overlap_threshold: float | None = None  # TEST.OVERLAP_THRESHOLD: 0.8
    tta: bool = False  # TEST.AUG multi-scale + flip evaluation in addition to single scale
    tta_sizes: list[int] | None = None  # TEST.AUG.MIN_SIZES; None from the metadata
    tta_max_size: int | None = None
    # Factors of the single-scale test image instead of MIN_SIZES (paper appendix A, Mapillary Vistas: m.s. =
    # 0.5/1.0/1.5 of the test size); when set, tta_sizes / tta_max_size are not used.
    tta_scales: list[float] | None = None
    flip: bool | None = None  # TEST.AUG.FLIP; None from the metadata
    fps_images: int = 20  # images timed for fps (official tools/analyze_model.py speed), after the warm-up
    fps_warmup: int = 3
    max_images: int | None = None  # evaluate on the first N val images only (smoke runs)

    @model_validator(mode="after")
    def _check(self) -> "TestConfig":
        if self.tta_scales is not None and (not self.tta_scales or min(self.tta_scales) <= 0):
            raise ValueError(f"test.tta_scales must be a non-empty list of factors > 0, got {self.tta_scales}")
        return self


class RunSection(BaseModel):
    """Where and how the run executes and is tracked."""

    model_config = _STRICT

    seed: int = 0
    output_dir: str = "runs/default"
    eval_period: int = 0  # 0: evaluate only at the end (TEST.EVAL_PERIOD: 5000 semantic, 0 panoptic)
    checkpoint_period: int = 5000  # SOLVER.CHECKPOINT_PERIOD
    log_period: int = 20  # detectron2 writer period
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_gpus: int = 1  # processes of the job (one per GPU; CPU: gloo processes)
    deterministic: bool = True  # torch.use_deterministic_algorithms where feasible
    threads: int | None = None  # torch intra-op threads per process (None: torch default)
    tracking: bool = True  # MLflow on/off
    tracking_uri: str | None = None  # MLFLOW_TRACKING_URI wins; default sqlite:///<repo>/mlruns/mlflow.db
    experiment: str = "maskformer"
    run_name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)  # profile, cell_id, data_version, ...
    measure_fps: bool = True


class RunConfig(BaseModel):
    """One fully resolved training + evaluation run (a grid cell)."""

    model_config = _STRICT

    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    solver: SolverConfig = Field(default_factory=SolverConfig)
    test: TestConfig = Field(default_factory=TestConfig)
    run: RunSection = Field(default_factory=RunSection)

    @model_validator(mode="after")
    def _check_micro_batch(self) -> "RunConfig":
        mb, total, procs = self.solver.micro_batch, self.solver.ims_per_batch, self.run.num_gpus
        if mb is not None and procs >= 1 and total % procs == 0 and mb < total // procs and (total // procs) % mb:
            raise ValueError(f"solver.micro_batch={mb} must divide the per-process batch solver.ims_per_batch / "
                             f"run.num_gpus = {total // procs}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (tuples become lists): safe for YAML, MLflow and `torch.load(weights_only)`."""
        return json.loads(self.model_dump_json())

    def config_hash(self, length: int = 8) -> str:
        """`result_hash` of this config, test section included (MLflow tag `config_hash`)."""
        return result_hash(self, scope="eval", length=length)

    def group_hash(self, length: int = 8) -> str:
        """`config_hash` without `run.seed`: the seeds of one table row share it (MLflow tag `group`)."""
        return result_hash(self, scope="eval", seed=False, length=length)


# The one list of keys that never change the trained weights or the metrics: allowed to differ on resume,
# left out of `result_hash`. A prefix ending in "." covers its whole section.
RESULT_FREE_KEYS = (
    "run.output_dir",
    "run.eval_period",
    "run.checkpoint_period",
    "run.log_period",
    "run.device",
    "run.threads",
    "run.tracking",
    "run.tracking_uri",
    "run.experiment",
    "run.run_name",
    "run.tags",
    "run.measure_fps",
    "data.root",
    "data.num_workers",
)
# Keys that change the metrics but not the trained weights: in the evaluation's hash only (scope "eval").
EVAL_KEYS = ("test.",)
# Keys naming a weights file: a local file counts by its name, not its folder, so moving the weights
# (data/weights -> a scratch disk) keeps cell ids and resume; another file name, or a hub tag, is another
# source. (Hashing the contents of multi-GB files at plan time would cost minutes; pipeline.released checks
# a released file's sha256 when it loads it.)
SOURCE_KEYS = ("model.pretrained", "model.weights")


def _in(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == k or key.startswith(k if k.endswith(".") else k + ".") for k in prefixes)


def source_identity(value: Any) -> Any:
    """How a weights source enters the hash: None and "hub:<tag>" as they are, a local path by its file name."""
    if not isinstance(value, str) or is_hub(value):
        return value
    return "file:" + Path(value.rstrip("/")).name


def result_items(config: dict[str, Any], scope: Literal["train", "eval"] = "train") -> dict[str, Any]:
    """Flat key -> value of everything in `config` that changes results: RESULT_FREE_KEYS left out, the
    test section only in scope "eval", weights sources by `source_identity`."""
    out: dict[str, Any] = {}
    for key, value in flatten(config).items():
        if _in(key, RESULT_FREE_KEYS) or (scope == "train" and _in(key, EVAL_KEYS)):
            continue
        out[key] = source_identity(value) if key in SOURCE_KEYS else value
    return out


def result_hash(config: "RunConfig | dict[str, Any]", scope: Literal["train", "eval"] = "train", *,
                seed: bool = True, length: int = 8) -> str:
    """The one hash of what changes a cell's results: SHA-256 of `result_items` (all fields, defaults
    included, so a dict and its parsed RunConfig hash alike).

    scope "train": what the trained weights depend on (model, loss, data incl. its version, solver,
    run.seed and run.num_gpus: the world size sets the per-GPU batch and the per-GPU loss normalisation);
    the training run's id. Scope "eval": that plus the `test:` section; an evaluation-only variant's id
    and the MLflow `config_hash`. `seed=False`: the seeds of one table row share it (MLflow `group`).
    """
    cfg = config if isinstance(config, RunConfig) else RunConfig.model_validate(config)
    items = result_items(cfg.to_dict(), scope)
    if not seed:
        items.pop("run.seed", None)
    blob = json.dumps(items, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def training_keys_differ(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Flat keys (``solver.base_lr``) whose values differ between two config dicts, over the keys of
    `result_hash` scope "train" (the same list: a checkpoint resumes exactly when its training id would match)."""
    a, b = result_items(saved, "train"), result_items(current, "train")
    return sorted(k for k in set(a) | set(b) if a.get(k, "<missing>") != b.get(k, "<missing>"))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def resolve_defaults(cfg: RunConfig, meta: Any | None = None) -> RunConfig:
    """Fill every `None` field with its official default; returns a new config (unchanged if complete).

    Called at plan time by the grid (pipeline/grid.py), and by `python -m pipeline train/evaluate --config`
    for a hand-written file. `meta` is the dataset's `DatasetMeta` (`maskformer_core.data.get_metadata`;
    at plan time the grid's `plan_metadata`); it supplies K, sizes, splits and TTA scales. Model options
    follow `maskformer_core.models.defaults` (queries, encoder layers, Swin drop path, size divisibility). Solver values follow the backbone family (official configs, maskformer_core.models.backbones): ResNet 1e-4 / 1e-4 /
    x0.1 with no warmup, Swin 6e-5 / 0.01 / x1.0 with a 1500-iteration linear warmup from 1e-6.
    The multi-step schedule (COCO panoptic) keeps its 10-iteration warmup at factor 1.0 (configs/coco-panoptic/Base-COCO-PanopticSegmentation.yaml).
    """
    d = cfg.to_dict()
    s, m, data, test = d["solver"], d["model"], d["data"], d["test"]
    swin = is_swin(m["backbone"])
    _fill(m, "enc_layers", default_enc_layers(m["pixel_decoder"]))
    _fill(m, "drop_path", default_drop_path(swin))
    if m["arch"] == "maskformer":  # the per-pixel baselines pad to their backbone's own (build_model)
        _fill(m, "size_divisibility", D.size_divisibility)
    _fill(s, "base_lr", 6e-5 if swin else 1e-4)
    _fill(s, "weight_decay", 0.01 if swin else 1e-4)
    _fill(s, "backbone_multiplier", 1.0 if swin else 0.1)
    if swin:
        _fill(s, "warmup_iters", 1500)
        _fill(s, "warmup_factor", 1e-6)
    elif s["schedule"] == "step":
        _fill(s, "warmup_iters", 10)
        _fill(s, "warmup_factor", 1.0)
    else:
        _fill(s, "warmup_iters", 0)
        _fill(s, "warmup_factor", 1.0)
    if meta is not None:
        _fill(m, "num_classes", int(meta_get(meta, "num_classes")))
    if m["num_classes"] is not None:
        _fill(m, "num_queries", default_num_queries(m["arch"], m["num_classes"]))
    if meta is not None:
        _fill(data, "train_split", meta_get(meta, "train_split", "train"))
        _fill(data, "val_split", meta_get(meta, "test_split", "val"))
        crop = meta_get(meta, "crop_size", None)
        if crop is not None:
            _fill(data, "crop_size", list(crop) if not isinstance(crop, int) else [crop, crop])
        _fill(data, "short_sizes", _maybe_list(meta_get(meta, "train_short_sizes", None)))
        _fill(data, "max_size", meta_get(meta, "train_max_size", None))
        _fill(data, "test_short_size", meta_get(meta, "test_short_size", None))
        _fill(data, "test_max_size", meta_get(meta, "test_max_size", None))
        sd = meta_get(meta, "size_divisibility", None)
        if sd is not None and sd > 0 and data.get("crop_size"):
            # official MaskFormerSemanticDatasetMapper: the mapper pads to SIZE_DIVISIBILITY, which equals the crop size in every
            # config that pads; a smaller/larger crop keeps "pad to the crop".
            sd = max(data["crop_size"])
        _fill(data, "size_divisibility", sd)
        if not test.get("tta_scales"):  # factors of the test size replace MIN_SIZES / MAX_SIZE
            _fill(test, "tta_sizes", _maybe_list(meta_get(meta, "tta_sizes", None)))
            _fill(test, "tta_max_size", meta_get(meta, "tta_max_size", None))
        _fill(test, "flip", meta_get(meta, "tta_flip", None))
        task = meta_get(meta, "task", "semantic")
    else:
        task = "semantic"
    if m["arch"] != "maskformer":
        _fill(test, "strategy", "per_pixel")
    elif task == "panoptic":
        _fill(test, "strategy", "general")
    else:
        _fill(test, "strategy", "semantic")
    # TEST.OBJECT_MASK_THRESHOLD 0.8 (COCO) / 0.7 (ADE panoptic); TEST.OVERLAP_THRESHOLD 0.8. Semantic inference ignores them.
    if test["strategy"] == "general_semantic":
        _fill(test, "object_mask_threshold", 0.3)  # appendix Table VII: general inference for semantic data
    _fill(test, "object_mask_threshold", 0.7 if data["dataset"] == "ade20k_panoptic" else 0.8)
    _fill(test, "overlap_threshold", 0.8)
    return RunConfig.model_validate(d)


def check_against_metadata(cfg: RunConfig, meta: Any, source: str) -> None:
    """UserError naming the key when a resolved config disagrees with the dataset metadata on disk.

    The grid resolves K and the splits at plan time, from the data root if it exists, else from the
    dataset's official metadata (or the twin size of params.yaml `data:`); the job checks the prepared
    data it finds still says the same (e.g. a twin remade with another K after the plan).
    """
    k = int(meta_get(meta, "num_classes"))
    # (a released checkpoint's K is checked against the data by pipeline.released.state_for_config)
    if cfg.model.num_classes is not None and cfg.model.weights is None and cfg.model.num_classes != k:
        raise UserError(f"{source}: model.num_classes={cfg.model.num_classes} but the dataset at data.root "
                        f"{cfg.data.root} has {k} classes (its metadata); plan the study again")
    splits = tuple(meta_get(meta, "splits", ()))
    for key in ("train_split", "val_split"):
        value = getattr(cfg.data, key)
        if value is not None and splits and value not in splits:
            raise UserError(f"{source}: data.{key}={value!r} is not a split of {cfg.data.dataset} "
                            f"(metadata splits: {', '.join(splits)})")


def meta_get(meta: Any, name: str, default: Any = ...) -> Any:
    """Read a metadata field from an object or a dict (the metadata class is the data package's)."""
    value = meta.get(name, default) if isinstance(meta, dict) else getattr(meta, name, default)
    if value is ...:
        raise UserError(f"dataset metadata has no field {name!r}")
    return value


def _maybe_list(value: Any) -> Any:
    return list(value) if value is not None and not isinstance(value, (int, float)) else value


def _fill(section: dict[str, Any], key: str, value: Any) -> None:
    if section.get(key) is None and value is not None:
        section[key] = value


def load_config(path: str | os.PathLike) -> RunConfig:
    """Read a YAML run config (safe loader, duplicate keys refused) and validate it; errors name the file and key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    raw = load_yaml(path) or {}  # syntax errors and duplicate keys name the file (pipeline.yamlio)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping with sections model/data/solver/test/run")
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a config dict; a `UserError` lists each bad key as `section.key: problem`."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise UserError(f"{source}: invalid run config: {problems}") from None


def dump_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write the config as YAML atomically (temp file + fsync + rename)."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write_text(Path(path), text)


def check_output_file(path: str | os.PathLike | None, flag: str, overwrite: bool) -> None:
    """UserError naming `path` when a command would replace a file it may not have written.

    An explicit output file (`--out`, `--output`) is written only when it does not exist yet, or when the
    user says `--overwrite`; a folder is always refused. Called before any work starts. (DVC removes a
    stage's outputs before it runs it, so stage commands need no flag.)
    """
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {p}: is a folder; give a file path")
    if (p.exists() or p.is_symlink()) and not overwrite:
        raise UserError(f"{flag} {p}: exists; nothing was written. Pass --overwrite to replace it, or choose "
                        f"another path")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old or the new file, never a partial one.

    The one atomic-write helper of the pipeline: on any failure the temp file is removed, and an OSError
    (read-only or full disk, no permission) is re-raised naming `path`, so the CLI prints one line.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if exc.filename is None or exc.filename == tmp:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
