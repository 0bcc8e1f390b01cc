#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, to try `hydra/launcher=slurm` (and to test it) before a real cluster.
#
#   sudo scripts/local_slurm.sh up       install the Debian packages if missing, then start munged, MariaDB,
#                                        slurmdbd, slurmctld and slurmd; does nothing for a daemon already running
#   sudo scripts/local_slurm.sh status   each daemon, the node and the queue; exit status 1 unless all are up
#   sudo scripts/local_slurm.sh down     cancel the cluster's jobs and stop the daemons this script started
#                                        (found by their pid files), nothing else
#
# The node has this machine's CPUs and 80% of its memory, in one partition, `cpu`. Accounting (sacct, which
# submitit needs) goes through slurmdbd into MariaDB on 127.0.0.1:$LOCAL_SLURM_DB_PORT. Pid files, logs (one per
# daemon), the database and Slurm's state live in $LOCAL_SLURM_DIR; the configs in /etc/slurm.
set -euo pipefail

STATE=${LOCAL_SLURM_DIR:-/var/tmp/rifle-bench-slurm}
DB_PORT=${LOCAL_SLURM_DB_PORT:-3406}
CLUSTER=rifle-local
ACCOUNT=rifle-bench
PARTITION=cpu
MARKER="# Written by rifle-bench's scripts/local_slurm.sh"
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # in start order; `down` stops them in reverse
RUN=$STATE/run LOG=$STATE/log MUNGE_SOCKET=$STATE/munge/munge.socket DB_SOCKET=$STATE/mysql/mariadb.sock
NODE=$(hostname -s)

say() { echo "local_slurm: $*"; }
die() { echo "local_slurm: error: $*" >&2; exit 1; }

pid_of() {  # the pid of a daemon this script started, if it still runs
  local pid_file=$RUN/$1.pid pid
  [[ -s $pid_file ]] || return 1
  pid=$(<"$pid_file")
  [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$1" ]] || return 1
  echo "$pid"
}

wait_for() {  # wait_for DAEMON SECONDS COMMAND...: poll COMMAND until it succeeds; if DAEMON dies or the time
  # runs out, show the end of its log and fail
  local daemon=$1 deadline=$((SECONDS + $2)) started=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)) || { ((SECONDS - started > 10)) && ! pid_of "$daemon" >/dev/null; }; then
      echo "local_slurm: error: $daemon did not come up (it stopped, or $* kept failing); the end of $LOG/$daemon.log:" >&2
      tail -n 30 "$LOG/$daemon.log" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
}

install_packages() {
  local missing=() package
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]}, and no apt-get to install them (Debian/Ubuntu only)"
  say "installing ${missing[*]}"
  apt-get update -q >"$LOG/apt.log" 2>&1 || { tail -n 20 "$LOG/apt.log" >&2; die "apt-get update failed"; }
  # Keep the packages' own service scripts from starting system-wide daemons: this script runs its own.
  local created_policy=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && created_policy=1
  fi
  local status=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$LOG/apt.log" 2>&1 \
    || status=$?
  [[ -z $created_policy ]] || rm -f /usr/sbin/policy-rc.d
  ((status == 0)) || { tail -n 20 "$LOG/apt.log" >&2; die "apt-get install failed (log: $LOG/apt.log)"; }
}

write_config() {  # write_config PATH OWNER MODE < CONTENT; never overwrites a file this script did not write
  local path=$1 owner=$2 mode=$3 temporary
  if [[ -e $path ]] && ! grep -qF "$MARKER" "$path"; then
    die "$path exists and was not written by this script: this machine has a Slurm set-up of its own; use it"
  fi
  temporary=$(mktemp "$path.XXXXXX")
  { echo "$MARKER"; cat; } >"$temporary"
  chown "$owner" "$temporary"
  chmod "$mode" "$temporary"
  mv "$temporary" "$path"
}

refuse_foreign() {  # a daemon of the same name that this script did not start means another Slurm is here
  local name=$1 other
  pid_of "$name" >/dev/null && return 0
  other=$(pgrep -x "$name" | head -n 1 || true)
  [[ -z $other ]] || die "a $name that this script did not start is running (pid $other): use that Slurm, or stop it"
}

