#!/usr/bin/env bash
# The test command of the README: sets up .venv (first run only) and runs the whole suite on CPU.
# GPU tests run only where CUDA is available. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
. launch/setup_env.sh dev
export DS_ACCELERATOR="${DS_ACCELERATOR:-$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
export WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Test files run side by side, one worker per core (longest first, see conftest.py); TEST_WORKERS=0 runs them in
# this process, one after another.
exec python -m pytest -n "${TEST_WORKERS:-auto}" --dist loadfile --no-loadscope-reorder --durations=25 "$@"
