#!/usr/bin/env bash
# A real SLURM cluster on this machine, for the `slurm` / `multinode` tests and local trials.
#   scripts/slurm_local.sh install   apt-get install slurm-wlm munge openssh-server pdsh (root; once)
#   scripts/slurm_local.sh start     two nodes (aria-n1, aria-n2), each in its own network and UTS
#                                    namespace on a private bridge, one slurmd and one sshd in each,
#                                    under one slurmctld; wait until both are idle
#   scripts/slurm_local.sh stop      stop every daemon it started, remove the namespaces, links,
#                                    /etc/hosts entries and ssh client config it made
#   scripts/slurm_local.sh status    sinfo
# Without root or `ip` (no namespaces) `start` makes the one-node cluster of before: this host, one
# slurmd. ARIA_SLURM_NODES=1 asks for that too. State lives in $ARIA_SLURM_DIR (default
# /tmp/aria-slurm). Partition: debug (every node).
#
# The link: bridge aria-br0 = 10.77.0.1/24 in this namespace (slurmctld listens there); node i is
# namespace aria-n<i> with eth0 = 10.77.0.(10+i)/24 on a veth pair into the bridge. The namespaces get
# no other route, so the cluster's traffic stays on these links. Node names resolve through a marked
# block in /etc/hosts; ssh between the nodes (the deepspeed launcher's pdsh) uses a key made for the
# cluster, through /etc/ssh/ssh_config.d/aria-slurm.conf.
set -euo pipefail
DIR=${ARIA_SLURM_DIR:-/tmp/aria-slurm}
CONF=/etc/slurm/slurm.conf
NET=10.77.0
BRIDGE=aria-br0
HOSTS_BEGIN="# aria-slurm nodes (scripts/slurm_local.sh) begin"
HOSTS_END="# aria-slurm nodes end"
SSH_CLIENT_CONF=/etc/ssh/ssh_config.d/aria-slurm.conf

install() {
  local want=(slurm-wlm munge openssh-server pdsh) missing=() pkg
  for pkg in "${want[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  # no service may start at install time (openssh-server would start an sshd on this host's port 22)
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || { [ $made_policy = 1 ] && rm -f "$policy"; exit 1; }
  [ $made_policy = 1 ] && rm -f "$policy"
  return 0
}

node_count() {
  if [ "${ARIA_SLURM_NODES:-2}" -lt 2 ]; then echo 1; return; fi
  if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! command -v unshare >/dev/null || ! command -v nsenter >/dev/null; then
    echo 1; return
  fi
  if ! ip netns add aria-probe 2>/dev/null; then echo 1; return; fi
  ip netns del aria-probe
  echo "${ARIA_SLURM_NODES:-2}"
}

