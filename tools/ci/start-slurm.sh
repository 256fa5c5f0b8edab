#!/usr/bin/env bash
# Start a one-host Slurm cluster (munged + slurmctld + slurmd on this machine) for
# tests/test_slurm.py. Needs root and Debian's munge, slurmctld, slurmd and slurm-client packages
# (.ci/run installs them). Idempotent: a cluster that already answers is left alone.
# Writes /etc/slurm/slurm.conf and logs under /var/log/slurm-ci/.
set -euo pipefail

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
    runuser -u munge -- munged
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

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

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
