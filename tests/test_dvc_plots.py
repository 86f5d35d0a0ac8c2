"""`dvc plots show` renders offline: the project's HTML template (.dvc/config plots.html_template ->
scripts/plots/offline.html) inlines vega / vega-lite / vega-embed, so the page loads nothing from a CDN."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests._study_helpers import REPO

DVC = str(Path(sys.executable).with_name("dvc"))
URL = re.compile(r"https?://", re.I)


class _Page(HTMLParser):
    """Every tag attribute that can load something, and the inline scripts (vendored or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.vendored: list[str] = []
        self.other_scripts: list[str] = []
        self._script: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.loads += [f"{tag} {k}={v}" for k, v in attrs.items() if k in ("src", "href", "data") and v]
        if tag == "script":
            self._script = attrs

    def handle_data(self, data):
        if self._script is not None:
            (self.vendored if "data-vendored" in self._script else self.other_scripts).append(data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None


def test_dvc_plots_show_writes_a_page_that_loads_nothing_from_the_network(tmp_path):
    if not Path(DVC).exists():
        pytest.skip(f"dvc not installed at {DVC}")
    repo = tmp_path / "repo"
    for rel in ("dvc.yaml", "params.yaml", ".dvc/config", "scripts/plots/offline.html"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, repo / rel)
    shutil.copytree(REPO / "reports" / "plots", repo / "reports" / "plots")  # tracked in git (cache: false)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    out = subprocess.run([DVC, "plots", "show", "-o", "rendered"], cwd=repo, capture_output=True, text=True,
                         timeout=300, env={"DVC_NO_ANALYTICS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    page = _Page()
    page.feed((repo / "rendered" / "index.html").read_text(encoding="utf-8"))
    assert [u for u in page.loads if URL.search(u)] == []  # no <script src>, <link href>, <img src> online
    assert len(page.vendored) == 3 and "vegaEmbed" in page.vendored[2]
    # Outside the vendored libraries, the only URLs are the specs' "$schema" identifiers, which
    # vega-embed reads as a name (vega vs vega-lite) and never fetches.
    plots = "\n".join(page.other_scripts)
    assert "vegaEmbed(" in plots and "queries" in plots
    schemas = re.findall(r'"\$schema":\s*"(https://vega\.github\.io/schema/[^"]+)"', plots)
    assert schemas and len(URL.findall(plots)) == len(schemas)
    assert json.dumps("ade20k.csv")[1:-1] in plots  # one line per dataset file
