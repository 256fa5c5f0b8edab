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
# torchdata's StatefulDataLoader for tests/unit/data/test_data_loader.py: slimtok.data's documented way to resume
# mid-epoch with DataLoader workers (the test checks batch N+1 after a resume with 0, 2 and 3 workers).
pip_install 'torchdata==0.11.0'
# datatrove's DatatroveFolderDataset reads `slimtok export datatrove` back in tests/unit/test_export.py
# (the .ds/.ds.index/.ds.metadata layout nanotron also reads); pinned, it installs with the CPU torch above.
pip_install 'datatrove==0.10.1'
# litdata's StreamingDataset with TokensLoader reads `slimtok export litdata` back in tests/unit/test_export.py.
# Without its torchvision: the only torchvision wheel pip resolves for torch 2.13.0+cpu (0.28.0) fails at import
# (operator torchvision::nms does not exist) and would break every later import of torchvision; litdata's
# token streaming never imports it. Its other needs, pinned:
pip_install --no-deps 'litdata==0.2.76'
pip_install 'lightning-utilities==0.15.3' 'obstore==0.12.1' 'tifffile==2026.3.3' 'boto3==1.43.11' \
    'filelock==4.3.2' 'requests==2.34.2' 'urllib3==2.7.0'
# The status page's browser tests (tests/e2e/test_status_page.py) drive Debian's Chromium over its
# DevTools protocol with websocket-client (pure Python, no browser download of its own).
pip_install 'websocket-client==1.9.2'
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium >/dev/null || echo "warning: could not install chromium; the status page's browser tests will skip"
fi
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
