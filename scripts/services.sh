#!/usr/bin/env bash
# Start / stop the services the pipeline and its tests use, by hand (no systemd):
# munge, a private MariaDB, slurmdbd, slurmctld, slurmd (one node "localhost", 2 fake GPUs),
# a Prefect server and an MLflow server. State lives in ${SERVICES_ROOT:-$PWD/.ci-state}.
#
#   bash scripts/services.sh up      # install what is missing (apt, root), start, write scripts/services.env
#   bash scripts/services.sh down    # stop everything by pid (Prefect serve processes first)
#   bash scripts/services.sh env     # print the path of the env file to source
#   bash scripts/services.sh status  # exit 0 when every service answers
#   bash scripts/services.sh serve   # start `python -m flows.serve` (the deployments) in the background;
#                                    # pid in $ROOT/pids/prefect_serve.pid, log $ROOT/prefect/serve.log; `down` stops it
#
# Everything listens on 127.0.0.1 (SERVICES_BIND_HOST for the two HTTP servers). Ports can be moved
# for a second instance on the same machine: MLFLOW_PORT (5000), PREFECT_PORT (4200),
# MARIADB_PORT (3307), SLURMCTLD_PORT (6817), SLURMD_PORT (6818), SLURMDBD_PORT (6819).
# Measured recipes and traps: shared INFRA notes (SLURM accounting is required for submitit).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ROOT=$(realpath -m "${SERVICES_ROOT:-$REPO/.ci-state}")
VENV=${VENV:-$REPO/.venv}
ENV_FILE=${SERVICES_ENV_FILE:-$REPO/scripts/services.env}
BIND=${SERVICES_BIND_HOST:-127.0.0.1}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
PREFECT_PORT=${PREFECT_PORT:-4200}
MARIADB_PORT=${MARIADB_PORT:-3307}
SLURMCTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
SLURMDBD_PORT=${SLURMDBD_PORT:-6819}
FAKE_GPUS=${FAKE_GPUS:-2}
export SLURM_CONF=$ROOT/slurm/slurm.conf
PIDS=$ROOT/pids
SOCK=$ROOT/mysql/mysqld.sock
# shellcheck source=scripts/slurm_conf.sh
. "$REPO/scripts/slurm_conf.sh"   # slurm_conf_common: the lines shared with scripts/cluster2.sh

