"""Build scripts/plots/offline.html: DVC's plot page with Vega, Vega-Lite and Vega-Embed inlined.

`dvc plots show` fills an HTML template (`--html-template`, or `plots.html_template` in .dvc/config,
which points here); DVC's default page loads the three libraries from a CDN, so it renders nothing
offline. This template inlines the same versions DVC's default page uses (dvc_render/vega.py
VegaRenderer.SCRIPTS: vega 5.20.2, vega-lite 5.2.0, vega-embed 6.18.2) and leaves out DVC's
`{scripts}` placeholder, so no CDN tag is added. Licences: scripts/plots/THIRD_PARTY.md.

Run from the repository root (needs npm and the npm registry): python scripts/plots/build_offline_template.py
"""
from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGES = [("vega", "5.20.2", "build/vega.min.js"), ("vega-lite", "5.2.0", "build/vega-lite.min.js"),
            ("vega-embed", "6.18.2", "build/vega-embed.min.js")]
OUT = Path(__file__).with_name("offline.html")

HEAD = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Built by scripts/plots/build_offline_template.py: vega, vega-lite and vega-embed inlined (BSD-3-Clause,
         University of Washington Interactive Data Lab; scripts/plots/THIRD_PARTY.md), so the page renders offline. -->
"""
TAIL = """    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def main() -> None:
    parts = [HEAD]
    with tempfile.TemporaryDirectory() as tmp:
        for name, version, member in PACKAGES:
            subprocess.run(["npm", "pack", "--silent", f"{name}@{version}"], cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL)
            with tarfile.open(Path(tmp) / f"{name}-{version}.tgz") as tar:
                js = tar.extractfile(f"package/{member}").read().decode("utf-8")
            if "</script" in js.lower():
                raise SystemExit(f"{name}@{version} {member} contains '</script': cannot be inlined")
            parts.append(f'    <script data-vendored="{name}@{version}">\n{js}\n    </script>\n')
    parts.append(TAIL)
    tmp_out = OUT.with_suffix(".html.tmp")
    tmp_out.write_text("".join(parts), encoding="utf-8")
    tmp_out.replace(OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
