#!/usr/bin/env bash
# The slurm.conf settings shared by scripts/services.sh (one node) and scripts/cluster2.sh (two nodes in
# network namespaces): plugins, accounting through slurmdbd, scheduling and timeouts. Each script
# sources this file and writes its own name, addresses, ports, paths, nodes and partition around it.
# Measured recipe: shared INFRA notes (accounting through slurmdbd is required for submitit:
# without it `sacct` fails and a job that dies without a result makes `job.result()` hang).
#
# slurm_conf_common SLURMDBD_PORT FIRST_JOB_ID   (prints the lines on stdout)
slurm_conf_common() {
  local dbd_port=$1 first_id=$2
  cat <<CONF
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
FirstJobId=$first_id
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
CONF
}
