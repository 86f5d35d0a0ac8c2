"""Checkpoint files: atomic writes, hash-verified fallback, disk-full safety, config refusal, RNG round trip."""
from __future__ import annotations

import errno
import random

import numpy as np
import pytest
import torch

from maskformer_core.errors import CheckpointError
from pipeline import checkpoint as ckpt
from pipeline.config import RunConfig


def _state(iteration: int) -> dict:
    return {"iteration": iteration, "model": {"w": torch.full((64,), float(iteration))},
            "config": RunConfig().to_dict(), "rng": ckpt.rng_state(), "mlflow_run_id": "abc"}


def test_save_load_round_trip_with_weights_only(tmp_path):
    path = ckpt.save_checkpoint(_state(3), tmp_path)
    assert path == tmp_path / "last.pt" and ckpt.verify(path)
    loaded = torch.load(path, weights_only=True)  # plain types + tensors only
    assert loaded["iteration"] == 3 and torch.equal(loaded["model"]["w"], torch.full((64,), 3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]


def test_previous_last_is_kept_and_truncated_last_falls_back(tmp_path):
    ckpt.save_checkpoint(_state(1), tmp_path)
    ckpt.save_checkpoint(_state(2), tmp_path)
    assert ckpt.load_latest(tmp_path)[0]["iteration"] == 2
    assert torch.load(tmp_path / "prev.pt", weights_only=True)["iteration"] == 1
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])  # a crash mid-copy / torn file
    state, path = ckpt.load_latest(tmp_path)
    assert path.name == "prev.pt" and state["iteration"] == 1
    (tmp_path / "prev.pt").write_bytes(b"garbage")
    assert ckpt.load_latest(tmp_path) is None


def test_disk_full_during_save_keeps_previous_last(tmp_path, monkeypatch):
    ckpt.save_checkpoint(_state(1), tmp_path)
    before = (tmp_path / "last.pt").read_bytes()
    real = ckpt._write_bytes_durably

    def full_disk(path, data):
        if path.name.endswith(".pt.tmp"):
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 3])  # part of the bytes reached the disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ckpt, "_write_bytes_durably", full_disk)
    with pytest.raises(OSError) as info:
        ckpt.save_checkpoint(_state(2), tmp_path)
    assert info.value.errno == errno.ENOSPC
    assert (tmp_path / "last.pt").read_bytes() == before and ckpt.verify(tmp_path / "last.pt")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not (tmp_path / "prev.pt").exists()
    assert ckpt.load_latest(tmp_path)[0]["iteration"] == 1


def test_config_mismatch_names_the_keys(tmp_path):
    saved = _state(1)
    current = RunConfig.model_validate({"solver": {"base_lr": 2e-4}, "model": {"dec_layers": 1},
                                        "run": {"output_dir": "elsewhere", "eval_period": 7}}).to_dict()
    with pytest.raises(CheckpointError) as info:
        ckpt.check_config(saved, current, tmp_path / "last.pt")
    msg = str(info.value)
    assert "solver.base_lr" in msg and "model.dec_layers" in msg and "last.pt" in msg
    assert "run.output_dir" not in msg and "run.eval_period" not in msg
    ckpt.check_config(saved, RunConfig.model_validate({"run": {"output_dir": "x"}}).to_dict(), "f")
    with pytest.raises(CheckpointError, match="no resolved config"):
        ckpt.check_config({"iteration": 1}, current, "f")


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "x.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="x.pt"):
        ckpt.load_file(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_file(tmp_path / "missing.pt")


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt.save_checkpoint({"rng": ckpt.rng_state()}, tmp_path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(ckpt.load_latest(tmp_path)[0]["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
