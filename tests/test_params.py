"""params.yaml validation: the shipped file loads; every kind of mistake is a UserError naming the key path."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.errors import UserError
from pipeline.params import load_params, validate_params

REPO = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((REPO / "params.yaml").read_text())


def _raw():
    return copy.deepcopy(RAW)


def _error(raw) -> str:
    with pytest.raises(UserError) as exc:
        validate_params(raw)
    return str(exc.value)


def test_shipped_params_load_with_three_profiles():
    params = load_params(REPO / "params.yaml", environ={})
    assert {"smoke", "single_gpu", "paper"} <= set(params.profiles)
    assert params.study.profile == "smoke"
    assert params.profiles["paper"].num_seeds("cityscapes") == 5  # paper Sec. 4: median of 5 for Cityscapes
    assert params.profiles["paper"].num_seeds("ade20k") == 3
    assert params.profiles["paper"].num_seeds("coco_panoptic") == 1  # paper Sec. 4: panoptic rows are single runs
    assert {f"table{i}" for i in range(1, 9)} <= set(params.grid)


def test_typo_names_the_key_path():
    raw = _raw()
    raw["grid"]["table6"]["cells"][3]["querys"] = 100
    assert "grid.table6.cells[3].querys: unknown key" in _error(raw)


def test_wrong_type_and_range_name_the_key():
    raw = _raw()
    raw["grid"]["table6"]["cells"][3]["queries"] = "many"
    msg = _error(raw)
    assert "grid.table6.cells[3].queries" in msg and "'many'" in msg  # the key and the bad value
    raw = _raw()
    raw["grid"]["table6"]["cells"][3]["queries"] = 0
    assert "grid.table6.cells[3].queries" in _error(raw)
    raw = _raw()
    raw["profiles"]["smoke"]["max_concurrent"] = 0
    assert "profiles.smoke.max_concurrent: Input should be greater than or equal to 1, got 0" in _error(raw)
    raw = _raw()
    raw["study"]["retries"] = -1
    assert "study.retries" in _error(raw) and "got -1" in _error(raw)


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("dataset", "ade21k", "grid.table2.cells[0].dataset: Value error, unknown dataset 'ade21k'"),
        ("backbone", "R152", "grid.table2.cells[0].backbone: Value error, unknown backbone 'R152'"),
        ("inference", "greedy", "grid.table2.cells[0].inference: Input should be 'semantic', 'general', "
         "'general_semantic' or 'detr', got 'greedy'"),
    ],
)
def test_unknown_names(field, value, expected):
    raw = _raw()
    raw["grid"]["table2"]["cells"][0][field] = value
    assert expected in _error(raw)


def test_impossible_combinations():
    raw = _raw()  # fixed matching needs Q = K (paper Table 4)
    raw["grid"]["table4"]["cells"][1]["queries"] = 100
    assert "grid.table4.cells[1].queries: fixed matching needs queries = K (150" in _error(raw)
    raw = _raw()  # per_pixel_plus needs Q = K (official per_pixel_baseline_plus configs)
    raw["grid"]["table2"]["cells"][1]["queries"] = 100
    assert "grid.table2.cells[1].queries: per_pixel_plus needs queries = K" in _error(raw)
    raw = _raw()  # box matching needs a box head (Table 5)
    raw["grid"]["table5"]["cells"][0]["box_head"] = False
    assert "grid.table5.cells[0].matching: box matching needs a box head" in _error(raw)
    raw = _raw()  # TTA is semantic only (official SemanticSegmentorWithTTA)
    raw["grid"]["table3"]["cells"][1]["tta"] = True
    assert "grid.table3.cells[1].tta" in _error(raw)
    raw = _raw()  # general (panoptic) inference on a semantic dataset
    raw["grid"]["table7"]["cells"][1]["inference"] = "general"
    assert "grid.table7.cells[1].inference: general inference needs a panoptic dataset" in _error(raw)
    raw = _raw()
    raw["study"]["profile"] = "huge"
    assert "study.profile: unknown profile 'huge'" in _error(raw)


def test_local_yaml_and_environment_set_cluster_settings(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "local.yaml").write_text("executor:\n  slurm:\n    partition: gpu-a\n    mem_gb: 32\n")
    params = load_params(tmp_path / "params.yaml", environ={"MASKFORMER_SLURM_MEM_GB": "48"})
    assert params.executor.slurm.partition == "gpu-a"
    assert params.executor.slurm.mem_gb == 48  # environment wins over local.yaml
    (tmp_path / "local.yaml").write_text("grid: {}\n")
    with pytest.raises(UserError, match="only 'executor' and 'study'"):
        load_params(tmp_path / "params.yaml", environ={})
    with pytest.raises(UserError, match="MASKFORMER_SLURM_GPUS_PER_NODE"):
        load_params(tmp_path / "params.yaml", local=tmp_path / "none.yaml", environ={"MASKFORMER_SLURM_GPUS_PER_NODE": "x"})
