#!/usr/bin/env bash
# A single-node SLURM (controller and compute daemon on this machine), for the
# tests and for trying xtec's batch jobs by hand.
#
#   tests/start_slurm.sh start DIR        install if missing, configure, start; prints the
#                                         line to source:  export SLURM_CONF=DIR/slurm.conf
#   tests/start_slurm.sh stop DIR         cancel the jobs left, stop the daemons it started
#   tests/start_slurm.sh run DIR -- CMD   start, run CMD with SLURM_CONF set, stop
#
# Everything (config, state, logs, munge key and socket, pid files) lives in DIR, and
# the ports are picked free, so it never touches a SLURM already on the machine.
# Needs root (the daemons run as root; apt-get installs slurm-wlm and munge from
# Debian when they are missing).  Exit status 3 with a one-line reason on stderr when
# it cannot run here (not root, no apt-get, install failed): the pytest fixture then
# skips with that reason.
#
# No cgroups and no systemd are needed: proctrack/linuxproc follows a job's processes
# through /proc, task/none binds nothing, and memory is accounted, not enforced.
set -euo pipefail

die_skip() { echo "start_slurm: $*" >&2; exit 3; }
die() { echo "start_slurm: $*" >&2; exit 1; }

need_packages() {
    local missing=()
    for exe in slurmctld slurmd sinfo sbatch munged; do
        command -v "$exe" >/dev/null 2>&1 || missing+=("$exe")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die_skip "not root, and ${missing[*]} missing (apt-get install slurm-wlm munge needs root)"
    command -v apt-get >/dev/null 2>&1 || die_skip "${missing[*]} missing and no apt-get here"
    echo "start_slurm: installing slurm-wlm and munge (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have no package lists yet: update once, only if needed.
    if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >"$1/apt.log" 2>&1; then
        apt-get update -q >>"$1/apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends slurm-wlm munge >>"$1/apt.log" 2>&1 \
            || die_skip "apt-get install slurm-wlm munge failed (see $1/apt.log)"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_config() {
    local dir=$1 host cpus mem_mb
    host=$(hostname -s)
    # Not plain nproc: it honours OMP_NUM_THREADS, which a test process may have set to 1.
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
    # Leave a GiB to the system; jobs ask for their memory and SLURM accounts it.
    mem_mb=$(awk '/MemTotal/ {m=int($2/1024)-1024; if (m<1024) m=1024; print m}' /proc/meminfo)
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    cat >"$dir/slurm.conf" <<EOF
ClusterName=xtec-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Fast turnaround for tests: schedule at once (KillWait stays at its 30 s default).
SchedulerParameters=sched_min_interval=0
MinJobAge=600
DefMemPerCPU=1024
SlurmdTimeout=30
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
# OverSubscribe: a batch job that drives Dask and the worker jobs it submits share the
# few cores of a test machine (a real partition gives each its own).
PartitionName=debug Nodes=ALL Default=YES DefaultTime=00:10:00 MaxTime=01:00:00 OverSubscribe=FORCE:4 State=UP
EOF
}

start() {
    local dir=$1
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    need_packages "$dir"
    [ "$(id -u)" -eq 0 ] || die_skip "not root (slurmd runs jobs as their user and must be root)"
    write_config "$dir"
    chmod 700 "$dir"
    # A key of our own: munged refuses keys that others can read.
    head -c 1024 /dev/urandom >"$dir/munge.key"
    chmod 400 "$dir/munge.key"
    munged --force --socket="$dir/munge.sock" --key-file="$dir/munge.key" \
        --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munged.seed" || die "munged did not start (see $dir/log/munged.log)"
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -i || die "slurmctld did not start (see $dir/log/slurmctld.log)"
    slurmd || die "slurmd did not start (see $dir/log/slurmd.log)"
    local state=""
    for _ in $(seq 1 120); do
        state=$(sinfo -h -o %t 2>/dev/null || true)
        [ "$state" = "idle" ] && break
        sleep 0.25
    done
    if [ "$state" != "idle" ]; then
        tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
        stop "$dir"
        die "the node did not come up idle within 30 s (sinfo: '${state:-nothing}')"
    fi
    echo "export SLURM_CONF=$dir/slurm.conf"
}

stop_pidfile() {
    local pidfile=$1 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

kill_leftover_steps() {
    # Job processes still there once the daemons are gone (a job still being killed):
    # the slurmstepd processes of this cluster (their environment names its slurm.conf)
    # and everything under them.  Nothing else is touched.
    local dir=$1 pid pids=()
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        case "$( { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null)" in
            slurmstepd*) ;;
            *) continue ;;
        esac
        { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null \
            | grep -qx "SLURM_CONF=$dir/slurm.conf" || continue
        pids+=("$pid" $(descendants "$pid"))
    done
    [ ${#pids[@]} -eq 0 ] && return 0
    echo "start_slurm: killing leftover job processes ${pids[*]}" >&2
    kill -CONT "${pids[@]}" 2>/dev/null || true
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

stop() {
    local dir=$1
    export SLURM_CONF=$dir/slurm.conf
    if [ -f "$dir/slurmctld.pid" ]; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        # shellcheck disable=SC2086  # one argument per job id
        [ -z "$jobs" ] || scancel $jobs 2>/dev/null || true
        # A cancelled job gets SIGTERM, then SIGKILL KillWait (30 s) later: let slurmd see
        # it through before it goes.
        for _ in $(seq 1 180); do
            [ -z "$(squeue -h 2>/dev/null)" ] && break
            sleep 0.25
        done
    fi
    stop_pidfile "$dir/slurmd.pid"
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munged.pid"
    kill_leftover_steps "$dir"
}

case "${1:-}" in
    start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$(cd "$2" && pwd)" ;;
    run)
        [ $# -ge 4 ] && [ "$3" = "--" ] || die "usage: $0 run DIR -- CMD..."
        dir=$2; shift 3
        start "$dir" >/dev/null
        dir=$(cd "$dir" && pwd)
        trap 'stop "$dir"' EXIT
        SLURM_CONF=$dir/slurm.conf "$@"
        ;;
    *) die "usage: $0 start DIR | stop DIR | run DIR -- CMD..." ;;
esac
