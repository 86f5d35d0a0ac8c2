#!/usr/bin/env bash
# pdflatex for reports/tables.pdf (pipeline/paper_tables.py): Debian's texlive-latex-base +
# texlive-latex-recommended (booktabs, pdflscape) and poppler-utils (pdfinfo, used by the tests).
# Installs with apt-get when run as root on Debian/Ubuntu; otherwise says how to get it. Never fails
# the install: without pdflatex the tables stage writes everything else and a one-page PDF saying so.
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
    echo "install_tex: apt-get failed (see $log); reports/tables.pdf will only say how to get pdflatex" >&2
  fi
  exit 0
fi
echo "install_tex: pdflatex is missing and installing it needs root on Debian/Ubuntu:" >&2
echo "  sudo apt-get install --no-install-recommends texlive-latex-base texlive-latex-recommended poppler-utils" >&2
echo "  (macOS: MacTeX or BasicTeX + tlmgr install booktabs pdflscape). Without it reports/tables.pdf only says how to get it." >&2
exit 0
