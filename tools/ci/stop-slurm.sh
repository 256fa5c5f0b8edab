#!/usr/bin/env bash
# Stop the Slurm daemons tools/ci/start-slurm.sh --record FILE started, and only those: FILE holds
# one "<daemon> <pid>" line per daemon it started. A pid that now belongs to another program (the
# daemon exited and the number was reused) is left alone. Daemons go in reverse start order
# (slurmd, slurmctld, then munged, which the other two use to authenticate).
set -euo pipefail
record=${1:?usage: stop-slurm.sh FILE (written by start-slurm.sh --record FILE)}
[ -s "$record" ] || exit 0

tac "$record" | while read -r name pid; do
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
        echo "stop-slurm: $name (pid $pid) is no longer running"; continue
    fi
    kill -TERM "$pid"
    for _ in $(seq 150); do  # slurmctld saves its state on the way out; give it up to 15 s
        [ -d "/proc/$pid" ] || break
        sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
        echo "stop-slurm: $name (pid $pid) ignored SIGTERM for 15 s; killing it"; kill -KILL "$pid"
    fi
    echo "stop-slurm: stopped $name (pid $pid), which this run started"
done
