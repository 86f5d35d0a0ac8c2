"""FLOP counting the way the paper did (paper Tables 1 and 3; docs/FIDELITY.md §5): fvcore FlopCountAnalysis
with detectron2's ignored elementwise ops (1 fused multiply-add = 1 flop; norms and upsampling counted by
fvcore's own handlers), eval mode, batch 1 at a fixed input size, including the mask upsampling, the
semantic-inference einsum (official ``mask_former_model.py`` ``semantic_inference``) and the final resize of
detectron2's sem_seg_postprocess.

Reported both with all decoder layers' mask einsums (what today's tools/analyze_model.py prints, since
the official predictor computes them in eval too, official ``mask_former/mask_former_model.py``) and "last layer
only" (deep supervision
off at inference), which docs/FIDELITY.md §5 suggests the paper's numbers used (~2G lower at 512^2).
Note: fvcore takes generic einsum counts from numpy's `einsum_path` report, which prints them with 4
significant digits, so einsum terms are rounded to ~0.1% exactly as in the original tool.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn

# detectron2.utils.analysis._IGNORED_OPS: elementwise and reduction ops detectron2 does not count.
D2_IGNORED_OPS = (
    "aten::add", "aten::add_", "aten::argmax", "aten::argsort", "aten::batch_norm", "aten::constant_pad_nd",
    "aten::div", "aten::div_", "aten::exp", "aten::log2", "aten::max_pool2d", "aten::meshgrid", "aten::mul",
    "aten::mul_", "aten::neg", "aten::nonzero_numpy", "aten::reciprocal", "aten::rsub", "aten::sigmoid",
    "aten::sigmoid_", "aten::softmax", "aten::sort", "aten::sqrt", "aten::sub", "torchvision::nms",
)


class SemanticInferenceGraph(nn.Module):
    """What the official eval forward runs for one image (official ``mask_former_model.py`` ``forward``,
    ``semantic_inference``), returning the score map.

    maskformer: model -> bilinear upsample of the last `pred_masks` to the padded input size ->
    einsum("bqc,bqhw->bchw", softmax(logits)[..., :-1], sigmoid(masks)) (Q*K*H*W flops) -> bilinear
    resize to `out_size` (sem_seg_postprocess). per-pixel: model -> bilinear x4 -> resize.
    forward(x [1, 3, H, W]) -> [1, K, H_out, W_out].
    """

    def __init__(self, model: nn.Module, out_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.out_size = out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        size = x.shape[-2:]
        if "pred_logits" in out:
            masks = F.interpolate(out["pred_masks"], size=size, mode="bilinear", align_corners=False)
            cls = F.softmax(out["pred_logits"], dim=-1)[..., :-1]
            sem = torch.einsum("bqc,bqhw->bchw", cls, masks.sigmoid())
        else:
            sem = F.interpolate(out["sem_seg_logits"], size=size, mode="bilinear", align_corners=False)
        if self.out_size is not None:
            sem = F.interpolate(sem, size=self.out_size, mode="bilinear", align_corners=False)
        return sem


@contextlib.contextmanager
def last_layer_only(model: nn.Module):
    """Temporarily run the predictor without deep supervision (only the last decoder output is normed,
    headed and turned into masks), i.e. the official `aux_loss=False` path."""
    predictor = getattr(getattr(model, "sem_seg_head", None), "predictor", None)
    decoder = getattr(getattr(predictor, "transformer", None), "decoder", None)
    if predictor is None or decoder is None:
        yield
        return
    saved = (predictor.aux_loss, decoder.return_intermediate)
    predictor.aux_loss, decoder.return_intermediate = False, False
    try:
        yield
    finally:
        predictor.aux_loss, decoder.return_intermediate = saved


@contextlib.contextmanager
def explicit_attention(model: nn.Module):
    """Temporarily run every attention of `model` with explicit bmm matmuls (counted by fvcore, docs/FIDELITY.md
    §5) instead of the fused scaled_dot_product_attention kernel (not counted)."""
    from maskformer_core.models.transformer import MultiheadAttention

    modules = [m for m in model.modules() if isinstance(m, MultiheadAttention)]
    saved = [m.explicit_matmuls for m in modules]
    for m in modules:
        m.explicit_matmuls = True
    try:
        yield
    finally:
        for m, flag in zip(modules, saved):
            m.explicit_matmuls = flag


def count_flops(model: nn.Module, image_size: tuple[int, int], *, last_layer_only_masks: bool = False,
                include_final_resize: bool = True) -> dict[str, float]:
    """fvcore flop count (detectron2 convention) of one eval forward at `image_size` (H, W).

    Returns GFLOPs: {"total", "backbone", "pixel_decoder", "predictor", "inference"}; "inference" is the
    mask upsampling + semantic einsum + final resize outside the model. The model is left unchanged.
    """
    with warnings.catch_warnings():  # fvcore imports torch.jit.script, deprecated in torch 2.x
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    h, w = image_size
    graph = SemanticInferenceGraph(model, out_size=(h, w) if include_final_resize else None)
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, h, w)
    ctx = last_layer_only(model) if last_layer_only_masks else contextlib.nullcontext()
    try:
        with ctx, explicit_attention(model), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(graph, (x,))
            analysis.set_op_handle(**{op: None for op in D2_IGNORED_OPS})
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            total = analysis.total()
            by_module = analysis.by_module()
    finally:
        model.train(was_training)
    g = 1e9
    parts = {
        "backbone": by_module.get("model.backbone", 0) / g,
        "pixel_decoder": by_module.get("model.sem_seg_head.pixel_decoder", 0) / g,
        "predictor": by_module.get("model.sem_seg_head.predictor", 0) / g,
    }
    parts["inference"] = (total - by_module.get("model", 0)) / g
    return {"total": total / g, **parts}
