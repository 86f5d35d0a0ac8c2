"""The `zoo` profile end to end on the synthetic twins: released-checkpoint cells evaluated, never trained.

The path, not the numbers: the checkpoints are random-weight models of each cell's (smoke-sized) shape,
written the ways users get them (an official-names .pkl; an HF `save_pretrained` folder converted with
`python -m pipeline convert`), listed in params.yaml with their md5, and evaluated through the study's
cell function. One listed file is left missing: its cell fails with a message naming the file, where to
get it and where to put it; the others still run, and the tables mark them as released checkpoints.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml

from maskformer_core.data.prepare import prepare
from maskformer_core.data.synth import synthesize
from maskformer_core.models import build_model
from maskformer_core.models.hf import save_hf_pretrained
from maskformer_core.models.official import save_official_pkl
from pipeline.cli import main as cli_main
from pipeline.config import RunConfig
from pipeline.executor import CellExecutor
from pipeline.released import PROVENANCE, md5_file
from pipeline.study import CellFailed, plan_study, run_unit
from tests._study_helpers import REPO

SMOKE_MODEL = {"hidden_dim": 64, "mask_dim": 64, "conv_dim": 64, "nheads": 4, "dim_feedforward": 128,
               "dropout": 0.0, "drop_path": 0.0, "pretrained": None}


def _params(tmp: Path) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    cells = {"table1": [0, 2, 6], "table3": [1]}  # R50, R101 (file left missing), Swin-T; R50+6Enc panoptic
    raw["grid"] = {t: dict(copy.deepcopy(raw["grid"][t]), cells=[raw["grid"][t]["cells"][i] for i in idx])
                   for t, idx in cells.items()}
    raw["study"].update(runs_root=str(tmp / "runs"), retry_delay_s=0, retries=0)
    zoo = raw["profiles"]["zoo"]
    smoke = raw["profiles"]["smoke"]
    zoo.update(synthetic=True, data_root=str(tmp / "data"), checkpoint_root=str(tmp / "ckpt"),
               backbone_map=smoke["backbone_map"], model=SMOKE_MODEL, input=smoke["input"],
               test={"max_images": 4, "fps_images": 1, "fps_warmup": 0},
               run={"device": "cpu", "threads": 1, "tracking": False})
    for name in ("ade20k", "coco_panoptic"):
        synthesize(name, tmp / "raw" / name, num_images=8, num_classes=5, image_size=(64, 80), seed=3)
        prepare(name, tmp / "raw" / name, tmp / "data" / name, progress=False)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def _entry(raw: dict, dataset: str, backbone: str) -> dict:
    return next(e for e in raw["released"] if e["dataset"] == dataset and e["backbone"] == backbone)


def test_zoo_profile_on_twins_with_converted_random_checkpoints(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr("pdb.post_mortem", lambda *a, **k: None)  # submitit's debug executor opens pdb on errors
    params_path = _params(tmp_path)
    plan = plan_study(params_path=params_path, profile="zoo", reports_dir=tmp_path / "reports")
    assert len(plan.train_ids()) == 4 and not plan.variant_ids()  # evaluation-only cells, no training runs
    raw = yaml.safe_load(params_path.read_text())
    ckpt = tmp_path / "ckpt"
    paper_backbone = {eid: r.cell.backbone for r in plan.grid.rows for eid in r.eval_ids}
    for uid in plan.train_ids():
        cfg = RunConfig.model_validate(plan.grid.train[uid].config)
        assert cfg.model.weights and cfg.model.pretrained is None
        kwargs = cfg.model.build_kwargs(cfg.model.num_classes)
        torch.manual_seed(0)
        model = build_model(**kwargs)
        if paper_backbone[uid] == "Swin-T":  # the HF route: save_pretrained folder -> `convert --from hf` -> .pt
            save_hf_pretrained(model, kwargs, tmp_path / "hf_swin")
            assert cli_main(["convert", "--from", "hf", str(tmp_path / "hf_swin"), "--out", str(ckpt / "swin_t.pt")]) == 0
            _entry(raw, "ade20k", "Swin-T").update(file="swin_t.pt", md5_prefix=md5_file(ckpt / "swin_t.pt")[:6])
        elif paper_backbone[uid] == "R50":  # official detectron2 layout under the entry's own file name
            entry = _entry(raw, cfg.data.dataset, "R50")
            save_official_pkl(model, ckpt / entry["file"])
            entry["md5_prefix"] = md5_file(ckpt / entry["file"])[:6]
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))

    plan = plan_study(params_path=params_path, profile="zoo", reports_dir=tmp_path / "reports")
    paper_backbone = {eid: r.cell.backbone for r in plan.grid.rows for eid in r.eval_ids}  # ids carry the md5s
    ex = CellExecutor(plan.params, "debug", cell_fn=plan.cell_fn)
    outcomes = {}
    for uid in plan.train_ids():
        try:
            outcomes[uid] = run_unit(plan, ex, uid)["status"]
        except CellFailed as exc:
            outcomes[uid] = f"failed: {exc}"
    missing = [o for u, o in outcomes.items() if paper_backbone[u] == "R101"]
    assert len(missing) == 1 and missing[0].startswith("failed")
    r101 = _entry(raw, "ade20k", "R101")
    for part in (r101["file"], r101["url"], r101["hf_id"], str((ckpt / r101["file"]).resolve())):
        assert part in missing[0]
    done = {u: o for u, o in outcomes.items() if paper_backbone[u] != "R101"}
    assert set(done.values()) == {"done"}, done
    import json

    for uid in done:
        metrics = json.loads((Path(plan.grid.train[uid].run_dir) / "metrics.json").read_text())
        assert metrics["provenance"] == PROVENANCE and metrics["train/iterations"] == 0
        assert ("val/PQ" if "coco_panoptic" in uid else "val/mIoU") in metrics
        assert not (Path(plan.grid.train[uid].run_dir) / "checkpoints").exists()  # nothing trained

    from pipeline.plan import plan_from_grid
    from pipeline.tables import build_table, caption, provenance

    record = plan_from_grid(plan.grid, plan.params, study_run=plan.run_id)  # the study's plan file, in memory
    table = build_table(plan.params, record, "table1", [])
    for row in ("MaskFormer R50", "MaskFormer Swin-T"):
        assert set(table[table.row == row].provenance) == {PROVENANCE}
    r101_lines = table[table.row == "MaskFormer R101"]
    assert set(r101_lines.status) == {"failed"} and all(r101["url"] in r for r in r101_lines.reason)
    meta = provenance(record, "table1", table)
    assert meta["released"] is True and "released checkpoints, evaluated here" in caption(meta)


def test_convert_and_evaluate_cli_on_every_format(tmp_path, capsys):
    """`convert` between the formats and `evaluate --checkpoint X --dataset D` on each: same weights, same
    metrics; an existing output is refused (exit 2, nothing overwritten)."""
    import json

    torch.set_num_threads(1)
    synthesize("ade20k", tmp_path / "raw", num_images=6, num_classes=4, image_size=(48, 64), seed=5)
    prepare("ade20k", tmp_path / "raw", tmp_path / "ade20k", progress=False)
    kwargs = dict(backbone="SmokeSwin", num_classes=4, hidden_dim=64, mask_dim=64, conv_dim=64, nheads=4,
                  dim_feedforward=128, dec_layers=2, num_queries=10)
    torch.manual_seed(0)
    model = build_model(**kwargs)
    # a training checkpoint of this project (model + resolved config), as the engine writes final.pt
    cfg = RunConfig.model_validate({"model": {k: v for k, v in kwargs.items()}, "data": {"dataset": "ade20k"}})
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "iteration": 7}, tmp_path / "final.pt")
    assert cli_main(["convert", str(tmp_path / "final.pt"), "--to", "hf", str(tmp_path / "hf")]) == 0
    assert cli_main(["convert", str(tmp_path / "final.pt"), "--to", "detectron2", str(tmp_path / "m.pkl")]) == 0
    assert cli_main(["convert", "--from", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "from_hf.pt")]) == 0
    before = (tmp_path / "from_hf.pt").read_bytes()
    assert cli_main(["convert", "--from", "detectron2", str(tmp_path / "m.pkl"), "--out", str(tmp_path / "from_hf.pt")]) == 2
    assert (tmp_path / "from_hf.pt").read_bytes() == before
    assert cli_main(["convert", "--from", "hf", str(tmp_path / "m.pkl"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "is a detectron2 checkpoint, not hf" in capsys.readouterr().err
    converted = torch.load(tmp_path / "from_hf.pt", weights_only=True)
    assert all(torch.equal(v, converted["model"][k]) for k, v in model.state_dict().items())

    results = {}
    for name in ("from_hf.pt", "hf", "m.pkl"):
        out = tmp_path / "runs" / name
        argv = ["evaluate", "--checkpoint", str(tmp_path / name), "--dataset", "ade20k", "--data-root", str(tmp_path / "ade20k"),
                "--output-dir", str(out), "--set", "run.tracking=false", "--set", "run.device=cpu",
                "--set", "test.fps_images=0", "--set", "model.nheads=4"]  # a .pkl does not record the heads
        assert cli_main(argv) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["provenance"] == PROVENANCE and metrics["released"]["format"] in ("converted", "hf", "detectron2")
        results[name] = metrics["val/mIoU"]
    assert len(set(results.values())) == 1, results
    synthesize("cityscapes", tmp_path / "raw_cs", num_images=4, num_classes=3, image_size=(48, 64), seed=5)
    prepare("cityscapes", tmp_path / "raw_cs", tmp_path / "cityscapes", progress=False)
    capsys.readouterr()
    assert cli_main(["evaluate", "--checkpoint", str(tmp_path / "hf"), "--dataset", "cityscapes", "--data-root",
                     str(tmp_path / "cityscapes"), "--output-dir", str(tmp_path / "runs" / "cs"), "--set", "run.tracking=false"]) == 2
    assert "predicts 4 classes, the dataset has 3" in capsys.readouterr().err