node_name() { echo "aria-n$1"; }
node_addr() { echo "$NET.$((10 + $1))"; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

make_links() {  # the bridge, one namespace + veth pair a node, the /etc/hosts block
  local n=$1 i name
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr replace "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for i in $(seq "$n"); do
    name=$(node_name "$i")
    ip netns list | grep -qw "$name" || ip netns add "$name"
    if ! ip link show "aria-v$i" >/dev/null 2>&1; then
      ip link add "aria-v$i" type veth peer name "aria-v${i}p"
      ip link set "aria-v${i}p" netns "$name"
      ip -n "$name" link set "aria-v${i}p" name eth0
    fi
    ip link set "aria-v$i" master "$BRIDGE" up
    ip -n "$name" addr replace "$(node_addr "$i")/24" dev eth0
    ip -n "$name" link set eth0 up
    ip -n "$name" link set lo up
  done
  remove_hosts_block
  { echo "$HOSTS_BEGIN"; echo "$NET.1 aria-ctl"
    for i in $(seq "$n"); do echo "$(node_addr "$i") $(node_name "$i")"; done
    echo "$HOSTS_END"; } >> /etc/hosts
}

remove_hosts_block() {  # rewrite in place: /etc/hosts may be a bind mount (no rename)
  local kept
  kept=$(awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0==b{skip=1;next} $0==e{skip=0;next} !skip' /etc/hosts)
  printf '%s\n' "$kept" > /etc/hosts
}

on_node() {  # on_node I CMD...: run CMD in node I's network namespace with its own hostname
  # (nsenter, not `ip netns exec`: that remounts /sys, and slurmd needs the host's cgroup mount)
  local i=$1; shift
  nsenter --net="/run/netns/$(node_name "$i")" unshare --uts sh -c "hostname $(node_name "$i") && exec \"\$@\"" sh "$@"
}

make_ssh() {  # keys for the cluster, the client config, one sshd per node
  local n=$1 i
  [ -x /usr/sbin/sshd ] || { echo "slurm_local: no sshd (run $0 install): the deepspeed launcher cannot reach the nodes"; return 0; }
  mkdir -p "$DIR/ssh" /run/sshd
  [ -f "$DIR/ssh/host_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -f "$DIR/ssh/host_ed25519"
  [ -f "$DIR/ssh/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -f "$DIR/ssh/id_ed25519"
  cp "$DIR/ssh/id_ed25519.pub" "$DIR/ssh/authorized_keys"
  chmod 600 "$DIR/ssh/authorized_keys"
  cat > "$DIR/ssh/sshd_config" <<SSHD
HostKey $DIR/ssh/host_ed25519
AuthorizedKeysFile $DIR/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AcceptEnv LANG LC_*
SSHD
  local hosts=""
  for i in $(seq "$n"); do hosts="$hosts $(node_name "$i")"; done
  mkdir -p "$(dirname "$SSH_CLIENT_CONF")"
  cat > "$SSH_CLIENT_CONF" <<SSH
# made by scripts/slurm_local.sh start; removed by stop
Host$hosts
  IdentityFile $DIR/ssh/id_ed25519
  UserKnownHostsFile $DIR/ssh/known_hosts
  StrictHostKeyChecking accept-new
  BatchMode yes
SSH
  for i in $(seq "$n"); do
    alive "$DIR/sshd-$(node_name "$i").pid" && continue
    on_node "$i" /usr/sbin/sshd -f "$DIR/ssh/sshd_config" -o "ListenAddress=$(node_addr "$i")" \
      -o "PidFile=$DIR/sshd-$(node_name "$i").pid" -E "$DIR/log/sshd-$(node_name "$i").log"
  done
}

write_conf() {  # write_conf N: slurm.conf for N namespaced nodes, or for this host when N is 1
  local n=$1 host cpus mem i nodes
  host=$(hostname -s); cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 / n ))
  {
    cat <<CONF
ClusterName=local
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/ctld.log
SlurmdLogFile=$DIR/log/d-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
CONF
    if [ "$n" -eq 1 ]; then
      echo "SlurmctldHost=$host"
      echo "NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN"
      nodes=$host
    else
      echo "SlurmctldHost=$host($NET.1)"
      for i in $(seq "$n"); do
        echo "NodeName=$(node_name "$i") NodeAddr=$(node_addr "$i") NodeHostname=$(node_name "$i") CPUs=$cpus RealMemory=$mem State=UNKNOWN"
      done
      nodes="aria-n[1-$n]"
    fi
    echo "PartitionName=debug Nodes=$nodes Default=YES MaxTime=INFINITE State=UP"
  } > "$CONF"
}

start() {
  command -v slurmctld >/dev/null || { echo "slurm_local: slurm is not installed: run $0 install" >&2; exit 2; }
  local n i
  n=$(node_count)
  if sinfo -h >/dev/null 2>&1 && [ "$(sinfo -h -N -o '%N %T' 2>/dev/null | grep -c ' idle')" -ge "$n" ]; then
    echo "slurm_local: already up ($(sinfo -h -N -o %N | sort -u | tr '\n' ' '))"; return 0
  fi
  mkdir -p "$DIR"/{state,spool,log} /run/munge /etc/slurm
  [ -f /etc/munge/munge.key ] || mungekey -c
  chown munge:munge /etc/munge/munge.key /run/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    munged --force
  fi
  write_conf "$n"
  alive "$DIR/slurmctld.pid" || slurmctld
  if [ "$n" -eq 1 ]; then
    alive "$DIR/slurmd-$(hostname -s).pid" || slurmd
  else
    make_links "$n"
    for i in $(seq "$n"); do
      mkdir -p "$DIR/spool/$(node_name "$i")"
      alive "$DIR/slurmd-$(node_name "$i").pid" || on_node "$i" slurmd \
        || { echo "slurm_local: slurmd of $(node_name "$i") did not start; see $DIR/log/d-$(node_name "$i").log" >&2; exit 1; }
    done
    make_ssh "$n"
  fi
  for _ in $(seq 90); do
    if [ "$(sinfo -h -N -o '%N %T' 2>/dev/null | grep -c ' idle')" -ge "$n" ]; then
      echo "slurm_local: up ($n node(s): $(sinfo -h -N -o %N | sort -u | tr '\n' ' ')$(nproc) CPUs each, partition debug)"
      return 0
    fi
    sleep 1
  done
  echo "slurm_local: the node(s) did not become idle in 90 s; see $DIR/log" >&2
  exit 1
}

stop() {
  local pid name
  for pid in "$DIR"/slurmd-*.pid "$DIR"/sshd-*.pid "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  for _ in $(seq 20); do  # slurmd/sshd gone before their namespaces go
    local left=0
    for pid in "$DIR"/slurmd-*.pid "$DIR"/sshd-*.pid; do alive "$pid" && left=1; done
    [ $left = 0 ] && break
    sleep 0.5
  done
  if [ -f /run/munge/munged.pid ]; then kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true; fi
  if command -v ip >/dev/null; then
    for name in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^aria-n[0-9]*$' || true); do
      ip netns pids "$name" 2>/dev/null | xargs -r kill 2>/dev/null || true  # job steps left behind
      ip netns del "$name"
    done
    for name in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^aria-v[0-9]+$' || true); do
      ip link del "$name" 2>/dev/null || true
    done
    ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  fi
  grep -qF "$HOSTS_BEGIN" /etc/hosts 2>/dev/null && remove_hosts_block
  rm -f "$SSH_CLIENT_CONF" "$DIR"/slurmd-*.pid "$DIR"/sshd-*.pid
  return 0
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
