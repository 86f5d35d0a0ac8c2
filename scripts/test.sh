#!/usr/bin/env bash
# Fresh-machine test entry point (used as-is by .ci/run): installs the project, starts the test
# services (SLURM, MariaDB, Prefect, MLflow; scripts/services.sh) and the two-node SLURM of the
# cluster tests (scripts/cluster2.sh), runs the WHOLE test suite
# (slow, services, faults and browser tests included) and stops the services it started.
# Extra arguments go to pytest: bash scripts/test.sh tests/test_report.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
# Disk preflight: the venv (CUDA build of torch) takes ~7 GB and the suite peaks at ~16 GB under the
# temp folder (the two-node rehearsal's full-size checkpoints; deleted when it passes, pyproject.toml
# tmp_path_retention_policy). Fail here with the numbers rather than half-way with ENOSPC.
need_gb=${MASKFORMER_MIN_FREE_GB:-25}
for dir in "$PWD" "${TMPDIR:-/tmp}"; do
  free_gb=$(df -P -BG "$dir" | awk 'NR==2 {gsub("G", "", $4); print $4}')
  if [ "${free_gb:-0}" -lt "$need_gb" ]; then
    echo "test.sh: only ${free_gb} GB free on the filesystem of $dir; the install and the test suite need about" \
         "${need_gb} GB (set MASKFORMER_MIN_FREE_GB to override). Old pytest folders live in ${TMPDIR:-/tmp}/pytest-of-$(id -un)." >&2
    exit 1
  fi
done
bash scripts/install.sh
echo "test.sh: install took $((SECONDS - t0)) s"

t1=$SECONDS
stop_services=0 stop_cluster2=0
cleanup() {  # by pid, in reverse order of start; only what this run started
  if [ "$stop_cluster2" = 1 ]; then bash scripts/cluster2.sh down || true; fi
  if [ "$stop_services" = 1 ]; then bash scripts/services.sh down || true; fi
}
trap cleanup EXIT
if bash scripts/services.sh status >/dev/null 2>&1; then
  echo "test.sh: services already running; leaving them running afterwards"
else
  stop_services=1
  bash scripts/services.sh up
fi
# The two-node SLURM of the cluster tests (tests/test_cluster2.py), on the services' slurmdbd.
if bash scripts/cluster2.sh status >/dev/null 2>&1; then
  echo "test.sh: cluster2 already running; leaving it running afterwards"
else
  stop_cluster2=1
  bash scripts/cluster2.sh up
fi
echo "test.sh: services took $((SECONDS - t1)) s"
# shellcheck disable=SC1091
. scripts/services.env
export REQUIRE_SERVICES=1   # tests/conftest.py: a missing service fails the run instead of skipping

t2=$SECONDS
rc=0
.venv/bin/python -m pytest -ra --durations=15 "$@" || rc=$?
echo "test.sh: pytest took $((SECONDS - t2)) s, exit $rc; total $((SECONDS - t0)) s"
exit $rc
