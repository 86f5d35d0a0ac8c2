"""Pretrained weights: safe file loading (detectron2 `.pkl`, torch `.pth`, `.safetensors`), key
converters between detectron2 / our names and timm / torchvision names, and loaders for backbones
and for whole released MaskFormer checkpoints.

Our backbone state dicts use detectron2's names without the `backbone.` prefix (ResNet:
`stem.conv1.weight`, `res2.0.conv1.norm.running_mean`, `res2.0.shortcut.weight`; Swin: the official
`layers.0.downsample.reduction.weight`, `norm0.weight`), so detectron2 <-> ours only adds or strips
`backbone.`. torchvision/timm ResNets use `conv1`/`bn1`/`layer1.0.downsample.0`; timm's deep stem
(`resnet101s`) is `conv1.0/.1/.3/.4/.6` + `bn1`; timm Swin keeps each PatchMerging at the start of
the next stage (`layers.1.downsample`) and has no per-output norms norm0..3.

`.pkl` files are read with a restricted unpickler that only rebuilds numpy arrays/scalars and plain
containers; anything else (e.g. `os.system`) is refused with a CheckpointError.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from maskformer_core.errors import CheckpointError, ConfigError
from maskformer_core.models.backbones import BACKBONES, is_swin

# -------------------------------------------------------------------------------- safe file loading

def _numpy_core():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


_MA = _numpy_core()
# (module, name) -> object. Only what numpy arrays/scalars and plain dicts need to be rebuilt.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _MA._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _MA._reconstruct,
    ("numpy.core.multiarray", "scalar"): _MA.scalar,
    ("numpy._core.multiarray", "scalar"): _MA.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("_codecs", "encode"): __import__("_codecs").encode,  # protocol-2 pickles store bytes this way
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed for numpy arrays (detectron2 `.pkl` files)."""

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[key]
        if module == "numpy" and name.startswith(("float", "int", "uint", "bool")) and hasattr(np, name):
            return getattr(np, name)  # dtype classes some numpy versions reference
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights file")


