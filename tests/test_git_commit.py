"""`git_commit(mark_dirty=True)`: the provenance commit of tables and report (pipeline.runfolder)."""
import subprocess
from pathlib import Path

from pipeline.runfolder import git_commit


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_dirty_marks_changed_code_but_not_the_pipelines_own_outputs(tmp_path):
    repo = tmp_path / "repo"
    (repo / "reports").mkdir(parents=True)
    (repo / "pipeline.py").write_text("x = 1\n")
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    (repo / "reports" / "metrics.json").write_text("{}\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    sha = git_commit(repo, short=12, mark_dirty=True)
    assert len(sha) == 12 and not sha.endswith("+dirty")
    # what `dvc repro` rewrites before the tables stage reads the commit
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (repo / "reports" / "metrics.json").write_text('{"a": 1}\n')
    assert git_commit(repo, short=12, mark_dirty=True) == sha
    (repo / "pipeline.py").write_text("x = 2\n")
    assert git_commit(repo, short=12, mark_dirty=True) == sha + "+dirty"
