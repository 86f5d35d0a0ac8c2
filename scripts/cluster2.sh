#!/usr/bin/env bash
# A two-node SLURM cluster on this machine, for the cluster tests (tests/test_cluster2.py):
# two slurmd, each in its own network namespace with its own address on a private bridge
# (node1 = 10.231.0.11, node2 = 10.231.0.12, this host = 10.231.0.1), and their own slurmctld
# (ports 6827/6828, cluster "maskformer2", state in ${CLUSTER2_ROOT:-.ci-state/cluster2}). Accounting
# goes to the slurmdbd of scripts/services.sh (start that first). From inside a node this host's
# 127.0.0.1 is another machine's loopback, as on a real cluster: the study's MLflow server must bind
# 10.231.0.1 (MASKFORMER_TRACKING_HOST in the env file).
#
#   bash scripts/cluster2.sh up      # start (root; needs scripts/services.sh up), write scripts/cluster2.env
#   bash scripts/cluster2.sh down    # stop the daemons by pid, remove the namespaces and the bridge
#   bash scripts/cluster2.sh env     # print the path of the env file to source
#   bash scripts/cluster2.sh status  # exit 0 when both nodes are idle/allocated
#
# Recipe (shared INFRA notes): slurmd starts with `nsenter --net=/var/run/netns/NS` (not `ip netns
# exec`, which remounts /sys and slurmd then finds no cgroup fs). The mount namespace stays shared:
# munge's socket, the config and the run folders are the same files on both nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ROOT=$(realpath -m "${CLUSTER2_ROOT:-$REPO/.ci-state/cluster2}")
ENV_FILE=$REPO/scripts/cluster2.env
SLURMCTLD_PORT=${CLUSTER2_SLURMCTLD_PORT:-6827}
SLURMD_PORT=${CLUSTER2_SLURMD_PORT:-6828}
SLURMDBD_PORT=${SLURMDBD_PORT:-6819}   # the running slurmdbd of scripts/services.sh
NET=${CLUSTER2_NET:-10.231.0}
BR=mfbr0
NODES=(1 2)
CONF=$ROOT/slurm.conf
PIDS=$ROOT/pids
# shellcheck source=scripts/slurm_conf.sh
. "$REPO/scripts/slurm_conf.sh"   # slurm_conf_common: the lines shared with scripts/services.sh

log() { printf '[cluster2 %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  die "timed out after ${secs}s waiting for $what (logs under $ROOT/log)"
}
stop_pid() {
  local f=$1 p
  [ -s "$f" ] || return 0
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true
  fi
  rm -f "$f"
}

network_up() {
  ip link show "$BR" >/dev/null 2>&1 || {
    ip link add "$BR" type bridge
    ip addr add "$NET.1/24" dev "$BR"
  }
  ip link set "$BR" up
  local k
  for k in "${NODES[@]}"; do
    [ -e "/var/run/netns/mfnode$k" ] || ip netns add "mfnode$k"
    if ! ip link show "mfv${k}h" >/dev/null 2>&1; then
      ip link add "mfv${k}h" type veth peer name "mfv${k}n"
      ip link set "mfv${k}h" master "$BR"
      ip link set "mfv${k}h" up
      ip link set "mfv${k}n" netns "mfnode$k"
      ip -n "mfnode$k" link set "mfv${k}n" name eth0
      ip -n "mfnode$k" addr add "$NET.1$k/24" dev eth0
      ip -n "mfnode$k" link set eth0 up
      ip -n "mfnode$k" link set lo up
    fi
  done
}

network_down() {
  local k
  for k in "${NODES[@]}"; do
    ip link del "mfv${k}h" 2>/dev/null || true
    ip netns del "mfnode$k" 2>/dev/null || true
  done
  ip link del "$BR" 2>/dev/null || true
}

