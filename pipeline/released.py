"""Released checkpoints: read any model file this project meets into (build_model kwargs, state dict,
provenance), write converted files, and load one for evaluation against a run config.

Sources (`detect_format`):
- `hf`: a folder written by HF transformers' `save_pretrained` (maskformer_core.models.hf);
- `detectron2`: an official `model_final_*.pkl` (facebookresearch/MaskFormer MODEL_ZOO.md), options read
  from the tensor shapes (maskformer_core.models.official.infer_official_kwargs);
- `converted`: a `.pt` written by `python -m pipeline convert --out` ({"model", "model_kwargs", "released"});
- `ours`: a training checkpoint of this project (`checkpoints/final.pt`; the model section of its config).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from maskformer_core.errors import CheckpointError
from maskformer_core.models.defaults import MODEL_DEFAULTS, default_enc_layers
from pipeline.errors import UserError

FORMATS = ("hf", "detectron2", "converted", "ours")
PROVENANCE = "released checkpoint, evaluated here"
# build_model options a checkpoint fixes (dropout / drop_path / pretrained / size_divisibility do not
# change the weights' shapes or an evaluation's result, apart from size_divisibility which is the
# dataset's, MODEL.MASK_FORMER.SIZE_DIVISIBILITY).
ARCH_KEYS = ("arch", "backbone", "num_classes", "num_queries", "dec_layers", "dec_self_attention", "pixel_decoder",
             "enc_layers", "transformer_in_feature", "hidden_dim", "mask_dim", "conv_dim", "nheads",
             "dim_feedforward", "box_head", "swin_window")


def detect_format(path: str | os.PathLike) -> str:
    path = Path(path)
    if path.is_dir():
        return "hf"
    if path.suffix.lower() == ".pkl":
        return "detectron2"
    if path.suffix.lower() in (".pt", ".pth"):
        state = _load_pt(path)
        return "converted" if "released" in state else "ours"
    raise CheckpointError(f"{path}: unknown checkpoint format (expected an HF folder, a detectron2 .pkl or a .pt)")


def _load_pt(path: Path) -> dict[str, Any]:
    from pipeline import checkpoint as ckpt

    return ckpt.load_file(path)


def _normalise(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Arch keys with build_model's own defaults filled (its signature; enc_layers, swin_window per backbone)."""
    import inspect

    from maskformer_core.models import build_model
    from maskformer_core.models.backbones.swin import SWIN_CONFIGS

    defaults = {n: p.default for n, p in inspect.signature(build_model).parameters.items()
                if p.default is not inspect.Parameter.empty}
    out = {k: kwargs.get(k, defaults.get(k)) for k in ARCH_KEYS}
    if out["num_queries"] is None:
        out["num_queries"] = MODEL_DEFAULTS.num_queries  # NUM_OBJECT_QUERIES (maskformer_core.models.defaults)
    if out["enc_layers"] is None:
        out["enc_layers"] = default_enc_layers(out["pixel_decoder"])
    if out["swin_window"] is None and out["backbone"] in SWIN_CONFIGS:
        out["swin_window"] = SWIN_CONFIGS[out["backbone"]]["window_size"]
    return out


def load_any(path: str | os.PathLike, fmt: str | None = None, *, nheads: int = 8) -> tuple[dict, dict, dict]:
    """(build_model kwargs, our state dict, provenance) of any supported checkpoint.

    `fmt` (one of FORMATS; default: detected) must agree with the file. `nheads` is used for detectron2
    files only (the weights do not record it; MASK_FORMER.NHEADS 8 in every official config: add_mask_former_config).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    found = detect_format(path)
    if fmt is not None and fmt != found and not (fmt == "ours" and found == "converted"):
        raise CheckpointError(f"{path} is a {found} checkpoint, not {fmt}")
    source = {"file": str(path), "format": found}
    if found == "hf":
        from maskformer_core.models.hf import from_hf_pretrained

        model = from_hf_pretrained(path)
        source["id2label"] = {str(k): v for k, v in model.id2label.items()}
        return dict(model.build_kwargs), model.state_dict(), source
    if found == "detectron2":
        from maskformer_core.models.official import infer_official_kwargs
        from maskformer_core.models.weights import load_weights_file

        raw = load_weights_file(path)
        sd = {k: v for k, v in raw.items() if not k.startswith("criterion.") and k not in ("pixel_mean", "pixel_std")}
        source["md5"] = md5_file(path)
        return infer_official_kwargs(sd, source=str(path), nheads=nheads), sd, source
    state = _load_pt(path)
    if found == "converted":
        return dict(state["model_kwargs"]), state["model"], dict(state["released"])
    cfg = state.get("config")
    if not isinstance(cfg, dict) or "model" not in cfg or "model" not in state:
        raise CheckpointError(f"{path}: a training checkpoint needs 'model' and 'config' entries")
    from pipeline.config import ModelConfig

    model_cfg = ModelConfig.model_validate(cfg["model"])
    k = model_cfg.num_classes
    if k is None:
        k = int(state["model"]["sem_seg_head.predictor.class_embed.weight"].shape[0]) - 1
    source["trained_config_dataset"] = (cfg.get("data") or {}).get("dataset")
    source["iteration"] = int(state.get("iteration", 0))
    return model_cfg.build_kwargs(k), state["model"], source


def _check_loads(kwargs: Mapping[str, Any], sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Build the model and load `sd` strictly: a converted file is only written when it will load."""
    from maskformer_core.models import build_model

    model = build_model(**{k: v for k, v in kwargs.items() if k != "pretrained"})
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not fit the model its options describe ({exc})") from exc


