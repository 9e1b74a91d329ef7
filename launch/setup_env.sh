#!/usr/bin/env bash
# Create (once) and activate the project's virtual environment in .venv, and install the project into it.
# Source it: `. launch/setup_env.sh [extras]`. Skips everything when a virtual environment is already active.
# TORCH_SPEC picks the torch build: the default torch==2.13.0 is a CPU build on CPU-only machines here and the
# regular (CUDA) wheel elsewhere; an unpinned torch would pull a multi-GB CUDA build onto CPU machines.
_extras="${1:-}"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  . .venv/bin/activate
fi
_marker=".venv/.installed${_extras:+-$_extras}"
if [ ! -f "$_marker" ] || [ pyproject.toml -nt "$_marker" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" -e ".${_extras:+[$_extras]}"
  [ -d .venv ] && touch "$_marker"
fi
unset _extras _marker
