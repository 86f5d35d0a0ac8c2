"""The rehearsal profile is the paper profile's cells with only iterations, image sizes, images and the
device changed (issue 13); world sizes and per-GPU batches are the recipe's."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import flatten
from pipeline.grid import expand, profile_differences
from pipeline.params import load_params

REPO = Path(__file__).resolve().parents[1]
# What a rehearsal may change: iterations (and the schedule's milestones/warmups with them), image
# sizes, evaluation images, device/threads/logging periods, pretrained weights (no download).
ALLOWED = ("solver.max_iter", "solver.steps", "solver.warmup_iters", "data.crop_size", "data.short_sizes",
           "data.max_size", "data.test_short_size", "data.test_max_size", "test.", "model.pretrained",
           "run.device", "run.threads", "run.checkpoint_period", "run.log_period", "run.output_dir",
           "run.run_name", "run.tags", "run.experiment", "run.seed", "data.root")


def test_rehearsal_cells_are_the_paper_cells_shrunk():
    params = load_params(REPO / "params.yaml")
    paper, rehearsal = expand(params, "paper"), expand(params, "rehearsal")
    assert [(r.table, r.row) for r in paper.rows] == [(r.table, r.row) for r in rehearsal.rows]
    for a, b in zip(paper.rows, rehearsal.rows):
        ca = flatten(paper.train[paper.evals[a.eval_ids[0]].train_id].config)
        cb = flatten(rehearsal.train[rehearsal.evals[b.eval_ids[0]].train_id].config)
        changed = {k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k)}
        assert all(k.startswith(ALLOWED) for k in changed), (a.table, a.row, sorted(changed))
        assert cb["run.num_gpus"] == ca["run.num_gpus"] == (64 if a.cell.dataset == "coco_panoptic" else 8)
        assert cb["solver.ims_per_batch"] == ca["solver.ims_per_batch"]
        assert cb["solver.max_iter"] == 4 and cb["run.device"] == "cpu"
    assert profile_differences(params, "paper") == {}  # only a rehearsal profile lists differences


def test_grid_list_says_what_differs_and_grid_show_the_world_size(run_cli):
    out = run_cli("grid", "list", "--profile", "rehearsal", "--table", "table1", cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "differs from profile paper only in" in out.stdout
    lines = {line.split(":")[0].strip(): line for line in out.stdout.splitlines() if line.startswith("  ")}
    assert "160000 -> 4" in lines["solver.max_iter"] and "cuda" in lines["run.device"]
    assert "run.num_gpus" not in lines and "solver.ims_per_batch" not in lines
    grid = expand(load_params(REPO / "params.yaml"), "paper", ["table3"])
    coco = next(i for i, u in grid.train.items() if u.config["data"]["dataset"] == "coco_panoptic")
    show = run_cli("grid", "show", coco, "--profile", "paper", cwd=REPO)
    assert show.returncode == 0, show.stderr
    assert "# world size 64 (one process per GPU), per-GPU batch 1 of 64" in show.stdout
    assert "num_gpus: 64" in show.stdout
