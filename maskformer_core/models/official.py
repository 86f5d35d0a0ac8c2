"""Official detectron2 MaskFormer checkpoints (`model_final_*.pkl`): write our model in that format and
read back the `build_model` options a released file implies.

Our module names are the official ones (facebookresearch/MaskFormer mask_former/mask_former_model.py:
`backbone`, `sem_seg_head.pixel_decoder`, `sem_seg_head.predictor`), so the file is our state dict as
numpy arrays under `{"model": ...}`, as detectron2's Checkpointer writes it; `weights.load_official_model`
reads it back with the restricted unpickler.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from maskformer_core.errors import CheckpointError
from maskformer_core.models.backbones.swin import SWIN_CONFIGS

__all__ = ["official_state_dict", "save_official_pkl", "infer_official_kwargs"]

_P = "sem_seg_head.predictor."
_PD = "sem_seg_head.pixel_decoder."


def official_state_dict(model: nn.Module) -> dict[str, Any]:
    """{official name: numpy array}; the normalisation buffers stay out (non-persistent in the official model)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()
            if k not in ("pixel_mean", "pixel_std")}


def save_official_pkl(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `{"model": {name: ndarray}, "__author__": ...}` (detectron2 Checkpointer layout) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump({"model": official_state_dict(model), "__author__": "maskformer_core"}, f, protocol=2)
    os.replace(tmp, path)
    return path


def _count(sd: Mapping[str, Any], pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def infer_official_kwargs(sd: Mapping[str, torch.Tensor], source: str = "checkpoint", nheads: int = 8) -> dict[str, Any]:
    """`build_model` kwargs of a MaskFormer state dict in the official names, read from tensor shapes.

    The number of attention heads cannot be read from the weights; every official config uses
    MODEL.MASK_FORMER.NHEADS 8 (official config.py add_mask_former_config), the default here. Raises CheckpointError naming what is missing.
    """
    if f"{_P}class_embed.weight" not in sd:
        raise CheckpointError(f"{source}: no {_P}class_embed.weight: not a MaskFormer (mask classification) checkpoint")
    kwargs: dict[str, Any] = {"arch": "maskformer", "nheads": int(nheads)}
    # ---- backbone
    if "backbone.patch_embed.proj.weight" in sd:
        embed = int(sd["backbone.patch_embed.proj.weight"].shape[0])
        depths = tuple(_count(sd, rf"backbone\.layers\.{i}\.blocks\.(\d+)\.") for i in range(4))
        heads = tuple(int(sd[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1]) for i in range(4))
        names = [n for n, c in SWIN_CONFIGS.items() if (c["embed_dim"], tuple(c["depths"]), tuple(c["num_heads"])) == (embed, depths, heads)]
        if not names:
            raise CheckpointError(f"{source}: Swin with C {embed}, depths {list(depths)}, heads {list(heads)} matches no known backbone")
        kwargs["backbone"] = names[0]
        table = int(sd["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0])
        window = (int(round(table ** 0.5)) + 1) // 2  # (2w - 1)^2 relative positions
        if window != SWIN_CONFIGS[names[0]]["window_size"]:
            kwargs["swin_window"] = window
        res5 = embed * 8
    elif "backbone.stem.conv1.weight" in sd:
        deep = "backbone.stem.conv3.weight" in sd
        blocks = _count(sd, r"backbone\.res4\.(\d+)\.")
        bottleneck = "backbone.res2.0.conv3.weight" in sd
        if not bottleneck and "backbone.stem.conv1.norm.running_mean" not in sd:
            # GroupNorm BasicBlocks: the smoke extra (never a paper model; CI's converted random checkpoints)
            kwargs["backbone"] = "SmokeR18"
        elif not bottleneck:
            raise CheckpointError(f"{source}: ResNet with FrozenBN basic blocks is no backbone of this project")
        else:
            kwargs["backbone"] = {(False, 6): "R50", (False, 23): "R101", (True, 23): "R101c"}.get((deep, blocks))
        if kwargs["backbone"] is None:
            raise CheckpointError(f"{source}: ResNet with {blocks} res4 blocks and {'deep' if deep else 'basic'} stem is not R50/R101/R101c")
        res5 = int(sd["backbone.res5.0.conv3.weight" if bottleneck else "backbone.res5.1.conv2.weight"].shape[0])
    else:
        raise CheckpointError(f"{source}: no backbone.patch_embed / backbone.stem weights: unknown backbone")
    # ---- pixel decoder
    kwargs["conv_dim"] = int(sd[f"{_PD}layer_4.weight"].shape[0]) if f"{_PD}layer_4.weight" in sd else int(sd[f"{_PD}layer_1.weight"].shape[0])
    kwargs["mask_dim"] = int(sd[f"{_PD}mask_features.weight"].shape[0])
    enc = _count(sd, rf"{re.escape(_PD)}transformer\.encoder\.layers\.(\d+)\.")
    kwargs["pixel_decoder"] = "transformer_encoder" if enc else "base"
    kwargs["enc_layers"] = enc
    # ---- predictor
    query = sd[f"{_P}query_embed.weight"]
    kwargs["num_queries"], kwargs["hidden_dim"] = int(query.shape[0]), int(query.shape[1])
    kwargs["num_classes"] = int(sd[f"{_P}class_embed.weight"].shape[0]) - 1
    kwargs["dec_layers"] = _count(sd, rf"{re.escape(_P)}transformer\.decoder\.layers\.(\d+)\.")
    kwargs["dim_feedforward"] = int(sd[f"{_P}transformer.decoder.layers.0.linear1.weight"].shape[0])
    kwargs["dec_self_attention"] = f"{_P}transformer.decoder.layers.0.self_attn.in_proj_weight" in sd
    kwargs["box_head"] = any(k.startswith(f"{_P}bbox_embed.") or k.startswith(f"{_P}box_head.") for k in sd)
    proj = sd.get(f"{_P}input_proj.weight")
    if enc:
        # official transformer_predictor.py: the "+6 Enc" configs feed the encoder output (conv_dim wide) to the
        # decoder
        in_ch = int(proj.shape[1]) if proj is not None else kwargs["hidden_dim"]
        kwargs["transformer_in_feature"] = "res5" if in_ch == res5 and res5 != kwargs["conv_dim"] else "transformer_encoder"
        in_width = res5 if kwargs["transformer_in_feature"] == "res5" else kwargs["conv_dim"]
    else:
        kwargs["transformer_in_feature"] = "res5"
        in_width = res5
    kwargs["enforce_input_proj"] = proj is not None and in_width == kwargs["hidden_dim"]
    return kwargs
