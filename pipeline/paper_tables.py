"""The paper's tables in the paper's layout: LaTeX, HTML and a wide CSV from the long tables of pipeline/tables.py.

The long table (reports/tables/<t>.csv: one line per row x metric) stays the machine-readable source.
This module pivots it into the layout of the paper's Table 1-6 and appendix Tables I-VIII
(pipeline/data/table_layouts.yaml: rows in the paper's order, its column groups and stub columns) and
renders the same `WideTable` three ways:

- LaTeX (reports/tables/<t>.tex): booktabs, one cell = our median (± std over seeds when there are
  several) on the first line and the paper's number (± its std) in parentheses on the second line;
  cited rows show only the paper's number; a reproduced cell without a value shows "–" with a
  footnote giving the reason; rows that share one smoke model and fps measured on another device than
  the paper's say so in footnotes; `\\label{tab:<t>}` and a caption from the layout + provenance.
  A table wider than the line is scaled down to it (graphicx), so the PDF never overflows.
- HTML (the report): the same cells, groups and footnotes.
- wide CSV (reports/tables/<t>.wide.csv): one line per layout row; per column `ours`, `ours_std`,
  `seeds`, `paper`, `paper_std`.

`build_pdf` writes one standalone document with every table and runs pdflatex (Debian:
texlive-latex-base + texlive-latex-recommended, see scripts/install_tex.sh) when it is installed.
"""
from __future__ import annotations

import html
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError

LAYOUTS = Path(__file__).parent / "data" / "table_layouts.yaml"
PAPER_FPS_DEVICE = "V100"  # Table 1/3 captions: one V100, batch 1
TEX_PREAMBLE = r"""\documentclass[10pt]{article}
\usepackage[a4paper,margin=15mm]{geometry}
\usepackage[T1]{fontenc}
\usepackage{booktabs}
\usepackage{graphicx}
\usepackage{pdflscape}
\begin{document}
"""
INSTALL_HINT = ("pdflatex not found: install it (Debian/Ubuntu as root: `bash scripts/install_tex.sh`, i.e. "
                "`apt-get install --no-install-recommends texlive-latex-base texlive-latex-recommended`; "
                "macOS: MacTeX) and rerun `python -m pipeline tables`")


class LayoutError(UserError):
    """table_layouts.yaml names something the long table does not have."""


@dataclass
class Cell:
    ours: float | None = None
    ours_std: float | None = None
    seeds: int = 0
    paper: float | None = None
    paper_std: float | None = None
    status: str = ""
    reason: str = ""
    mark: str = ""
    device: str = ""
    metric: str = ""
    notes: list[str] = field(default_factory=list)  # footnote texts of this cell


@dataclass
class Row:
    section: str | None
    stub: list[str]
    long_rows: list[str]  # the long table's row names behind this row (one per column group)
    cells: list[Cell]
    notes: list[str] = field(default_factory=list)  # footnote texts of the row (cited, shared smoke model)
    cited: bool = False


@dataclass
class WideTable:
    name: str
    paper: str  # "Table 1", "Table VII"
    caption: str
    stub: list[str]
    groups: list[tuple[str, list[str]]]  # (group name, column labels)
    rows: list[Row]
    provenance: str = ""
    footnotes: list[str] = field(default_factory=list)  # in order of first use: index 0 -> "a"

    @property
    def label(self) -> str:
        return f"tab:{self.name}"

    def marker(self, note: str) -> str:
        if note not in self.footnotes:
            self.footnotes.append(note)
        i = self.footnotes.index(note)
        return chr(ord("a") + i) if i < 26 else f"z{i - 25}"


