#!/usr/bin/env bash
# Install the project into ./.venv (Python >= 3.10). Idempotent: re-running with an unchanged
# pyproject.toml does nothing. Torch is the CUDA build (2.14.1); it runs on the CPU too.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
bash scripts/install_tex.sh   # pdflatex for reports/tables.pdf (apt-get as root; else prints how)
if [ -f "$stamp" ]; then
  echo "install: $VENV is up to date"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet -e ".[dev]"
rm -f "$VENV"/.installed-*
touch "$stamp"
echo "install: done ($VENV)"