def write_converted(kwargs: Mapping[str, Any], sd: Mapping[str, torch.Tensor], provenance: Mapping[str, Any],
                    out: str | os.PathLike) -> Path:
    """`{"model", "model_kwargs", "released", "iteration": 0}` as a torch file (weights_only-loadable) + `.sha256`."""
    from pipeline import checkpoint as ckpt

    out = Path(out)
    if out.exists():
        raise UserError(f"{out} exists; choose a new --out file (nothing is overwritten)")
    _check_loads(kwargs, sd, str(provenance.get("file", out)))
    state = {"model": {k: v.detach().cpu().contiguous() for k, v in sd.items()},
             "model_kwargs": {k: v for k, v in kwargs.items() if k != "pretrained"},
             "released": dict(provenance), "iteration": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        torch.save(state, tmp)
        digest = ckpt.sha256_file(tmp)
        out.with_name(out.name + ".sha256").write_text(f"{digest}  {out.name}\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def md5_file(path: Path) -> str:
    h = hashlib.md5()  # noqa: S324 - MODEL_ZOO.md publishes md5 prefixes, not a security use
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def missing_message(path: Path, tags: Mapping[str, str]) -> str:
    """The offline message for a released checkpoint that is not on disk: file, where to get it, where to put it."""
    where = []
    if tags.get("released_url"):
        where.append(f"download {tags['released_url']}")
    if tags.get("released_hf_id"):
        where.append(f"or convert the HF model {tags['released_hf_id']} (hf download "
                     f"{tags['released_hf_id']} --local-dir DIR; python -m pipeline convert --from hf DIR --out FILE.pt) "
                     f"and point the params entry at FILE.pt")
    get = "; ".join(where) if where else "no download location is recorded for it"
    return (f"released checkpoint {path.name} is not on disk: {get}; put it at {path.resolve()} "
            f"(params.yaml `released:` lists the files and their sources)")


def check_integrity(path: Path, tags: Mapping[str, str]) -> None:
    """MODEL_ZOO.md: "any model on this page contains its md5 prefix in its file name"; sha256 when the params give one."""
    prefix = tags.get("released_md5_prefix")
    if prefix and path.is_file():
        digest = md5_file(path)
        if not digest.startswith(prefix):
            raise CheckpointError(f"{path}: md5 {digest[:12]}... does not start with the published prefix {prefix} "
                                  f"(truncated or a different file); download it again")
    sha = tags.get("released_sha256")
    if sha and path.is_file():
        from pipeline import checkpoint as ckpt

        if ckpt.sha256_file(path) != sha:
            raise CheckpointError(f"{path}: sha256 differs from the published {sha}")


def state_for_config(path: str | os.PathLike, kwargs: Mapping[str, Any], tags: Mapping[str, str] | None = None,
                     dataset_classes: int | None = None) -> dict[str, Any]:
    """A released checkpoint as `{"model": state dict, "iteration": 0, "released": provenance}` for a run
    whose build_model kwargs are `kwargs` on a dataset of `dataset_classes` classes; CheckpointError names
    the options that differ, or (file missing) where to get the file and where to put it."""
    path = Path(path)
    tags = dict(tags or {})
    if not path.exists():
        raise CheckpointError(missing_message(path, tags))
    check_integrity(path, tags)
    ck_kwargs, sd, prov = load_any(path, nheads=int(kwargs.get("nheads", 8)))
    if dataset_classes is not None and int(ck_kwargs["num_classes"]) != int(dataset_classes):
        raise CheckpointError(f"{path} predicts {ck_kwargs['num_classes']} classes, the dataset has {dataset_classes} "
                              f"(a checkpoint of another dataset?)")
    a, b = _normalise(ck_kwargs), _normalise(kwargs)
    differ = [k for k in ARCH_KEYS if a[k] != b[k]]
    if differ:
        shown = ", ".join(f"{k} (checkpoint {a[k]!r} != config {b[k]!r})" for k in differ)
        raise CheckpointError(f"{path} does not fit this cell's model: {shown}")
    for key in ("released_url", "released_hf_id", "released_config"):
        if tags.get(key):
            prov[key[len("released_"):]] = tags[key]
    return {"model": sd, "iteration": 0, "released": prov}