def load_layouts(path: str | os.PathLike = LAYOUTS) -> dict[str, dict]:
    with open(path, encoding="utf-8") as fh:
        layouts = yaml.safe_load(fh) or {}
    for name, lay in layouts.items():
        for key in ("paper", "caption", "stub", "groups", "rows"):
            if key not in lay:
                raise LayoutError(f"{path}: {name} has no {key!r}")
        for i, row in enumerate(lay["rows"]):
            if len(row.get("stub", [])) != len(lay["stub"]):
                raise LayoutError(f"{path}: {name}.rows[{i}].stub has {len(row.get('stub', []))} entries, "
                                  f"the layout's stub {len(lay['stub'])}")
    return layouts


def _num(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def shared_rows(long_records: list[dict]) -> dict[str, str]:
    """Row -> the first earlier row whose numbers come from exactly the same runs (long table `cells`
    column), e.g. the R50/R101/R101c rows that the smoke profile's backbone_map sends to one SmokeR18."""
    runs: dict[str, set[str]] = {}
    for r in long_records:
        ids = {c for c in str(r.get("cells") or "").split(";") if c and c not in ("nan", "None")}
        if ids:
            runs.setdefault(str(r["row"]), set()).update(ids)
    first: dict[frozenset, str] = {}
    out = {}
    for row, ids in runs.items():
        key = frozenset(ids)
        if key in first:
            out[row] = first[key]
        else:
            first[key] = row
    return out


def pivot(name: str, layout: dict, long_records: list[dict], *, shared: dict[str, str] | None = None,
          provenance: str = "", synthetic: bool = False) -> WideTable:
    """The long table's records (dicts with row, metric, paper, ours, ...) in the layout of `name`.

    `shared`: long row -> an earlier row of the same table trained as the same (smoke) model.
    """
    index = {(r["row"], r["metric"]): r for r in long_records}
    groups = [(g.get("name", ""), [c["label"] for c in g["columns"]]) for g in layout["groups"]]
    table = WideTable(name, layout["paper"], layout["caption"], list(layout["stub"]), groups, [], provenance)
    shared = shared or {}
    for spec in layout["rows"]:
        cells, long_rows = [], []
        for g in layout["groups"]:
            long_row = spec["row"].replace("{key}", str(g.get("key", "")))
            long_rows.append(long_row)
            for col in g["columns"]:
                rec = index.get((long_row, col["metric"]))
                if rec is None:
                    cells.append(Cell(metric=col["metric"], status="absent"))
                    continue
                cells.append(Cell(ours=_num(rec.get("ours")), ours_std=_num(rec.get("ours_std")),
                                  seeds=int(_num(rec.get("seeds")) or 0), paper=_num(rec.get("paper")),
                                  paper_std=_num(rec.get("paper_std")), status=str(rec.get("status") or ""),
                                  reason=str(rec.get("reason") or ""), mark=str(rec.get("mark") or ""),
                                  device=str(rec.get("device") or ""), metric=col["metric"]))
        row = Row(spec.get("section"), [str(s) for s in spec["stub"]], list(dict.fromkeys(long_rows)), cells)
        row.cited = bool(cells) and all(c.status in ("cited", "absent") for c in cells) and any(
            c.status == "cited" for c in cells)
        if row.cited:
            row.notes.append("cited in the paper from other work: not reproduced (the paper's number only)")
        for lr in row.long_rows:
            if lr in shared:
                row.notes.append(f"same {'smoke ' if synthetic else ''}model as “{shared[lr]}” "
                                 f"(the profile maps both backbones to one model): identical numbers")
        for c in cells:
            if c.status in ("cited", "absent"):
                continue
            if c.ours is None:
                c.notes.append(f"{c.status}: {c.reason}" if c.reason else c.status or "no value")
            elif c.metric.split(" ")[0] == "fps" and c.device and PAPER_FPS_DEVICE not in c.device:
                c.notes.append(f"fps measured on {c.device}; the paper's on one {PAPER_FPS_DEVICE} (batch 1): "
                               f"not comparable, no difference taken")
        table.rows.append(row)
    for row in table.rows:  # footnote letters in reading order
        for note in row.notes:
            table.marker(note)
        for c in row.cells:
            for note in c.notes:
                table.marker(note)
    return table


# --------------------------------------------------------------------------------------- text

def _digits(metric: str) -> int:
    return 0 if metric.startswith("train memory") else 1


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def cell_lines(cell: Cell) -> tuple[str, str]:
    """(ours line, paper line) as plain text; '' where the line is empty."""
    d = _digits(cell.metric)
    if cell.status == "absent":
        return "–", ""
    paper = ""
    if cell.paper is not None:
        paper = _fmt(cell.paper, d) + (f" ± {cell.paper_std:.1f}" if cell.paper_std else "")
        if cell.metric.split(" ")[0] == "fps":
            paper += f" {PAPER_FPS_DEVICE}"
        paper = f"({paper})"
    elif cell.status != "cited":
        paper = "(–)"
    if cell.status == "cited":
        return "", paper
    ours = _fmt(cell.ours, 2 if cell.metric.split(" ")[0] == "fps" else d)
    if cell.ours is not None and cell.seeds > 1 and cell.ours_std is not None:
        ours += f" ± {cell.ours_std:.1f}"
    return ours, paper


def render_label(text: str, kind: str) -> str:
    """`PQ^St` -> PQ$^{\\mathrm{St}}$ (tex) / PQ<sup>St</sup> (html)."""
    parts = re.split(r"\^(\w+)", text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"$^{{\\mathrm{{{part}}}}}$" if kind == "tex" else f"<sup>{html.escape(part)}</sup>")
        else:
            out.append(tex_escape(part) if kind == "tex" else html.escape(part))
    return "".join(out)


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "†": r"\textsuperscript{\dag}", "×": r"$\times$", "±": r"$\pm$", "–": "--", "—": "---",
                "“": "``", "”": "''", "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


# -------------------------------------------------------------------------------------- LaTeX

def _tex_cell(table: WideTable, cell: Cell) -> str:
    ours, paper = cell_lines(cell)
    marks = "".join(table.marker(n) for n in cell.notes)
    top = tex_escape(ours) + (f"\\textsuperscript{{{marks}}}" if marks else "")
    if cell.mark == "outside":
        top = f"\\textbf{{{top}}}"
    if not paper:
        return top
    return f"\\begin{{tabular}}[c]{{@{{}}c@{{}}}}{top}\\\\{{\\scriptsize {tex_escape(paper)}}}\\end{{tabular}}"


def to_latex(table: WideTable, *, smoke_note: str = "") -> str:
    """A `table` float (inside `landscape` when the layout asks) that needs booktabs, graphicx, pdflscape."""
    n_stub, n_cols = len(table.stub), sum(len(cols) for _, cols in table.groups)
    total = n_stub + n_cols
    lines = [f"% {table.name}: paper {table.paper} in the paper's layout (pipeline/paper_tables.py)",
             "% needs \\usepackage{booktabs,graphicx} (and pdflscape for landscape tables)",
             "\\begin{table}[htbp]", "\\centering",
             f"\\caption{{{tex_escape(_caption(table, smoke_note))}}}", f"\\label{{{table.label}}}",
             "\\footnotesize\\setlength{\\tabcolsep}{4pt}",
             "\\sbox0{%", f"\\begin{{tabular}}{{{'l' * n_stub}{'c' * n_cols}}}", "\\toprule"]
    if any(name for name, _ in table.groups):
        head, rules, col = ["" for _ in range(n_stub)], [], n_stub + 1
        for name, cols in table.groups:
            head.append(f"\\multicolumn{{{len(cols)}}}{{c}}{{{render_label(name, 'tex')}}}")
            rules.append(f"\\cmidrule(lr){{{col}-{col + len(cols) - 1}}}")
            col += len(cols)
        lines += [" & ".join(head) + " \\\\", " ".join(rules)]
    lines.append(" & ".join([render_label(s, "tex") for s in table.stub]
                            + [render_label(c, "tex") for _, cols in table.groups for c in cols]) + " \\\\")
    lines.append("\\midrule")
    for row in table.rows:
        if row.section:
            lines.append(f"\\multicolumn{{{total}}}{{@{{}}l}}{{\\textit{{{tex_escape(row.section)}}}}} \\\\")
        stub = [tex_escape(s) for s in row.stub]
        marks = "".join(table.marker(n) for n in row.notes)
        if marks:
            stub[0] += f"\\textsuperscript{{{marks}}}"
        lines.append(" & ".join(stub + [_tex_cell(table, c) for c in row.cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}%",
              "\\ifdim\\wd0>\\linewidth\\resizebox{\\linewidth}{!}{\\usebox0}\\else\\usebox0\\fi"]
    notes = [tex_escape("Ours: median over seeds (± std when more than one); the paper's number in parentheses; "
                        "–: no number (in the paper, or not measured here).")]
    notes += [f"\\textsuperscript{{{chr(ord('a') + i) if i < 26 else f'z{i - 25}'}}} {tex_escape(n)}"
              for i, n in enumerate(table.footnotes)]
    lines += ["\\par\\smallskip", "\\parbox{\\linewidth}{\\scriptsize " + " \\\\ ".join(notes) + "}",
              "\\end{table}"]
    return "\n".join(lines) + "\n"


def _caption(table: WideTable, smoke_note: str) -> str:
    text = f"{table.caption} (paper {table.paper}). {table.provenance}".strip()
    if smoke_note:
        text += f" {smoke_note[0].upper()}{smoke_note[1:]}."
    return text


def latex_document(tables: list[tuple[WideTable, str, bool]]) -> str:
    """A standalone document with every table: [(table, its .tex text, landscape)]."""
    body = [TEX_PREAMBLE]
    for table, tex, landscape in tables:
        body.append("\\begin{landscape}\n" + tex + "\\end{landscape}" if landscape else tex)
        body.append("\\clearpage")
    body.append("\\end{document}\n")
    return "\n".join(body)


def build_pdf(doc: str, out_pdf: Path, *, timeout: int = 120) -> tuple[bool, str]:
    """Compile `doc` with pdflatex into `out_pdf` (atomically); (False, how to get pdflatex) when missing."""
    exe = shutil.which("pdflatex")
    if exe is None:
        return False, INSTALL_HINT
    with tempfile.TemporaryDirectory(prefix="tables-pdf-") as tmp:
        src = Path(tmp) / "tables.tex"
        src.write_text(doc, encoding="utf-8")
        proc = subprocess.run([exe, "-interaction=nonstopmode", "-halt-on-error", "tables.tex"], cwd=tmp,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log = Path(tmp) / "tables.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else proc.stdout[-1500:]
            return False, f"pdflatex failed on tables.tex:\n{tail}"
        out_pdf.parent.mkdir(parents=True, exist_ok=True)
        tmp_pdf = out_pdf.with_name(f".{out_pdf.name}.tmp")
        shutil.copyfile(Path(tmp) / "tables.pdf", tmp_pdf)
        os.replace(tmp_pdf, out_pdf)
        log_text = (Path(tmp) / "tables.log").read_text(errors="replace")
    overfull = log_text.count("Overfull \\hbox")  # a table wider than the page would show here
    return True, f"{out_pdf} ({overfull} overfull hbox)"


def write_note_pdf(out_pdf: Path, title: str, note: str) -> Path:
    """A one-page A4 PDF (matplotlib, no TeX) that says why the tables' PDF is not there and how to get it.

    The tables stage writes it in place of `reports/tables.pdf` when pdflatex is missing or fails, so the
    stage's declared output always exists (DVC has no optional outputs) and a reader who opens it learns
    what to install; written atomically like every other output.
    """
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [title, ""] + [w for para in note.splitlines() for w in (textwrap.wrap(para, 95) or [""])]
    fig = plt.figure(figsize=(8.27, 11.69))  # A4 in inches
    fig.text(0.06, 0.95, "\n".join(lines[:70]), va="top", ha="left", family="monospace", fontsize=8)
    out_pdf.parent.mkdir(parents=True, exist_ok=True)
    tmp_pdf = out_pdf.with_name(f".{out_pdf.name}.tmp")
    try:
        fig.savefig(tmp_pdf, format="pdf")
    finally:
        plt.close(fig)
    os.replace(tmp_pdf, out_pdf)
    return out_pdf


# --------------------------------------------------------------------------------------- HTML

def _html_cell(table: WideTable, cell: Cell) -> str:
    ours, paper = cell_lines(cell)
    marks = "".join(table.marker(n) for n in cell.notes)
    top = html.escape(ours) + (f"<sup class='fn'>{marks}</sup>" if marks else "")
    cls = " class='outside'" if cell.mark == "outside" else ""
    return f"<td{cls}>{top}" + (f"<br><span class='paper'>{html.escape(paper)}</span>" if paper else "") + "</td>"


def to_html(table: WideTable, *, links: str = "") -> str:
    n_stub = len(table.stub)
    total = n_stub + sum(len(cols) for _, cols in table.groups)
    out = [f"<table class='paper-table' data-table='{html.escape(table.name)}'><thead>"]
    if any(name for name, _ in table.groups):
        out.append("<tr>" + "".join("<th></th>" for _ in range(n_stub))
                   + "".join(f"<th colspan='{len(cols)}' class='group'>{render_label(name, 'html')}</th>"
                             for name, cols in table.groups) + "</tr>")
    out.append("<tr>" + "".join(f"<th>{render_label(s, 'html')}</th>" for s in table.stub)
               + "".join(f"<th>{render_label(c, 'html')}</th>" for _, cols in table.groups for c in cols) + "</tr>")
    out.append("</thead><tbody>")
    for row in table.rows:
        if row.section:
            out.append(f"<tr class='section'><td colspan='{total}'>{html.escape(row.section)}</td></tr>")
        marks = "".join(table.marker(n) for n in row.notes)
        stub = [html.escape(s) for s in row.stub]
        if marks:
            stub[0] += f"<sup class='fn'>{marks}</sup>"
        cls = " class='cited'" if row.cited else ""
        out.append(f"<tr{cls}>" + "".join(f"<td class='stub'>{s}</td>" for s in stub)
                   + "".join(_html_cell(table, c) for c in row.cells) + "</tr>")
    out.append("</tbody></table>")
    notes = "".join(f"<li><sup>{chr(ord('a') + i) if i < 26 else f'z{i - 25}'}</sup> {html.escape(n)}</li>"
                    for i, n in enumerate(table.footnotes))
    out.append("<p class='prov'>Each cell: ours (median over seeds, ± std when more than one) above, "
               "(the paper's number) below; – : no number.</p>")
    if notes:
        out.append(f"<ol class='footnotes'>{notes}</ol>")
    if links:
        out.append(links)
    return "\n".join(out)


# ------------------------------------------------------------------------------------ wide CSV

def wide_records(table: WideTable) -> list[dict[str, Any]]:
    """One dict per layout row: the stub columns, then <group>/<column>/{ours,ours_std,seeds,paper,paper_std}."""
    out = []
    for row in table.rows:
        rec: dict[str, Any] = {"section": row.section or ""}
        rec.update({(s or "row"): v for s, v in zip(table.stub, row.stub)})
        i = 0
        for gname, cols in table.groups:
            for label in cols:
                c = row.cells[i]
                i += 1
                key = "/".join(x for x in (gname, label) if x)
                rec.update({f"{key}/ours": c.ours, f"{key}/ours_std": c.ours_std, f"{key}/seeds": c.seeds or None,
                            f"{key}/paper": c.paper, f"{key}/paper_std": c.paper_std})
        rec["notes"] = "; ".join(row.notes + [n for c in row.cells for n in c.notes])
        out.append(rec)
    return out