prepare_directories() {
  mkdir -p "$STATE" "$LOG" "$RUN" "$STATE/munge" "$STATE/slurmctld" "$STATE/slurmd" /etc/slurm
  chmod 755 "$STATE" "$LOG"
  chmod 1777 "$RUN"  # each daemon writes its pid file there under its own user
  chown munge:munge "$STATE/munge"
  chmod 755 "$STATE/munge"
  chown slurm:slurm "$STATE/slurmctld"
  local name owner
  for name in munged:munge mariadbd:mysql slurmdbd:slurm slurmctld:slurm slurmd:root; do
    owner=${name#*:}
    touch "$LOG/${name%:*}.log"
    chown "$owner:" "$LOG/${name%:*}.log"
  done
}

start_munged() {
  pid_of munged >/dev/null && return 0
  if [[ ! -s /etc/munge/munge.key ]]; then
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
  fi
  runuser -u munge -- munged --num-threads=10 --socket="$MUNGE_SOCKET" --pid-file="$RUN/munged.pid" \
    --log-file="$LOG/munged.log" --seed-file="$STATE/munge/munged.seed"
  wait_for munged 20 munge --socket="$MUNGE_SOCKET" --no-input
}

database_password() {
  local file=$STATE/database-password
  if [[ ! -s $file ]]; then
    (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$file")
  fi
  cat "$file"
}

sql() { mariadb --no-defaults --socket="$DB_SOCKET" --user=root --batch --skip-column-names "$@"; }

start_mariadb() {
  pid_of mariadbd >/dev/null && return 0
  if [[ ! -d $STATE/mysql/mysql ]]; then
    mkdir -p "$STATE/mysql" && chown mysql:mysql "$STATE/mysql"
    mariadb-install-db --no-defaults --user=mysql --datadir="$STATE/mysql" --skip-test-db \
      --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 \
      || { tail -n 20 "$LOG/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
  fi
  setsid mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql" --socket="$DB_SOCKET" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$RUN/mariadbd.pid" --log-error="$LOG/mariadbd.log" \
    --innodb-buffer-pool-size=64M --innodb-log-file-size=16M </dev/null >/dev/null 2>&1 &
  wait_for mariadbd 60 sql -e "SELECT 1"
  local password
  password=$(database_password)
  sql <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$password';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL
}

write_slurm_configs() {
  local cpus real_memory
  # slurmd -C: the node line Slurm itself detects (CPUs, sockets, cores, threads, memory in MB).
  cpus=$(slurmd -C | head -n 1 | grep -o 'CPUs=.* ThreadsPerCore=[0-9]*')
  real_memory=$(($(slurmd -C | head -n 1 | grep -o 'RealMemory=[0-9]*' | cut -d= -f2) * 8 / 10))
  write_config /etc/slurm/slurmdbd.conf slurm:slurm 600 <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=$NODE
DbdAddr=127.0.0.1
SlurmUser=slurm
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(database_password)
StorageLoc=slurm_acct_db
EOF
  write_config /etc/slurm/slurm.conf root:root 644 <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=10,socket=$MUNGE_SOCKET
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
# For slurmdbd connections this names the munge socket.
AccountingStoragePass=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# A job still running this long after SIGTERM (submitit's jobs ignore it) is killed (default 30 s).
KillWait=3
NodeName=$NODE NodeAddr=127.0.0.1 $cpus RealMemory=$real_memory State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_slurmdbd() {
  pid_of slurmdbd >/dev/null || slurmdbd
  wait_for slurmdbd 60 sacctmgr --noheader list cluster
  sacctmgr --noheader --parsable2 list cluster format=cluster | grep -qx "$CLUSTER" \
    || sacctmgr --immediate add cluster "$CLUSTER" >/dev/null
  sacctmgr --noheader --parsable2 list account format=account | grep -qx "$ACCOUNT" \
    || sacctmgr --immediate add account "$ACCOUNT" cluster="$CLUSTER" description=rifle-bench organization=local >/dev/null
  local user
  for user in root ${SUDO_USER:-}; do
    sacctmgr --noheader --parsable2 list user format=user | grep -qx "$user" \
      || sacctmgr --immediate add user "$user" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
  done
}

node_is_usable() { sinfo --noheader --nodes="$NODE" --format=%T | grep -Eq '^(idle|mixed|allocated)'; }

start_slurm() {
  pid_of slurmctld >/dev/null || slurmctld
  wait_for slurmctld 60 scontrol ping
  pid_of slurmd >/dev/null || slurmd
  # A node that was down when slurmctld last ran comes back only when told to.
  sleep 1
  sinfo --noheader --nodes="$NODE" --format=%T | grep -Eq '^(down|drain)' \
    && scontrol update nodename="$NODE" state=resume 2>/dev/null || true
  wait_for slurmd 60 node_is_usable
}

up() {
  [[ $EUID -eq 0 ]] || die "run it as root (sudo $0 up): it installs packages and starts system daemons"
  mkdir -p "$LOG"
  install_packages
  id munge >/dev/null 2>&1 && id slurm >/dev/null 2>&1 && id mysql >/dev/null 2>&1 \
    || die "the users munge, slurm and mysql should exist once the packages are installed"
  for daemon in slurmdbd slurmctld slurmd; do refuse_foreign "$daemon"; done
  prepare_directories
  start_munged
  start_mariadb
  write_slurm_configs
  start_slurmdbd
  start_slurm
  say "up: cluster $CLUSTER, partition $PARTITION, node $NODE ($(sinfo --noheader --nodes="$NODE" --format='%c CPUs, %m MB')); logs in $LOG"
}

down() {
  [[ $EUID -eq 0 ]] || die "run it as root (sudo $0 down)"
  if pid_of slurmctld >/dev/null; then
    local jobs
    jobs=$(squeue --noheader --format=%A 2>/dev/null | sort -u || true)
    if [[ -n $jobs ]]; then
      say "cancelling the cluster's jobs: $(echo $jobs)"
      # shellcheck disable=SC2086
      scancel $jobs || true
      local deadline=$((SECONDS + 20))
      while [[ -n $(squeue --noheader --format=%A 2>/dev/null) ]] && ((SECONDS < deadline)); do sleep 0.5; done
    fi
  fi
  local index daemon pid
  for ((index = ${#DAEMONS[@]} - 1; index >= 0; index--)); do
    daemon=${DAEMONS[index]}
    if pid=$(pid_of "$daemon"); then
      kill -TERM "$pid"
      local deadline=$((SECONDS + 30))
      while [[ -d /proc/$pid ]] && ((SECONDS < deadline)); do sleep 0.2; done
      [[ ! -d /proc/$pid ]] || kill -KILL "$pid" 2>/dev/null || true
      say "stopped $daemon (pid $pid)"
    fi
    rm -f "$RUN/$daemon.pid"
  done
}

status() {
  local all_up=0 daemon pid
  for daemon in "${DAEMONS[@]}"; do
    if pid=$(pid_of "$daemon"); then
      echo "$daemon: running (pid $pid), log $LOG/$daemon.log"
    else
      echo "$daemon: not running"
      all_up=1
    fi
  done
  if pid_of slurmctld >/dev/null; then
    sinfo || all_up=1
    squeue || all_up=1
  fi
  return $all_up
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
