#!/usr/bin/env bash
# One node of a SLURM job (started by pretrain.sbatch through srun, once per node): the per-node launcher for this
# node's GPUs, with the node rank and master address taken from SLURM's variables.
set -euo pipefail
# shellcheck source=/dev/null
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
: "${MASTER_ADDR:?}" "${MASTER_PORT:?}" "${GPUS_PER_NODE:?}" "${SLURM_NODEID:?}" "${SLURM_NNODES:?}"
case "${LAUNCHER:-torchrun}" in
  torchrun)
    exec torchrun --nnodes "$SLURM_NNODES" --node_rank "$SLURM_NODEID" --nproc_per_node "$GPUS_PER_NODE" \
      --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" launch/pretrain.py "$@" ;;
  deepspeed)
    # `deepspeed --no_ssh` needs a hostfile naming every node, even though it starts this node's processes only.
    hostfile="${TMPDIR:-/tmp}/deberta-hostfile-${SLURM_JOB_ID:-0}-$SLURM_NODEID"
    scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/\$/ slots=$GPUS_PER_NODE/" > "$hostfile"
    exec deepspeed --hostfile "$hostfile" --no_ssh --node_rank "$SLURM_NODEID" --num_nodes "$SLURM_NNODES" \
      --num_gpus "$GPUS_PER_NODE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
      launch/pretrain.py "$@" ;;
  *)
    echo "error: LAUNCHER must be torchrun or deepspeed, got ${LAUNCHER}" >&2
    exit 2 ;;
esac