log() { printf '[services %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
wait_for() {  # wait_for WHAT SECONDS CMD...: poll CMD every 0.25 s
  local what=$1 secs=$2; shift 2
  local n=$((secs * 4))
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  die "timed out after ${secs}s waiting for $what (logs under $ROOT)"
}
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
stop_pid() {  # stop_pid PIDFILE [SIG]: signal, wait up to 15 s, then SIGKILL
  local f=$1 sig=${2:-TERM} p
  [ -s "$f" ] || return 0
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then
    kill -"$sig" "$p" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$p" 2>/dev/null; then log "force-killing $p ($f)"; kill -KILL "$p" 2>/dev/null || true; fi
  fi
  rm -f "$f"
}

install_packages() {
  local missing=0
  # rsync: the code snapshot of every SLURM study run (submitit's RsyncSnapshot, pipeline.study.make_snapshot)
  for bin in slurmctld slurmd sbatch sacct munged slurmdbd mariadbd mariadb-install-db chromium rsync; do
    command -v "$bin" >/dev/null 2>&1 || missing=1
  done
  [ "$missing" = 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "SLURM/MariaDB/Chromium are missing and installing them needs root (apt-get)"
  log "installing SLURM, munge, MariaDB, Chromium (apt-get, once)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge slurmdbd mariadb-server chromium rsync >"$ROOT/apt.log" 2>&1 \
    || die "apt-get install failed; see $ROOT/apt.log"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi  # a system munged already answers
  [ -s /etc/munge/munge.key ] || { mungekey --create --force; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  runuser -u munge -- /usr/sbin/munged --force
  wait_for munge 10 sh -c 'munge -n | unmunge'
}

start_mariadb() {
  if alive "$ROOT/mysql/mysqld.pid" && mariadb-admin --no-defaults -S "$SOCK" -uroot ping >/dev/null 2>&1; then return 0; fi
  port_open "$MARIADB_PORT" && die "port $MARIADB_PORT is in use by another process (set MARIADB_PORT)"
  rm -f "$SOCK" "$ROOT/mysql/mysqld.pid"
  if [ ! -d "$ROOT/mysql/data/mysql" ]; then
    rm -rf "$ROOT/mysql/data"
    mariadb-install-db --no-defaults --datadir="$ROOT/mysql/data" --user=root \
      --auth-root-authentication-method=normal >"$ROOT/mysql/install.log" 2>&1 \
      || die "mariadb-install-db failed; see $ROOT/mysql/install.log"
  fi
  nohup mariadbd --no-defaults --datadir="$ROOT/mysql/data" --user=root --bind-address=127.0.0.1 \
    --port="$MARIADB_PORT" --socket="$SOCK" --pid-file="$ROOT/mysql/mysqld.pid" --log-error="$ROOT/mysql/err.log" \
    --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 >/dev/null 2>&1 &
  wait_for mariadb 60 mariadb-admin --no-defaults -S "$SOCK" -uroot ping
  mariadb --no-defaults -S "$SOCK" -uroot -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
}

write_slurm_conf() {
  local ncpu mem gres_types="" gres_node="" first_id
  ncpu=$(nproc)
  mem=$(( $(free -m | awk '/^Mem:/{print $2}') * 8 / 10 ))
  if [ "$FAKE_GPUS" -gt 0 ]; then  # fake GPUs so gpus_per_node requests schedule (INFRA notes)
    gres_types="GresTypes=gpu"; gres_node="Gres=gpu:$FAKE_GPUS"
    for i in $(seq 0 $((FAKE_GPUS - 1))); do touch "$ROOT/slurm/fakegpu$i"; done
    printf 'AutoDetect=off\nNodeName=localhost Name=gpu File=%s/slurm/fakegpu[0-%d]\n' "$ROOT" $((FAKE_GPUS - 1)) >"$ROOT/slurm/gres.conf"
  fi
  # Job ids restart at FirstJobId when SLURM's state is new; submitit would then pick up old result
  # files from a previous run's `%j` folders (INFRA trap). A fresh state starts at an id derived
  # from the clock (below MaxJobId 67,043,328), kept in the state folder so the conf is stable.
  [ -s "$ROOT/slurm/first_job_id" ] || echo $(( ($(date +%s) / 4) % 60000000 + 1000 )) >"$ROOT/slurm/first_job_id"
  first_id=$(cat "$ROOT/slurm/first_job_id")
  {
    cat <<CONF
ClusterName=maskformer
SlurmctldHost=localhost
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$ROOT/slurm/state
SlurmdSpoolDir=$ROOT/slurm/spool
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$ROOT/slurm/log/slurmctld.log
SlurmdLogFile=$ROOT/slurm/log/slurmd.log
CONF
    slurm_conf_common "$SLURMDBD_PORT" "$first_id"
    cat <<CONF
$gres_types
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$ncpu RealMemory=$mem $gres_node State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  } >"$SLURM_CONF.tmp"
  mv "$SLURM_CONF.tmp" "$SLURM_CONF"
  umask 077
  cat >"$ROOT/slurm/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$SLURMDBD_PORT
SlurmUser=root
LogFile=$ROOT/slurm/log/slurmdbd.log
PidFile=$PIDS/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MARIADB_PORT
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
  umask 022
  chmod 600 "$ROOT/slurm/slurmdbd.conf"  # slurmdbd refuses a readable conf
}

start_slurm() {
  if ! alive "$PIDS/slurmdbd.pid"; then
    port_open "$SLURMDBD_PORT" && die "port $SLURMDBD_PORT is in use by another process (set SLURMDBD_PORT)"
    slurmdbd   # reads slurmdbd.conf beside $SLURM_CONF
  fi
  wait_for slurmdbd 60 port_open "$SLURMDBD_PORT"
  if ! alive "$PIDS/slurmctld.pid"; then
    port_open "$SLURMCTLD_PORT" && die "port $SLURMCTLD_PORT is in use by another process (set SLURMCTLD_PORT)"
    slurmctld -f "$SLURM_CONF"   # keeps its saved state: job ids continue, never reused
  fi
  if ! alive "$PIDS/slurmd.pid"; then
    slurmd -f "$SLURM_CONF" -N localhost
  fi
  wait_for "slurm node idle" 60 bash -c 'sinfo -h -o %T | grep -Eq "idle|mix|alloc"'
  # A node left DOWN/DRAIN by a previous crash comes back to service here.
  scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
}

write_env() {
  local tmp=$ENV_FILE.tmp
  cat >"$tmp" <<ENV
# Written by scripts/services.sh up ($(date -Iseconds)); source it: . scripts/services.env
export SERVICES_ROOT=$ROOT
export SLURM_CONF=$SLURM_CONF
export PREFECT_HOME=$ROOT/prefect/home
export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api
export PREFECT_UI_URL=http://127.0.0.1:$PREFECT_PORT
export PREFECT_UI_API_URL=http://127.0.0.1:$PREFECT_PORT/api
export MLFLOW_PORT=$MLFLOW_PORT
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_RUNNER_POLL_FREQUENCY=1
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export MLFLOW_DISABLE_TELEMETRY=true
export SUBMITIT_LOG_LEVEL=NOCONFIG
export DVC_NO_ANALYTICS=1
export DO_NOT_TRACK=1
export CHROMIUM=$(command -v chromium || echo /usr/bin/chromium)
ENV
  mv "$tmp" "$ENV_FILE"
}

up() {
  local t0=$SECONDS
  mkdir -p "$ROOT"/{slurm/state,slurm/spool,slurm/log,mysql,prefect,mlflow} "$PIDS"
  install_packages
  [ -x "$VENV/bin/python" ] || die "$VENV is missing; run scripts/install.sh first"
  start_munge;   log "munge ok"
  start_mariadb; log "mariadb ok (127.0.0.1:$MARIADB_PORT)"
  write_slurm_conf
  start_slurm;   log "slurm ok (node localhost, $FAKE_GPUS fake GPUs)"
  MLFLOW_PORT=$MLFLOW_PORT PREFECT_PORT=$PREFECT_PORT SERVICES_BIND_HOST=$BIND \
    "$VENV/bin/python" -m pipeline.services up --root "$ROOT"
  write_env
  log "all services up in $((SECONDS - t0)) s; env: . $ENV_FILE"
}

down() {
  # Prefect flow-serving processes (tests and flows write their pids here) before the server:
  # a serve process whose server vanished hangs in its SIGTERM handler (INFRA notes).
  local f
  for f in "$PIDS"/prefect_serve*.pid; do [ -e "$f" ] && stop_pid "$f"; done
  if [ -x "$VENV/bin/python" ]; then
    "$VENV/bin/python" -m pipeline.services down --root "$ROOT" || true
  else
    stop_pid "$ROOT/prefect/server.pid"; stop_pid "$ROOT/mlflow/server.pid"
  fi
  if [ -f "$SLURM_CONF" ] && alive "$PIDS/slurmctld.pid"; then
    scontrol shutdown >/dev/null 2>&1 || true   # stops slurmctld and slurmd
    for _ in $(seq 1 60); do alive "$PIDS/slurmctld.pid" || break; sleep 0.25; done
  fi
  stop_pid "$PIDS/slurmctld.pid"; stop_pid "$PIDS/slurmd.pid"
  stop_pid "$PIDS/slurmdbd.pid"
  if alive "$ROOT/mysql/mysqld.pid"; then
    mariadb-admin --no-defaults -S "$SOCK" -uroot shutdown >/dev/null 2>&1 || stop_pid "$ROOT/mysql/mysqld.pid"
    for _ in $(seq 1 60); do alive "$ROOT/mysql/mysqld.pid" || break; sleep 0.25; done
  fi
  # munged is machine-wide (one key, one socket) and other checkouts may share it: left running.
  log "services stopped"
}

serve() {
  # The deployments' process, managed like the servers: one pid file, started once, stopped by `down`.
  [ -f "$ENV_FILE" ] || die "$ENV_FILE does not exist; run: bash scripts/services.sh up"
  if alive "$PIDS/prefect_serve.pid"; then log "flows.serve already running (pid $(cat "$PIDS/prefect_serve.pid"))"; return 0; fi
  mkdir -p "$PIDS" "$ROOT/prefect"
  # shellcheck disable=SC1090
  ( . "$ENV_FILE"; cd "$REPO" && exec setsid "$VENV/bin/python" -m flows.serve ) >>"$ROOT/prefect/serve.log" 2>&1 </dev/null &
  echo $! >"$PIDS/prefect_serve.pid"
  sleep 1
  alive "$PIDS/prefect_serve.pid" || die "flows.serve exited at once; see $ROOT/prefect/serve.log"
  log "flows.serve started (pid $(cat "$PIDS/prefect_serve.pid"), log $ROOT/prefect/serve.log)"
}

status() {
  local ok=0
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || { echo "munge: down"; ok=1; }
  mariadb-admin --no-defaults -S "$SOCK" -uroot ping >/dev/null 2>&1 || { echo "mariadb: down"; ok=1; }
  alive "$PIDS/slurmdbd.pid" || { echo "slurmdbd: down"; ok=1; }
  { [ -f "$SLURM_CONF" ] && sinfo -h -o %T 2>/dev/null | grep -Eq "idle|mix|alloc"; } || { echo "slurm: down"; ok=1; }
  if [ -x "$VENV/bin/python" ]; then
    MLFLOW_PORT=$MLFLOW_PORT PREFECT_PORT=$PREFECT_PORT "$VENV/bin/python" -m pipeline.services status --root "$ROOT" || ok=1
  fi
  [ "$ok" = 0 ] && echo "all services up ($ROOT)"
  return $ok
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) [ -f "$ENV_FILE" ] || die "$ENV_FILE does not exist; run: bash scripts/services.sh up"; echo "$ENV_FILE" ;;
  status) status ;;
  serve) serve ;;
  *) echo "usage: $0 up|down|env|status|serve" >&2; exit 2 ;;
esac