def _to_tensor(value, key: str, path: Path) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return torch.as_tensor(value.item())
    raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not an array")


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat {name: tensor} dict.

    `.pkl`: detectron2 pickle ({"model": {name: ndarray}, ...} or a bare dict), restricted unpickler.
    `.pth`/`.pt`/`.bin`: `torch.load(weights_only=True)`, unwrapping "model"/"state_dict".
    `.safetensors`: safetensors. Raises CheckpointError naming the file on any problem.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".pkl":
            with open(path, "rb") as f:
                obj = RestrictedUnpickler(f, encoding="latin1").load()
        elif suffix in (".pth", ".pt", ".bin"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".safetensors":
            from safetensors.torch import load_file
            obj = load_file(str(path), device="cpu")
        else:
            raise CheckpointError(f"{path}: unknown weights format {suffix!r}; use .pkl, .pth or .safetensors")
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt file, refused global, wrong pickle
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: no state dict found (got {type(obj).__name__})")
    return {str(k): _to_tensor(v, str(k), path) for k, v in obj.items()}


# -------------------------------------------------------------------------------- ResNet converters

_TV_STAGE = {f"layer{i}": f"res{i + 1}" for i in range(1, 5)}
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")


def torchvision_resnet_to_d2(sd: Mapping[str, torch.Tensor], deep_stem: bool = False) -> dict[str, torch.Tensor]:
    """torchvision / timm ResNet state dict -> our (detectron2) names. Drops `fc.*` and
    `num_batches_tracked`. `deep_stem`: timm `resnet101s` stem (conv1.0/.3/.6 + bn .1/.4/bn1)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        new = None
        if deep_stem:
            m = re.fullmatch(r"conv1\.(\d)\.(\w+)", k)
            if m:
                idx, p = int(m.group(1)), m.group(2)
                new = {0: f"stem.conv1.{p}", 1: f"stem.conv1.norm.{p}", 3: f"stem.conv2.{p}",
                       4: f"stem.conv2.norm.{p}", 6: f"stem.conv3.{p}"}.get(idx)
            elif k.startswith("bn1."):
                new = "stem.conv3.norm." + k[4:]
        else:
            if k == "conv1.weight":
                new = "stem.conv1.weight"
            elif k.startswith("bn1."):
                new = "stem.conv1.norm." + k[4:]
        m = re.fullmatch(r"(layer\d)\.(\d+)\.(.+)", k)
        if m:
            stage, block, rest = _TV_STAGE[m.group(1)], m.group(2), m.group(3)
            rest = re.sub(r"^conv(\d)\.", r"conv\1.", rest)
            rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
            rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
            new = f"{stage}.{block}.{rest}"
        if new is None:
            raise CheckpointError(f"torchvision->detectron2: unexpected ResNet key {k!r}")
        out[new] = v
    return out


def d2_resnet_to_torchvision(sd: Mapping[str, torch.Tensor], deep_stem: bool = False) -> dict[str, torch.Tensor]:
    """Our (detectron2) ResNet names -> torchvision / timm names (inverse of torchvision_resnet_to_d2)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        new = None
        m = re.fullmatch(r"stem\.conv(\d)\.(norm\.)?(\w+)", k)
        if m:
            conv, is_norm, p = int(m.group(1)), m.group(2) is not None, m.group(3)
            if deep_stem:
                if conv == 3 and is_norm:
                    new = f"bn1.{p}"
                else:
                    new = f"conv1.{ {1: 0, 2: 3, 3: 6}[conv] + (1 if is_norm else 0)}.{p}"
            else:
                new = f"bn1.{p}" if is_norm else f"conv1.{p}"
        m = re.fullmatch(r"res(\d)\.(\d+)\.(.+)", k)
        if m:
            stage, block, rest = f"layer{int(m.group(1)) - 1}", m.group(2), m.group(3)
            rest = re.sub(r"^conv(\d)\.norm\.", r"bn\1.", rest)
            rest = rest.replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")
            new = f"{stage}.{block}.{rest}"
        if new is None:
            raise CheckpointError(f"detectron2->torchvision: unexpected ResNet key {k!r}")
        out[new] = v
    return out


# -------------------------------------------------------------------------------- Swin converters

_SWIN_DROP = re.compile(r"(^head\.|^norm\.|\.attn_mask$|\.relative_position_index$|^absolute_pos_embed$)")


def timm_swin_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm SwinTransformer -> official/our names: `layers.{i+1}.downsample` -> `layers.{i}.downsample`;
    drops the classifier (`head.*`), the final `norm.*` and derived buffers."""
    out = {}
    for k, v in sd.items():
        if _SWIN_DROP.search(k):
            continue
        m = re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", k)
        if m:
            k = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        out[k] = v
    return out


def official_swin_to_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our/official Swin names -> timm names. The per-output norms norm0..3 have no timm counterpart
    and are dropped (timm's features_only Swin has no output norms)."""
    out = {}
    for k, v in sd.items():
        if re.fullmatch(r"norm\d\.(weight|bias)", k) or _SWIN_DROP.search(k):
            continue
        m = re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", k)
        if m:
            k = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
        out[k] = v
    return out


# -------------------------------------------------------------------------------- detectron2 prefix

def ours_to_d2(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Backbone state dict -> detectron2 model keys (`backbone.` prefix)."""
    return {f"backbone.{k}": v for k, v in sd.items()}


def d2_to_ours(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """detectron2 keys -> backbone keys. A full model checkpoint (keys with `backbone.`) keeps only
    the backbone entries; ImageNet `.pkl` files (no prefix) pass through."""
    if any(k.startswith("backbone.") for k in sd):
        return {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return dict(sd)


# -------------------------------------------------------------------------------- loaders

# Views of the backbone registry (maskformer_core.models.backbones): timm tags of each backbone's official
# ImageNet weights at its default pretraining, the non-default ones (Swin-B IN-1K rows of Tables 1 and 3),
# the pretraining of the official configs, and the official files (named in error messages).
DEFAULT_PRETRAIN = {n: s.default_pretrain for n, s in BACKBONES.items() if s.default_pretrain != "in1k"}
HUB_TAGS = {n: s.hub_tags[s.default_pretrain] for n, s in BACKBONES.items() if s.default_pretrain in s.hub_tags}
HUB_TAGS_BY_PRETRAIN = {(n, p): tag for n, s in BACKBONES.items() for p, tag in s.hub_tags.items()
                        if p != s.default_pretrain}
HUB_PREFIX = "hub:"


def hub_tag(backbone_name: str, pretrain: str | None = None) -> str:
    """The timm tag of a backbone's ImageNet weights for `pretrain` (None: the official default, in1k or
    in22k, see DEFAULT_PRETRAIN). Raises CheckpointError when timm has no such copy."""
    default = DEFAULT_PRETRAIN.get(backbone_name, "in1k")
    if pretrain is None or pretrain == default:
        if backbone_name in HUB_TAGS:
            return HUB_TAGS[backbone_name]
    elif (backbone_name, pretrain) in HUB_TAGS_BY_PRETRAIN:
        return HUB_TAGS_BY_PRETRAIN[(backbone_name, pretrain)]
    else:
        raise CheckpointError(f"no {pretrain} hub weights for {backbone_name} (the paper has none; "
                              f"{backbone_name} starts from {default})")
    raise CheckpointError(
        f"pretrained='hub' is not available for {backbone_name}: "
        + ("timm has no copy of R-103.pkl (only Gluon resnet101s weights, a different recipe); "
           if backbone_name == "R101c" else "it is not a paper backbone and has no pretrained weights; ")
        + (f"pass a local file, e.g. pretrained=/path/to/{OFFICIAL_FILES[backbone_name]}"
           if backbone_name in OFFICIAL_FILES else "use pretrained=None"))


def is_hub(source) -> bool:
    """True for "hub" (the backbone's default timm tag) and "hub:<timm tag>"."""
    return isinstance(source, str) and (source == "hub" or source.startswith(HUB_PREFIX))


OFFICIAL_FILES = {n: s.official_file for n, s in BACKBONES.items() if s.official_file}


def _looks_torchvision_resnet(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("layer1.") for k in sd)


def to_backbone_keys(sd: Mapping[str, torch.Tensor], backbone_name: str) -> dict[str, torch.Tensor]:
    """Any supported naming (detectron2 with/without `backbone.`, torchvision/timm) -> our backbone keys."""
    sd = d2_to_ours(sd)
    if is_swin(backbone_name):
        return timm_swin_to_official(sd)  # also drops head/final norm of official classification files
    if _looks_torchvision_resnet(sd):
        return torchvision_resnet_to_d2(sd, deep_stem=backbone_name == "R101c")
    return {k: v for k, v in sd.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def _hub_state_dict(backbone_name: str, source: str = "hub") -> tuple[dict[str, torch.Tensor], str]:
    """State dict and timm tag of `source` ("hub": the backbone's default tag; "hub:<tag>": that tag)."""
    tag = source[len(HUB_PREFIX):] if source.startswith(HUB_PREFIX) else hub_tag(backbone_name)
    if not tag:
        raise CheckpointError(f"pretrained={source!r}: no timm tag after {HUB_PREFIX!r}")
    try:
        import timm
        model = timm.create_model(tag, pretrained=True)
    except Exception as exc:
        where = OFFICIAL_FILES.get(backbone_name, "a .pkl/.pth/.safetensors file")
        raise CheckpointError(
            f"could not fetch timm weights {tag!r} for {backbone_name} ({type(exc).__name__}: {exc}); "
            f"this machine is probably offline: pass a local file instead, "
            f"pretrained=/path/to/{where}") from exc
    return model.state_dict(), tag


def load_backbone_weights(backbone: nn.Module, source: str | os.PathLike, backbone_name: str) -> dict[str, list[str]]:
    """Load ImageNet (or full-model) weights into `backbone` in place.

    `source`: a local file, "hub" (the backbone's default timm tag) or "hub:<timm tag>". Only keys
    absent from ImageNet checkpoints may stay missing
    (Swin's norm0..3); any other missing key or a shape mismatch raises CheckpointError naming the
    file. Returns {"missing": [...], "unexpected": [...]} (unexpected keys are ignored).
    """
    if is_hub(str(source)):
        raw, tag = _hub_state_dict(backbone_name, str(source))
        origin = f"timm hub ({tag})"
    else:
        raw, origin = load_weights_file(source), str(source)
    sd = to_backbone_keys(raw, backbone_name)
    own = backbone.state_dict()
    for k, v in sd.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{origin}: {k} has shape {tuple(v.shape)}, the {backbone_name} backbone "
                                  f"expects {tuple(own[k].shape)} (wrong backbone or window size?)")
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad_missing = [k for k in missing if not re.fullmatch(r"norm\d\.(weight|bias)", k)]
    if bad_missing:
        raise CheckpointError(f"{origin}: {len(bad_missing)} {backbone_name} backbone weights are missing, "
                              f"e.g. {bad_missing[:5]} (is this a {backbone_name} checkpoint?)")
    backbone.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return {"missing": missing, "unexpected": unexpected}


def load_official_model(model: nn.Module, path: str | os.PathLike) -> dict[str, list[str]]:
    """Load a released MaskFormer `model_final_*.pkl` (keys `backbone.*`, `sem_seg_head.*`) into a model
    built with the same options; our module names equal the official ones. Raises CheckpointError on
    missing keys or shape mismatches; ignores `criterion.*` and `pixel_mean/std`."""
    sd = load_weights_file(path)
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("criterion.") and k not in ("pixel_mean", "pixel_std")}
    for k, v in sd.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
    missing = [k for k in own if k not in sd]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} model weights missing, e.g. {missing[:5]}")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return {"missing": [], "unexpected": [k for k in sd if k not in own]}


def check_pretrained_option(pretrained, backbone_name: str) -> None:
    """Validate `pretrained` before any model is built (ConfigError / CheckpointError naming the value)."""
    if pretrained is None:
        return
    if str(pretrained) == "hub":
        hub_tag(backbone_name)  # CheckpointError now (R101c, smoke extras), not after building
        return
    if is_hub(str(pretrained)):
        return
    if not isinstance(pretrained, (str, os.PathLike)):
        raise ConfigError(f"pretrained must be None, 'hub' or a file path, got {pretrained!r}")
    if not Path(pretrained).is_file():
        raise CheckpointError(f"pretrained weights file {pretrained} does not exist "
                              f"(expected e.g. {OFFICIAL_FILES.get(backbone_name, 'a .pkl/.pth/.safetensors file')})")
