"""Citations a clone can follow: no file of the repository cites the digest of the official code that
lives outside it (the facts file, spelled below as NEEDLE), nor any path of the parent "shared" folder.
Comments, docs, params and generated reports cite the paper section/table or the official source
file + config key instead (docs/FIDELITY.md)."""
from __future__ import annotations

import subprocess

from tests._study_helpers import REPO

NEEDLE = "FAC" + "TS"  # spelled in two parts so that this file does not match itself
OUTSIDE = "../" + "shared/"

# Files still allowed to cite it: the modules rewritten on the branch of issue 11 items 1-4, which
# replaces their citations. Empty this set once that branch is merged.
ALLOWED: set[str] = set()  # no file may cite the digest (issue 11 item 5)


def repository_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore (a new file is checked before its commit)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return sorted({line for line in out.splitlines() if line and (REPO / line).is_file()})


def citing(files: list[str], needle: str, root=REPO) -> dict[str, list[int]]:
    """file -> line numbers containing `needle` (text files; binary files are skipped)."""
    found: dict[str, list[int]] = {}
    for rel in files:
        data = (root / rel).read_bytes()
        if b"\0" in data[:8192]:
            continue
        lines = [i for i, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1) if needle in line]
        if lines:
            found[rel] = lines
    return found


def test_no_file_cites_the_facts_digest_or_a_path_outside_the_repository():
    files = repository_files()
    assert "params.yaml" in files and "tests/test_citations.py" in files  # the listing really covers the tree
    assert citing(files, NEEDLE).keys() <= ALLOWED, {f: n for f, n in citing(files, NEEDLE).items() if f not in ALLOWED}
    assert citing(files, OUTSIDE) == {}


def test_the_scan_finds_a_citation_and_skips_binary_files(tmp_path):
    (tmp_path / "a.py").write_text(f"x = 1\n# see {NEEDLE} C\n")
    (tmp_path / "b.bin").write_bytes(b"\0" + NEEDLE.encode())
    (tmp_path / "c.md").write_text("clean\n")
    assert citing(["a.py", "b.bin", "c.md"], NEEDLE, root=tmp_path) == {"a.py": [2]}