write_conf() {
  mkdir -p "$ROOT"/{state,log} "$PIDS"
  local k
  for k in "${NODES[@]}"; do mkdir -p "$ROOT/spoolnode$k"; done
  # FirstJobId: ids never restart at 1 when the state folder is wiped (INFRA trap: submitit would
  # return old result files from a reused job folder).
  [ -s "$ROOT/first_job_id" ] || echo $(( ($(date +%s) / 4) % 20000000 + 45000000 )) >"$ROOT/first_job_id"
  # slurmctld listens on 0.0.0.0:$SLURMCTLD_PORT: SLURM 22.05 binds it to one address only with
  # CommunicationParameters=NoCtldInAddrAny, and then to what the host NAME resolves to (here 127.0.0.1,
  # measured: the nodes could no longer register), not to SlurmctldHost's (10.231.0.1); NoInAddrAny
  # excludes slurmctld (slurm.conf(5)). Making the name resolve to the bridge would mean editing
  # /etc/hosts machine-wide, which this script does not do. Munge authenticates every RPC regardless.
  {
    cat <<CONF
ClusterName=maskformer2
SlurmctldHost=$(hostname -s)($NET.1)
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool%n
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd-%n.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd-%n.log
CONF
    slurm_conf_common "$SLURMDBD_PORT" "$(cat "$ROOT/first_job_id")"
    cat <<CONF
NodeName=node1 NodeAddr=$NET.11 CPUs=2 RealMemory=8000 State=UNKNOWN
NodeName=node2 NodeAddr=$NET.12 CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=two Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  } >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
  command -v slurmctld >/dev/null || die "SLURM is not installed: run scripts/services.sh up first"
  (exec 3<>"/dev/tcp/127.0.0.1/$SLURMDBD_PORT") 2>/dev/null || die "no slurmdbd on 127.0.0.1:$SLURMDBD_PORT: run scripts/services.sh up first"
  local t0=$SECONDS k
  network_up
  write_conf
  export SLURM_CONF=$CONF
  alive "$PIDS/slurmctld.pid" || slurmctld -f "$CONF"
  for k in "${NODES[@]}"; do
    alive "$PIDS/slurmd-node$k.pid" || nsenter --net="/var/run/netns/mfnode$k" slurmd -f "$CONF" -N "node$k"
  done
  wait_for "two idle nodes" 90 bash -c '[ "$(sinfo -h -N -o %T | grep -cE "idle|mix|alloc")" = 2 ]'
  for k in "${NODES[@]}"; do scontrol update NodeName="node$k" State=RESUME >/dev/null 2>&1 || true; done
  cat >"$ENV_FILE.tmp" <<ENV
# Written by scripts/cluster2.sh up ($(date -Iseconds)); source it after scripts/services.env
export CLUSTER2_ROOT=$ROOT
export SLURM_CONF=$CONF
# The nodes reach this host only on the bridge: the study's MLflow server binds this address.
export MASKFORMER_TRACKING_HOST=$NET.1
# gloo binds the node's cluster interface (the host name resolves to the host's loopback).
export CLUSTER2_SETUP='export GLOO_SOCKET_IFNAME=eth0'
ENV
  mv "$ENV_FILE.tmp" "$ENV_FILE"
  log "two nodes up in $((SECONDS - t0)) s (node1 $NET.11, node2 $NET.12); env: . $ENV_FILE"
}

down() {
  local k
  if [ -f "$CONF" ] && alive "$PIDS/slurmctld.pid"; then
    SLURM_CONF=$CONF scancel --user=root >/dev/null 2>&1 || true   # this cluster's jobs only (its own slurmctld)
  fi
  stop_pid "$PIDS/slurmctld.pid"
  for k in "${NODES[@]}"; do stop_pid "$PIDS/slurmd-node$k.pid"; done
  network_down
  rm -f "$ENV_FILE"
  log "cluster2 stopped"
}

status() {
  [ -f "$CONF" ] || { echo "cluster2: not configured"; return 1; }
  local n
  n=$(SLURM_CONF=$CONF sinfo -h -N -o %T 2>/dev/null | grep -cE "idle|mix|alloc" || true)
  [ "$n" = 2 ] && { echo "cluster2: 2 nodes up"; return 0; }
  echo "cluster2: $n of 2 nodes up"; return 1
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) [ -f "$ENV_FILE" ] || die "$ENV_FILE does not exist; run: bash scripts/cluster2.sh up"; echo "$ENV_FILE" ;;
  status) status ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
