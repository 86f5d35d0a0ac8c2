"""The evaluate-panoptic / evaluate-semantic commands on tiny folders: tables, JSON output, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from tests.test_metrics import _make_folder


def test_evaluate_panoptic_cli(tmp_path, capsys):
    gt_json, pred_json, gt_dir, pred_dir, _ = _make_folder(tmp_path)
    out = tmp_path / "res" / "pq.json"
    assert main(["evaluate-panoptic", "--gt-json", gt_json, "--gt-folder", gt_dir, "--pred-json", pred_json,
                 "--pred-folder", pred_dir, "--workers", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Things    |  37.5" in text
    data = json.loads(out.read_text())
    assert data["summary"]["PQ"] == pytest.approx(18.75) and data["per_class"]["10"]["pq"] == pytest.approx(0.75)
    assert main(["evaluate-panoptic", "--gt-json", gt_json, "--gt-folder", gt_dir, "--pred-json", str(tmp_path / "nope.json"),
                 "--pred-folder", pred_dir]) == 2
    assert "--pred-json" in capsys.readouterr().err


def test_evaluate_semantic_cli(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    Image.fromarray(np.array([[0, 0, 1, 1, 255, 2]], dtype=np.uint8)).save(gt_dir / "x.png")
    Image.fromarray(np.array([[0, 1, 1, 1, 0, 1]], dtype=np.uint8)).save(pred_dir / "x.png")
    Image.fromarray(np.full((2, 2), 255, dtype=np.uint8)).save(gt_dir / "y.png")
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(pred_dir / "y.png")
    out = tmp_path / "m.json"
    args = ["evaluate-semantic", "--gt-folder", str(gt_dir), "--pred-folder", str(pred_dir), "--num-classes", "3",
            "--ignore-label", "255", "--pq-stuff", "--workers", "2", "--out", str(out), "--overwrite"]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert data["mIoU"] == pytest.approx(100 / 3) and data["pACC"] == pytest.approx(60) and "PQ_St" in data
    (pred_dir / "y.png").unlink()
    assert main(args) == 2
    assert "no prediction for 1 GT file" in capsys.readouterr().err
