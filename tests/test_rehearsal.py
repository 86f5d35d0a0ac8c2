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
           "run.run_name", "run.tags", "run.experiment", "run.seed", "data.root",
           "data.size_divisibility")  # the semantic mapper pads to the crop (resolve_defaults), so it follows the crop


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


def _shrunk_params(tmp_path, **rehearsal):
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profiles"]["rehearsal"].update(rehearsal)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def test_one_row_per_table_and_max_world_size_keep_the_recipe_per_gpu(tmp_path):
    """profiles.rehearsal.one_row_per_table keeps one row of every table (sharing training runs) and
    max_world_size caps the processes while keeping each cell's per-GPU batch (pipeline/subset.py)."""
    full = expand(load_params(REPO / "params.yaml"), "rehearsal")
    small = expand(load_params(_shrunk_params(tmp_path, one_row_per_table=True, max_world_size=2)), "rehearsal")
    assert small.tables() == full.tables() and len(small.rows) == len(full.tables())
    # the selected rows need fewer training runs than one per table (Tables 1, 2, 6, 7, 8 share one)
    assert len(small.train) < len(small.rows)
    assert {small.evals[e].train_id for r in small.rows for e in r.eval_ids} == set(small.train)
    assert {e for r in small.rows for e in r.eval_ids} == set(small.evals)
    by_place = {(r.table, r.index): r for r in full.rows}
    for row in small.rows:
        a = full.train[full.evals[by_place[(row.table, row.index)].eval_ids[0]].train_id].config
        b = small.train[small.evals[row.eval_ids[0]].train_id].config
        assert b["run"]["num_gpus"] == 2 < a["run"]["num_gpus"]
        per_gpu = a["solver"]["ims_per_batch"] // a["run"]["num_gpus"]
        assert b["solver"]["ims_per_batch"] == per_gpu * 2
        assert {k: v for k, v in b["model"].items()} == a["model"]
        assert b["solver"]["base_lr"] == a["solver"]["base_lr"] and b["solver"]["steps"] == a["solver"]["steps"]
        assert b["test"] == a["test"]
    assert not set(small.train) & set(full.train)  # capped runs never share a run folder with uncapped ones


def test_grid_list_names_the_ci_deviations(tmp_path, run_cli):
    params = _shrunk_params(tmp_path, one_row_per_table=True, max_world_size=2)
    out = run_cli("grid", "list", "--profile", "rehearsal", "--params", str(params), cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "run.num_gpus: 64, 8 -> 2" in out.stdout and "solver.ims_per_batch: 16, 64 -> 2, 4" in out.stdout
    assert "world size capped at 2 processes (profiles.rehearsal.max_world_size)" in out.stdout
    assert "rows: one per table (profiles.rehearsal.one_row_per_table)" in out.stdout
    bad = run_cli("grid", "list", "--profile", "rehearsal", "--params",
                  str(_shrunk_params(tmp_path, max_world_size=0)), cwd=REPO)
    assert bad.returncode == 2 and "max_world_size" in bad.stderr, bad.stderr
