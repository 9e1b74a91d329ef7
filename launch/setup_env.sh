#!/usr/bin/env bash
# Create (once) and activate the project's virtual environment in .venv, and install the project into it.
# Source it: `. launch/setup_env.sh [extras]` (e.g. `dev`). An already active virtual environment is used as it is,
# with the project installed into it once (and again whenever pyproject.toml changes).
# TORCH_SPEC picks the torch build: the default torch==2.13.0 is a CPU build on CPU-only machines here and the
# regular (CUDA) wheel elsewhere; an unpinned torch would pull a multi-GB CUDA build onto CPU machines.
_extras="${1:-}"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck source=/dev/null
  . .venv/bin/activate
fi
_marker="$VIRTUAL_ENV/.deberta_pretrain-installed${_extras:+-$_extras}"
_up_to_date() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ]; }
_done=""
_up_to_date "$_marker" && _done=1
if [ -z "$_extras" ]; then  # an install with extras includes the plain one
  for _m in "$VIRTUAL_ENV"/.deberta_pretrain-installed-*; do _up_to_date "$_m" && _done=1; done
fi
if [ -z "$_done" ]; then
  python -m pip install -q --upgrade pip
  # shellcheck disable=SC2086  # TORCH_SPEC may hold several words (e.g. an --index-url)
  python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
  # shellcheck disable=SC2086
  python -m pip install -q ${TORCH_SPEC:-torch==2.13.0} -e ".${_extras:+[$_extras]}"
  touch "$_marker"
fi
unset _extras _marker _done _m
unset -f _up_to_date
