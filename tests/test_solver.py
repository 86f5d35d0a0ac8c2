"""Optimiser parameter groups and learning-rate schedules of the official recipe, checked by value (official
``mask_former/config.py``)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.config import RunConfig, resolve_defaults
from pipeline.solver import (
    WarmupMultiStepLR,
    WarmupPolyLR,
    build_optimizer,
    build_scheduler,
    clip_full_model,
    param_group_settings,
)


class FrozenBN(nn.Module):
    """Buffers only, like detectron2's FrozenBatchNorm2d: contributes no parameters."""

    def __init__(self, n):
        super().__init__()
        self.register_buffer("weight", torch.ones(n))


class TinySwinBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.qkv = nn.Linear(4, 12)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBN(4), nn.BatchNorm2d(4), TinySwinBlock())
        self.backbone.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4))
        self.pixel_decoder = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4))
        self.query_embed = nn.Embedding(5, 4)
        self.norm = nn.LayerNorm(4)
        self.class_embed = nn.Linear(4, 3)
        self.frozen = nn.Parameter(torch.zeros(2), requires_grad=False)
        self.shared = self.class_embed  # the same parameters under two names are listed once


def _groups(**kw):
    return {g["name"]: g for g in param_group_settings(Toy(), **kw)}


def test_param_groups_lr_multiplier_and_decay_sets():
    g = _groups(base_lr=1e-4, weight_decay=1e-4, backbone_multiplier=0.1)
    assert all(len(x["params"]) == 1 for x in g.values())  # one group per parameter
    assert "frozen" not in g and "shared.weight" not in g
    backbone = {n for n in g if n.startswith("backbone")}
    assert backbone == {"backbone.0.weight", "backbone.0.bias", "backbone.2.weight", "backbone.2.bias",
                        "backbone.3.relative_position_bias_table", "backbone.3.qkv.weight",
                        "backbone.3.qkv.bias", "backbone.absolute_pos_embed"}
    for name, group in g.items():
        assert group["lr"] == pytest.approx(1e-5 if name in backbone else 1e-4), name
    zero_decay = {n for n, x in g.items() if x["weight_decay"] == 0.0}
    assert zero_decay == {"backbone.2.weight", "backbone.2.bias",  # BatchNorm
                          "backbone.3.relative_position_bias_table", "backbone.absolute_pos_embed",
                          "pixel_decoder.1.weight", "pixel_decoder.1.bias",  # GroupNorm
                          "query_embed.weight", "norm.weight", "norm.bias"}
    # biases of conv/linear keep the decay (official train_net.py build_optimizer)
    assert g["class_embed.bias"]["weight_decay"] == 1e-4 and g["backbone.0.bias"]["weight_decay"] == 1e-4


def test_swin_defaults_give_multiplier_one_and_its_recipe():
    cfg = resolve_defaults(RunConfig.model_validate({"model": {"backbone": "Swin-T"}}))
    s = cfg.solver
    assert (s.base_lr, s.weight_decay, s.backbone_multiplier, s.warmup_iters, s.warmup_factor) == (6e-5, 0.01, 1.0, 1500, 1e-6)
    r = resolve_defaults(RunConfig.model_validate({"model": {"backbone": "R50"}})).solver
    assert (r.base_lr, r.weight_decay, r.backbone_multiplier, r.warmup_iters, r.warmup_factor) == (1e-4, 1e-4, 0.1, 0, 1.0)
    c = resolve_defaults(RunConfig.model_validate({"solver": {"schedule": "step", "steps": [369_600], "max_iter": 554_400}})).solver
    assert (c.warmup_iters, c.warmup_factor) == (10, 1.0)
    opt = build_optimizer(Toy(), s)
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["lr"] for g in opt.param_groups} == {6e-5}
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8


def _lrs(sched, n):
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return out


def _opt(lr=1.0):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def test_poly_schedule_values():
    lrs = _lrs(WarmupPolyLR(_opt(1e-4), max_iter=10, power=0.9), 10)
    for it, lr in enumerate(lrs):
        assert lr == pytest.approx(1e-4 * (1 - it / 10) ** 0.9, rel=1e-12)
    assert lrs[0] == 1e-4


def test_poly_with_linear_warmup_values():
    lrs = _lrs(WarmupPolyLR(_opt(6e-5), max_iter=2000, power=0.9, warmup_iters=1500, warmup_factor=1e-6), 1600)
    assert lrs[0] == pytest.approx(6e-5 * 1e-6)
    alpha = 750 / 1500
    assert lrs[750] == pytest.approx(6e-5 * (1e-6 * (1 - alpha) + alpha) * (1 - 750 / 2000) ** 0.9)
    assert lrs[1500] == pytest.approx(6e-5 * (1 - 1500 / 2000) ** 0.9)  # warmup over


def test_multistep_schedule_values():
    sched = WarmupMultiStepLR(_opt(1e-4), milestones=[5, 8], gamma=0.1, warmup_iters=10, warmup_factor=1.0)
    lrs = _lrs(sched, 10)
    assert lrs[:5] == pytest.approx([1e-4] * 5)
    assert lrs[5:8] == pytest.approx([1e-5] * 3)
    assert lrs[8:] == pytest.approx([1e-6] * 2)


def test_schedule_keeps_per_group_multipliers_and_resumes():
    cfg = resolve_defaults(RunConfig.model_validate({"solver": {"max_iter": 100}})).solver
    opt = build_optimizer(Toy(), cfg)
    sched = build_scheduler(opt, cfg)
    for _ in range(30):
        opt.step()
        sched.step()
    factor = (1 - 30 / 100) ** 0.9
    assert {round(g["lr"] / factor, 12) for g in opt.param_groups} == {1e-4, 1e-5}
    opt2 = build_optimizer(Toy(), cfg)
    sched2 = build_scheduler(opt2, cfg)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]


def test_full_model_clipping_uses_the_global_l2_norm():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    norm = clip_full_model([a, b], 0.01)
    assert float(norm) == pytest.approx(5.0)
    total = math.sqrt(float(a.grad.pow(2).sum() + b.grad.pow(2).sum()))
    assert total == pytest.approx(0.01, rel=1e-4)
    assert float(a.grad[0]) / float(b.grad[0]) == pytest.approx(0.75)  # direction kept


def test_conv2dnorm_weight_keeps_decay_and_its_groupnorm_gets_none():
    """Official `build_optimizer` exempts only true norm modules (train_net.py `norm_module_types`):
    the pixel decoder's conv + GN keeps weight decay on the conv weight, none on the GN parameters."""
    from maskformer_core.models.pixel_decoder import conv_gn

    g = {x["name"]: x["weight_decay"] for x in param_group_settings(
        nn.Sequential(conv_gn(4, 32, 3, relu=True)), base_lr=1e-4, weight_decay=1e-4, backbone_multiplier=0.1)}
    assert g == {"0.weight": 1e-4, "0.norm.weight": 0.0, "0.norm.bias": 0.0}
