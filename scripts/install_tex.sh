#!/usr/bin/env bash
# pdflatex for reports/tables/tables.pdf (pipeline/paper_tables.py): Debian's texlive-latex-base +
# texlive-latex-recommended (booktabs, pdflscape) and poppler-utils (pdfinfo, used by the tests).
# Installs with apt-get when run as root on Debian/Ubuntu; otherwise says how to get it. Never fails
# the install: without pdflatex the tables stage writes everything except the PDF and says so.
set -uo pipefail
if command -v pdflatex >/dev/null 2>&1 && kpsewhich booktabs.sty pdflscape.sty >/dev/null 2>&1 \
   && command -v pdfinfo >/dev/null 2>&1; then
  echo "install_tex: pdflatex $(command -v pdflatex) is installed"
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "install_tex: installing texlive-latex-base texlive-latex-recommended poppler-utils (apt-get, once)"
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp)
  if { apt-get install -y -qq --no-install-recommends texlive-latex-base texlive-latex-recommended poppler-utils \
       || { apt-get update -qq && apt-get install -y -qq --no-install-recommends texlive-latex-base \
            texlive-latex-recommended poppler-utils; }; } >"$log" 2>&1; then
    rm -f "$log"
    echo "install_tex: done"
  else
    echo "install_tex: apt-get failed (see $log); reports/tables/tables.pdf will be skipped" >&2
  fi
  exit 0
fi
echo "install_tex: pdflatex is missing and installing it needs root on Debian/Ubuntu:" >&2
echo "  sudo apt-get install --no-install-recommends texlive-latex-base texlive-latex-recommended poppler-utils" >&2
echo "  (macOS: MacTeX or BasicTeX + tlmgr install booktabs pdflscape). Without it the tables stage skips tables.pdf." >&2
exit 0
