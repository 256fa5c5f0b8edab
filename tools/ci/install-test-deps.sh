#!/usr/bin/env bash
# Install everything the test suite uses on a fresh machine (the README's test command and .ci/run
# both start here): slimtok with its test extra (pytest, pytest-xdist), the trainers' readers the
# export tests check against, and (as root, on Debian) systemd-analyze, Slurm and libfaketime.
set -euo pipefail
cd "$(dirname "$0")/../.."
pip_install() { python3 -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install -e '.[test]'
# Trainer readers for tests/unit/test_export.py (megatron-core's IndexedDataset) and tests/unit/test_data.py
# (torch DataLoader). The CPU torch goes first and is named by its local version, so pip can never
# satisfy megatron-core's torch requirement with a CUDA build: where the CPU wheel is not in pip's
# find-links this line fails instead of downloading gigabytes of CUDA libraries.
pip_install 'torch==2.13.0+cpu'
pip_install 'megatron-core>=0.12'
# Object-store tests (tests/e2e/test_object_inputs.py, tests/unit/remote): moto's S3 server mode on
# 127.0.0.1 (it brings boto3, which the tests use to fill buckets; slimtok itself reads through obstore).
pip_install 'moto[server]==5.2.1'
# Operations tests: systemd-analyze verifies the units; a one-host Slurm cluster runs the sbatch
# scripts (tests/e2e/test_slurm.py starts it through tools/ci/start-slurm.sh when none is up, stops
# what it started when the run ends, and skips, saying why, where the daemons cannot start);
# libfaketime fakes a skewed host's clock for tests/e2e/test_clock_skew.py. This script installs
# only: it starts no daemon.
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        systemd munge slurmctld slurmd slurm-client libfaketime >/dev/null || echo "warning: could not install systemd/Slurm/libfaketime packages"
else
    echo "note: not root on Debian; systemd, Slurm and clock-skew tests will say why they skip"
fi
