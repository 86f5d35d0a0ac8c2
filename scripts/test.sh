#!/usr/bin/env bash
# Fresh-machine test entry point: installs the project, then runs the whole test suite.
# Used as-is by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true SUBMITIT_LOG_LEVEL=NOCONFIG
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
.venv/bin/python -m pytest "$@"
