#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the `slurm` tests and local trials.
#   scripts/slurm_local.sh install   apt-get install slurm-wlm munge (root; once)
#   scripts/slurm_local.sh start     write slurm.conf, start munged, slurmctld, slurmd; wait for idle
#   scripts/slurm_local.sh stop      stop them by the pids they wrote
#   scripts/slurm_local.sh status    sinfo
# State lives in $ARIA_SLURM_DIR (default /tmp/aria-slurm). Partition: debug.
set -euo pipefail
DIR=${ARIA_SLURM_DIR:-/tmp/aria-slurm}
CONF=/etc/slurm/slurm.conf

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return 0; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

start() {
  command -v slurmctld >/dev/null || { echo "slurm_local: slurm is not installed: run $0 install" >&2; exit 2; }
  if sinfo -h >/dev/null 2>&1 && sinfo -h -o %T | grep -q idle; then echo "slurm_local: already up"; return 0; fi
  mkdir -p "$DIR"/{state,spool,log} /run/munge /etc/slurm
  [ -f /etc/munge/munge.key ] || mungekey -c
  chown munge:munge /etc/munge/munge.key /run/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    munged --force
  fi
  local host cpus mem
  host=$(hostname -s); cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
  cat > "$CONF" <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/ctld.log
SlurmdLogFile=$DIR/log/d.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  slurmctld
  slurmd
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then echo "slurm_local: up ($host, $cpus CPUs, partition debug)"; return 0; fi
    sleep 1
  done
  echo "slurm_local: the node did not become idle in 60 s; see $DIR/log" >&2
  exit 1
}

stop() {
  for pid in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  if [ -f /run/munge/munged.pid ]; then kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true; fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
