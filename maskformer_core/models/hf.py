"""HF transformers MaskFormer <-> this project: `from_hf_pretrained(dir)` builds our MaskFormer from a
directory written by `MaskFormerForInstanceSegmentation.save_pretrained` (config.json + model.safetensors
or pytorch_model.bin), `save_hf_pretrained(model, kwargs, dir)` writes the reverse. transformers itself
is not needed: config.json is read as JSON and the weights through safetensors / torch.load(weights_only).

Key names follow HF's own conversion scripts from the official checkpoints
(transformers/models/maskformer/convert_maskformer_{resnet,swin}_to_pytorch.py,
convert_maskformer_original_pytorch_checkpoint_to_pytorch.py): our module names are the official
detectron2 ones, so the mapping below is theirs read in the other direction. Two on-disk spellings of
the decoder exist (transformers < 5 in memory and every `save_pretrained` file: `self_attn.out_proj`,
`layers.N.fc1`; transformers >= 5 in memory: `o_proj`, `layers.N.mlp.fc1`); both are read, the first is
written (the hub layout, loaded by every transformers version).

What HF cannot express is refused with a ConfigError naming the field: the "+6 Enc" transformer-encoder
pixel decoder (HF's MaskFormerPixelDecoder is the FPN only), R101c's DeepLab stem (HF's ResNet
conversion raises NotImplementedError for it), the smoke ResNet, the per-pixel baselines, the box head
and the decoder without self-attention.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from maskformer_core.errors import CheckpointError, ConfigError
from maskformer_core.models.backbones.swin import SWIN_CONFIGS

__all__ = ["hf_config_to_build_kwargs", "build_kwargs_to_hf_config", "hf_key_map", "from_hf_pretrained",
           "load_hf_state_dict", "read_hf_config", "save_hf_pretrained", "state_dict_from_hf", "state_dict_to_hf"]

# Defaults of the HF config classes for fields a config.json may leave out (transformers
# configuration_maskformer.py MaskFormerConfig / MaskFormerDetrConfig, configuration_swin.py,
# configuration_resnet.py). MaskFormerConfig's default backbone is Swin-B 384 (window 12).
_MASKFORMER_DEFAULTS = {"fpn_feature_size": 256, "mask_feature_size": 256}
_DETR_DEFAULTS = {"num_queries": 100, "decoder_layers": 6, "d_model": 256, "decoder_ffn_dim": 2048,
                  "decoder_attention_heads": 8, "dropout": 0.1, "activation_function": "relu"}
_SWIN_DEFAULTS = {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "window_size": 7,
                  "patch_size": 4, "num_channels": 3, "mlp_ratio": 4.0, "qkv_bias": True, "hidden_act": "gelu",
                  "use_absolute_embeddings": False, "layer_norm_eps": 1e-5, "drop_path_rate": 0.1}
_DEFAULT_BACKBONE = {"model_type": "swin", "embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32],
                     "window_size": 12, "drop_path_rate": 0.3, "image_size": 384}
_RESNET_DEFAULTS = {"embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048], "depths": [3, 4, 6, 3],
                    "layer_type": "bottleneck", "hidden_act": "relu", "downsample_in_first_stage": False,
                    "downsample_in_bottleneck": False, "num_channels": 3}
# Our ResNet names (detectron2 modeling/backbone/resnet.py, num_blocks_per_stage): R50 [3,4,6,3], R101 [3,4,23,3]; bottleneck widths 64..512 -> 256..2048.
_RESNET_DEPTHS = {(3, 4, 6, 3): "R50", (3, 4, 23, 3): "R101"}
_OUT_FEATURES = ["stage1", "stage2", "stage3", "stage4"]

# HF-only tensors: derived buffers, BN counters, the classifier-era final Swin norm MaskFormer never
# reads, and the loss's class weights. Ignored on import, filled on export.
_HF_EXTRA = re.compile(r"(num_batches_tracked$|relative_position_index$|^criterion\.|"
                       r"^model\.pixel_level_module\.encoder\.model\.layernorm\.)")


# ----------------------------------------------------------------------------------------- config

def _with_defaults(section: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    out.update(section or {})
    return out


def _expect(cfg: Mapping[str, Any], key: str, value: Any, where: str) -> None:
    got = cfg.get(key)
    same = (float(got) == float(value)) if isinstance(value, float) and isinstance(got, (int, float)) else got == value
    if not same:
        raise ConfigError(f"{where}.{key}={got!r} is not supported: the official MaskFormer uses {value!r}")


def hf_config_to_build_kwargs(config: Mapping[str, Any], source: str = "config.json") -> dict[str, Any]:
    """HF MaskFormerConfig dict -> `build_model` kwargs (arch maskformer, base pixel decoder).

    Raises ConfigError naming the field (`<source>: backbone_config.depths=...`) for anything our
    architecture does not reproduce exactly.
    """
    where = source
    if config.get("model_type") != "maskformer":
        raise ConfigError(f"{where}: model_type={config.get('model_type')!r}, expected 'maskformer' "
                          f"(a MaskFormerForInstanceSegmentation checkpoint)")
    cfg = _with_defaults(config, _MASKFORMER_DEFAULTS)
    id2label = cfg.get("id2label") or {}
    num_classes = len(id2label) if id2label else cfg.get("num_labels")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"{where}: id2label is missing or empty; cannot tell the number of classes K")
    dec = _with_defaults(cfg.get("decoder_config"), _DETR_DEFAULTS)
    if dec.get("model_type", "detr") != "detr":
        raise ConfigError(f"{where}: decoder_config.model_type={dec.get('model_type')!r} is not supported (detr only)")
    _expect(dec, "activation_function", "relu", f"{where}: decoder_config")
    kwargs: dict[str, Any] = dict(
        arch="maskformer", num_classes=num_classes, num_queries=int(dec["num_queries"]),
        dec_layers=int(dec["decoder_layers"]), hidden_dim=int(dec["d_model"]),
        nheads=int(dec["decoder_attention_heads"]), dim_feedforward=int(dec["decoder_ffn_dim"]),
        dropout=float(dec["dropout"]), conv_dim=int(cfg["fpn_feature_size"]), mask_dim=int(cfg["mask_feature_size"]),
        pixel_decoder="base", transformer_in_feature="res5")
    bb_raw = cfg.get("backbone_config")
    bb_type = (bb_raw or _DEFAULT_BACKBONE).get("model_type")
    bwhere = f"{where}: backbone_config"
    if bb_type in ("swin", "maskformer-swin"):
        bb = _with_defaults(bb_raw if bb_raw is not None else _DEFAULT_BACKBONE, _SWIN_DEFAULTS)
        for key, value in (("patch_size", 4), ("num_channels", 3), ("mlp_ratio", 4.0), ("qkv_bias", True),
                           ("hidden_act", "gelu"), ("use_absolute_embeddings", False), ("layer_norm_eps", 1e-5)):
            _expect(bb, key, value, bwhere)
        shape = (int(bb["embed_dim"]), tuple(bb["depths"]), tuple(bb["num_heads"]))
        names = [n for n, c in SWIN_CONFIGS.items() if (c["embed_dim"], tuple(c["depths"]), tuple(c["num_heads"])) == shape]
        if not names:
            known = ", ".join(f"{n} (C {c['embed_dim']}, depths {list(c['depths'])}, heads {list(c['num_heads'])})"
                              for n, c in SWIN_CONFIGS.items())
            raise ConfigError(f"{bwhere}: embed_dim={shape[0]}, depths={list(shape[1])}, num_heads={list(shape[2])} "
                              f"match no Swin of this project; known: {known}")
        kwargs["backbone"] = names[0]
        if int(bb["window_size"]) != SWIN_CONFIGS[names[0]]["window_size"]:
            kwargs["swin_window"] = int(bb["window_size"])
        kwargs["drop_path"] = float(bb["drop_path_rate"])
    elif bb_type == "resnet":
        bb = _with_defaults(bb_raw, _RESNET_DEFAULTS)
        for key, value in (("layer_type", "bottleneck"), ("embedding_size", 64), ("hidden_sizes", [256, 512, 1024, 2048]),
                           ("hidden_act", "relu"), ("num_channels", 3), ("downsample_in_first_stage", False),
                           # stride in the 3x3 conv (torchvision / detectron2 R-50.pkl, MODEL.RESNETS.STRIDE_IN_1X1 False in the MaskFormer configs)
                           ("downsample_in_bottleneck", False)):
            _expect(bb, key, value, bwhere)
        depths = tuple(int(d) for d in bb["depths"])
        if depths not in _RESNET_DEPTHS:
            raise ConfigError(f"{bwhere}.depths={list(depths)} is not R50 [3, 4, 6, 3] or R101 [3, 4, 23, 3]")
        kwargs["backbone"] = _RESNET_DEPTHS[depths]
    else:
        raise ConfigError(f"{bwhere}.model_type={bb_type!r} is not supported (swin, maskformer-swin or resnet)")
    return kwargs


def build_kwargs_to_hf_config(kwargs: Mapping[str, Any], id2label: Mapping[int, str] | None = None) -> dict[str, Any]:
    """`build_model` kwargs -> an HF MaskFormerConfig dict (config.json). ConfigError names the option HF lacks."""
    arch = kwargs.get("arch", "maskformer")
    backbone = kwargs.get("backbone", "R50")
    unsupported = [
        (arch != "maskformer", f"arch={arch!r}: HF has MaskFormer only, not the per-pixel baselines"),
        (kwargs.get("pixel_decoder", "base") != "base",
         "pixel_decoder='transformer_encoder' (+6 Enc): HF's MaskFormerPixelDecoder is the FPN only; "
         "export the detectron2 .pkl instead"),
        (kwargs.get("transformer_in_feature", "res5") != "res5", "transformer_in_feature must be 'res5' for HF"),
        (bool(kwargs.get("box_head", False)), "box_head=True: HF MaskFormer has no box head"),
        (not kwargs.get("dec_self_attention", True), "dec_self_attention=False: HF's DETR decoder always has self-attention"),
        (backbone not in SWIN_CONFIGS and backbone not in _RESNET_DEPTHS.values(),
         f"backbone={backbone!r}: HF MaskFormer has Swin and R50/R101 backbones only (R101c's DeepLab stem and the smoke ResNet are not expressible)"),
    ]
    for bad, msg in unsupported:
        if bad:
            raise ConfigError(f"cannot export to HF transformers: {msg}")
    k = int(kwargs["num_classes"])
    hidden = int(kwargs.get("hidden_dim", 256))
    if backbone in SWIN_CONFIGS:
        sc = SWIN_CONFIGS[backbone]
        window = int(kwargs.get("swin_window") or sc["window_size"])
        in_res5 = sc["embed_dim"] * 8
        bb = dict(_SWIN_DEFAULTS, model_type="maskformer-swin", embed_dim=sc["embed_dim"], depths=list(sc["depths"]),
                  num_heads=list(sc["num_heads"]), window_size=window, drop_path_rate=float(kwargs.get("drop_path", 0.3)),
                  out_features=_OUT_FEATURES, out_indices=[1, 2, 3, 4])
    else:
        depths = next(list(d) for d, n in _RESNET_DEPTHS.items() if n == backbone)
        in_res5 = 2048
        bb = dict(_RESNET_DEFAULTS, model_type="resnet", depths=depths, out_features=_OUT_FEATURES, out_indices=[1, 2, 3, 4])
    if kwargs.get("enforce_input_proj", False) and in_res5 == hidden:
        raise ConfigError("cannot export to HF transformers: enforce_input_proj=True with res5 channels == hidden_dim "
                          "(HF projects only when the widths differ)")
    labels = {int(i): str(n) for i, n in (id2label or {i: f"class_{i}" for i in range(k)}).items()}
    if sorted(labels) != list(range(k)):
        raise ConfigError(f"id2label must name classes 0..{k - 1}, got ids {sorted(labels)[:5]}...")
    dropout = float(kwargs.get("dropout", 0.1))
    dec = dict(model_type="detr", num_queries=int(kwargs.get("num_queries") or 100), decoder_layers=int(kwargs.get("dec_layers", 6)),
               d_model=hidden, decoder_ffn_dim=int(kwargs.get("dim_feedforward", 2048)),
               decoder_attention_heads=int(kwargs.get("nheads", 8)), dropout=dropout,
               # official decoder: nn.MultiheadAttention(dropout) and the FFN dropout use the same p (official mask_former/modeling/transformer/transformer.py)
               attention_dropout=dropout, activation_dropout=dropout, activation_function="relu",
               use_timm_backbone=False, backbone_config=None)
    return {"model_type": "maskformer", "architectures": ["MaskFormerForInstanceSegmentation"],
            "id2label": {str(i): labels[i] for i in range(k)}, "label2id": {labels[i]: i for i in range(k)},
            "fpn_feature_size": int(kwargs.get("conv_dim", 256)), "mask_feature_size": int(kwargs.get("mask_dim", 256)),
            # use_auxiliary_loss False as in HF's converted facebook/maskformer-* configs: with True, HF's
            # forward needs output_hidden_states=True (transformers 5.24 fails without it); inference ignores it
            "no_object_weight": 0.1, "use_auxiliary_loss": False,
            "backbone_config": bb, "decoder_config": dec}


# ----------------------------------------------------------------------------------------- key map

_P = "model.pixel_level_module.encoder."
_D = "model.pixel_level_module.decoder."
_T = "model.transformer_module."
_DEC_RENAME = {"norm1": "self_attn_layer_norm", "norm2": "encoder_attn_layer_norm", "norm3": "final_layer_norm",
               "linear1": "fc1", "linear2": "fc2"}
_SWIN_BLOCK = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.relative_position_bias_table":
               "attention.self.relative_position_bias_table", "attn.proj": "attention.output.dense",
               "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}


def hf_key_map(key: str) -> list[str]:
    """HF name(s) of one of our state-dict keys; three names when our fused q/k/v tensor is split in HF
    (decoder `in_proj_*`, Swin `attn.qkv.*`). Raises KeyError for a key HF has no place for."""
    m = re.fullmatch(r"backbone\.stem\.conv1\.(norm\.)?(\w+)", key)
    if m:
        return [f"{_P}embedder.embedder.{'normalization' if m.group(1) else 'convolution'}.{m.group(2)}"]
    m = re.fullmatch(r"backbone\.res(\d)\.(\d+)\.(conv(\d)|shortcut)\.(norm\.)?(\w+)", key)
    if m:
        stage, block, part = int(m.group(1)) - 2, m.group(2), ("shortcut" if m.group(3) == "shortcut" else f"layer.{int(m.group(4)) - 1}")
        return [f"{_P}encoder.stages.{stage}.layers.{block}.{part}.{'normalization' if m.group(5) else 'convolution'}.{m.group(6)}"]
    m = re.fullmatch(r"backbone\.patch_embed\.(proj|norm)\.(\w+)", key)
    if m:
        return [f"{_P}model.embeddings.{'patch_embeddings.projection' if m.group(1) == 'proj' else 'norm'}.{m.group(2)}"]
    m = re.fullmatch(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.(.+)\.(\w+)", key)
    if m:
        base = f"{_P}model.encoder.layers.{m.group(1)}.blocks.{m.group(2)}."
        if m.group(3) == "attn.qkv":
            return [f"{base}attention.self.{n}.{m.group(4)}" for n in ("query", "key", "value")]
        if key.endswith("relative_position_bias_table"):
            return [base + _SWIN_BLOCK["attn.relative_position_bias_table"]]
        return [f"{base}{_SWIN_BLOCK[m.group(3)]}.{m.group(4)}"]
    m = re.fullmatch(r"backbone\.layers\.(\d+)\.downsample\.(.+)", key)
    if m:
        return [f"{_P}model.encoder.layers.{m.group(1)}.downsample.{m.group(2)}"]
    m = re.fullmatch(r"backbone\.norm(\d)\.(\w+)", key)
    if m:
        return [f"{_P}hidden_states_norms.{m.group(1)}.{m.group(2)}"]
    m = re.fullmatch(r"sem_seg_head\.pixel_decoder\.(adapter|layer)_(\d)\.(norm\.)?(\w+)", key)
    if m:
        kind, n, idx = m.group(1), int(m.group(2)), "1" if m.group(3) else "0"
        if kind == "layer" and n == 4:
            return [f"{_D}fpn.stem.{idx}.{m.group(4)}"]
        return [f"{_D}fpn.layers.{4 - n - 1}.{'proj' if kind == 'adapter' else 'block'}.{idx}.{m.group(4)}"]
    m = re.fullmatch(r"sem_seg_head\.pixel_decoder\.mask_features\.(\w+)", key)
    if m:
        return [f"{_D}mask_projection.{m.group(1)}"]
    m = re.fullmatch(r"sem_seg_head\.predictor\.transformer\.decoder\.layers\.(\d+)\.(\w+)\.(\w+)", key)
    if m:
        base = f"{_T}decoder.layers.{m.group(1)}."
        attn = {"self_attn": "self_attn", "multihead_attn": "encoder_attn"}.get(m.group(2))
        if attn and m.group(3).startswith("in_proj_"):
            p = m.group(3)[len("in_proj_"):]
            return [f"{base}{attn}.{n}_proj.{p}" for n in ("q", "k", "v")]
        if attn:
            raise KeyError(key)
        return [f"{base}{_DEC_RENAME[m.group(2)]}.{m.group(3)}"]
    m = re.fullmatch(r"sem_seg_head\.predictor\.transformer\.decoder\.layers\.(\d+)\.(self_attn|multihead_attn)\.out_proj\.(\w+)", key)
    if m:
        attn = "self_attn" if m.group(2) == "self_attn" else "encoder_attn"
        return [f"{_T}decoder.layers.{m.group(1)}.{attn}.out_proj.{m.group(3)}"]
    fixed = {"sem_seg_head.predictor.transformer.decoder.norm.weight": f"{_T}decoder.layernorm.weight",
             "sem_seg_head.predictor.transformer.decoder.norm.bias": f"{_T}decoder.layernorm.bias",
             "sem_seg_head.predictor.query_embed.weight": f"{_T}queries_embedder.weight",
             "sem_seg_head.predictor.input_proj.weight": f"{_T}input_projection.weight",
             "sem_seg_head.predictor.input_proj.bias": f"{_T}input_projection.bias",
             "sem_seg_head.predictor.class_embed.weight": "class_predictor.weight",
             "sem_seg_head.predictor.class_embed.bias": "class_predictor.bias"}
    if key in fixed:
        return [fixed[key]]
    m = re.fullmatch(r"sem_seg_head\.predictor\.mask_embed\.layers\.(\d)\.(\w+)", key)
    if m:
        return [f"mask_embedder.{m.group(1)}.0.{m.group(2)}"]
    raise KeyError(key)


def _to_hub_layout(key: str) -> str:
    """transformers >= 5 in-memory decoder names -> the hub (save_pretrained) spelling."""
    if key.startswith(_T + "decoder.layers."):
        key = re.sub(r"\.(self_attn|encoder_attn)\.o_proj\.", r".\1.out_proj.", key)
        key = re.sub(r"\.mlp\.(fc[12])\.", r".\1.", key)
    return key


def state_dict_from_hf(hf_sd: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                       source: str = "HF checkpoint") -> dict[str, torch.Tensor]:
    """HF state dict -> our names for a model whose state dict is `own`. CheckpointError names missing
    HF tensors, tensors we do not know, and shape mismatches."""
    hf = {_to_hub_layout(k): v for k, v in hf_sd.items()}
    out, used, missing = {}, set(), []
    for key, ref in own.items():
        try:
            names = hf_key_map(key)
        except KeyError:
            raise CheckpointError(f"{source}: our weight {key!r} has no HF counterpart (model not exportable)") from None
        if any(n not in hf for n in names):
            missing.extend(n for n in names if n not in hf)
            continue
        used.update(names)
        value = hf[names[0]] if len(names) == 1 else torch.cat([hf[n] for n in names], 0)
        if tuple(value.shape) != tuple(ref.shape):
            raise CheckpointError(f"{source}: {names[0]} has shape {tuple(value.shape)}, {key} expects {tuple(ref.shape)}")
        out[key] = value.to(ref.dtype)
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} weights missing, e.g. {missing[:5]}")
    unknown = [k for k in hf if k not in used and not _HF_EXTRA.search(k)]
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} weights this model has no place for, e.g. {unknown[:5]} "
                              f"(config.json and weights disagree?)")
    return out


def state_dict_to_hf(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our model -> HF tensors (hub layout), with the HF-only buffers filled: relative_position_index
    from our Swin blocks, BN `num_batches_tracked` 0, the unused final Swin LayerNorm at its init
    (1, 0), `criterion.empty_weight` (1 per class, no-object 0.1, official MODEL.MASK_FORMER.NO_OBJECT_WEIGHT)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key in ("pixel_mean", "pixel_std"):
            continue
        names = hf_key_map(key)
        parts = value.chunk(3, 0) if len(names) == 3 else (value,)
        for n, v in zip(names, parts):
            out[n] = v.detach().clone().contiguous()
    for name, buf in model.named_buffers():
        m = re.fullmatch(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_index", name)
        if m:
            out[f"{_P}model.encoder.layers.{m.group(1)}.blocks.{m.group(2)}.attention.self.relative_position_index"] = buf.clone()
    for key in [k for k in out if k.endswith(".running_var")]:
        out[key[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    norm3 = model.state_dict().get("backbone.norm3.weight")
    if norm3 is not None:
        out[f"{_P}model.layernorm.weight"] = torch.ones_like(norm3)
        out[f"{_P}model.layernorm.bias"] = torch.zeros_like(norm3)
    weight = torch.ones(model.num_classes + 1)
    weight[-1] = 0.1
    out["criterion.empty_weight"] = weight
    return out


# ----------------------------------------------------------------------------------------- files

def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory (an HF checkpoint is a folder with config.json)")
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json (not an HF save_pretrained folder)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{cfg_file}: cannot read JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object")
    return cfg


def load_hf_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """model.safetensors (or sharded model-*.safetensors), else pytorch_model.bin (weights_only)."""
    from maskformer_core.models.weights import load_weights_file

    path = Path(path)
    files = sorted(path.glob("model*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_weights_file(f))
    return sd


def from_hf_pretrained(path: str | os.PathLike) -> nn.Module:
    """Build our MaskFormer from an HF `save_pretrained` folder; returns it in eval mode with
    `model.build_kwargs` (the build_model kwargs) and `model.id2label` attached."""
    from maskformer_core.models.build import build_model

    cfg = read_hf_config(path)
    kwargs = hf_config_to_build_kwargs(cfg, source=str(Path(path) / "config.json"))
    model = build_model(**kwargs)
    sd = state_dict_from_hf(load_hf_state_dict(path), model.state_dict(), source=str(path))
    model.load_state_dict(sd, strict=False)
    model.build_kwargs = kwargs
    model.id2label = {int(i): str(n) for i, n in (cfg.get("id2label") or {}).items()}
    return model.eval()


def save_hf_pretrained(model: nn.Module, kwargs: Mapping[str, Any], out_dir: str | os.PathLike,
                       id2label: Mapping[int, str] | None = None) -> Path:
    """Write `out_dir/config.json` + `out_dir/model.safetensors` loadable by
    `MaskFormerForInstanceSegmentation.from_pretrained`. `kwargs` are the model's build_model kwargs.
    Refuses a non-empty `out_dir` (nothing is overwritten); files are written to a temporary sibling and renamed."""
    import shutil
    import tempfile

    from safetensors.torch import save_file

    config = build_kwargs_to_hf_config(kwargs, id2label)
    tensors = state_dict_to_hf(model)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointError(f"{out_dir} exists and is not an empty folder; choose a new output folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
