#!/usr/bin/env bash
# Start a one-host Slurm cluster (munged + slurmctld + slurmd on this machine) for
# tests/e2e/test_slurm.py, whose session fixture (tests/conftest.py) runs this when no cluster is up.
# Needs root and Debian's munge, slurmctld, slurmd and slurm-client packages
# (tools/ci/install-test-deps.sh installs them). Idempotent: a cluster that already answers is left alone.
# With --record FILE, appends "<daemon> <pid>" for each daemon this run started (none started, no
# line), so tools/ci/stop-slurm.sh FILE stops exactly those and never one that was already running.
# Writes /etc/slurm/slurm.conf and logs under /var/log/slurm-ci/.
set -euo pipefail

record=/dev/null
if [ "${1:-}" = "--record" ]; then record=$2; fi

# started NAME PIDFILE: note the daemon just started (it writes its pid file once it has forked).
started() {
    for _ in $(seq 100); do
        if [ -s "$2" ]; then echo "$1 $(cat "$2")" >> "$record"; return 0; fi
        sleep 0.1
    done
    echo "start-slurm: $1 wrote no $2" >&2; return 1
}

if scontrol ping 2>/dev/null | grep -q "is UP" && sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed|alloc"; then
    echo "start-slurm: a cluster is already up"; exit 0
fi
for tool in munged slurmctld slurmd sbatch; do
    command -v "$tool" >/dev/null || { echo "start-slurm: $tool is not installed" >&2; exit 1; }
done

host=$(hostname -s)
logs=/var/log/slurm-ci
mkdir -p "$logs" /var/spool/slurmctld /var/spool/slurmd /run/munge /etc/slurm
# The node's real CPUs and memory, as slurmd sees them, so the node registers without a mismatch.
node=$(slurmd -C | head -n 1)

# munge authenticates every Slurm message; the package created the key, make one if it did not.
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
if ! pgrep -u munge -x munged >/dev/null; then
    rm -f /run/munge/munged.pid
    runuser -u munge -- munged
    started munged /run/munge/munged.pid
fi

# Everything runs as root on one host: no cgroups or accounting daemon needed.
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=slimtok-ci
SlurmctldHost=${host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${logs}/slurmctld.log
SlurmdLogFile=${logs}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdTimeout=60
KillWait=30
MpiDefault=none
${node} State=UNKNOWN
PartitionName=ci Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF

if ! pgrep -x slurmctld >/dev/null; then rm -f /run/slurmctld.pid; slurmctld; started slurmctld /run/slurmctld.pid; fi
if ! pgrep -x slurmd >/dev/null; then rm -f /run/slurmd.pid; slurmd; started slurmd /run/slurmd.pid; fi

for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE "^(idle|mixed|allocated)"; then
        echo "start-slurm: cluster up on ${host}"; sinfo; exit 0
    fi
    sleep 1
done
echo "start-slurm: the node did not become idle; logs follow" >&2
sinfo >&2 || true
tail -n 30 "${logs}/slurmctld.log" "${logs}/slurmd.log" >&2 || true
exit 1
