#!/usr/bin/env bash
# The whole job on one machine (CPU or one GPU), from a fresh clone: set up .venv, prepare the built-in python-help
# text, pretrain the tiny model (a few minutes on 2 CPU cores), plot the curves, fine-tune it on the built-in
# python-help-order task (original or shuffled word order), export the checkpoint with its model card (README.md,
# the fine-tuning table included).
#   bash launch/quickstart.sh [hydra overrides for launch/pretrain.py ...]
# DATA (default data/python-help) and OUTPUTS (default outputs) choose where data and the run go.
set -euo pipefail
cd "$(dirname "$0")/.."
. launch/setup_env.sh ""   # no extras (and keeps this script's arguments from it)
export WANDB_MODE="${WANDB_MODE:-offline}"
DATA="${DATA:-data/python-help}"
OUTPUTS="${OUTPUTS:-outputs}"

python data_prep/prepare.py output="$DATA" max_seq_length=128 validation_fraction=0.05
python launch/pretrain.py experiment=quickstart data.path="$DATA" output_root="$OUTPUTS" "$@"
python launch/plot.py run="$OUTPUTS/quickstart"
python launch/finetune.py checkpoint="$OUTPUTS/quickstart" task=python-help-order logging.progress_bar=false
python launch/export.py checkpoint="$OUTPUTS/quickstart" output="$OUTPUTS/quickstart/export" format=all overwrite=true
