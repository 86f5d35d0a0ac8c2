"""Tests of `python -m pipeline model-stats` (JSON last line, flops/fps fields, clear errors)."""
from __future__ import annotations

import json

import torch

from pipeline.cli import main

torch.set_num_threads(1)


def test_model_stats_json_with_flops_and_fps(capsys):
    rc = main(["model-stats", "--dataset", "cityscapes", "--backbone", "SmokeR18", "--size", "64x64",
               "--flops", "--fps", "--fps-iters", "1", "--threads", "1"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["num_classes"] == 19 and result["num_queries"] == 100 and result["input_size"] == [64, 64]
    assert result["params"] == result["params_backbone"] + result["params_pixel_decoder"] + result["params_predictor"]
    assert result["gflops"] > result["gflops_last_layer_only"] > 0
    assert result["fps"] > 0 and result["device"] == "cpu"
    assert any(line.startswith("params:") for line in lines[:-1])


def test_model_stats_panoptic_resnet_gets_six_encoder_layers(capsys):
    assert main(["model-stats", "--dataset", "ade20k_panoptic", "--backbone", "R50"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["pixel_decoder"] == "transformer_encoder"
    assert result["transformer_in_feature"] == "transformer_encoder"
    assert abs(result["params"] - (45.012e6 + 257 * 17)) < 1e3  # K=150 instead of COCO's 133 (docs/FIDELITY.md §5)


def test_model_stats_errors_exit_2(capsys):
    assert main(["model-stats", "--dataset", "ade20k", "--backbone", "ResNet50"]) == 2
    assert "valid names: R50" in capsys.readouterr().err
    assert main(["model-stats", "--dataset", "ade20k", "--backbone", "R50", "--model", "per_pixel_plus",
                 "--queries", "100"]) == 2
    assert "num_queries=100 must equal num_classes=150" in capsys.readouterr().err
    assert main(["model-stats", "--dataset", "ade20k", "--backbone", "R50", "--size", "big"]) == 2
