#!/bin/bash
# Without Slurm: Open MPI's mpirun starts one `slimtok tokenize` per host of a hostfile; each reads
# its index from OMPI_COMM_WORLD_RANK and the count from OMPI_COMM_WORLD_SIZE (PMI_RANK/PMI_SIZE
# under MPICH's hydra). slimtok uses no MPI calls, only these variables.
#
#   tools/slurm/tokenize-mpirun.sh hosts.txt /shared/tok/manifests/slimpajama/manifest.jsonl \
#       /shared/tok/slimpajama-qwen3 /shared/tokenizers/qwen3
# hosts.txt: one host per line with "slots=1".
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: $0 HOSTFILE MANIFEST OUTPUT_ROOT TOKENIZER [tokenize options...]" >&2
    exit 2
fi
hostfile=$1 manifest=$2 root=$3 tokenizer=$4
shift 4
nodes=$(grep -cv '^\s*\(#\|$\)' "$hostfile")

# ppr:1:node = one process per node; -x passes PATH so every node finds the same slimtok.
exec mpirun -np "$nodes" --hostfile "$hostfile" --map-by ppr:1:node --bind-to none -x PATH \
    slimtok tokenize --manifest "$manifest" --output-root "$root" --tokenizer "$tokenizer" "$@"
