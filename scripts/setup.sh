#!/usr/bin/env bash
# Set up llmc in ./.venv on a fresh machine, then run the demo or the tests.
#
#   bash scripts/setup.sh demo          install, then `llmc train --demo` (about two minutes on 2 CPU cores)
#   bash scripts/setup.sh test [ARGS]   install, then the test suite (ARGS go to pytest)
#   bash scripts/setup.sh install       install only
#
# PyTorch is chosen for the machine before anything else pulls it in: with an NVIDIA GPU
# (nvidia-smi answers) the default PyPI build, which carries CUDA; without one a CPU-only
# build (a wheel already on disk when pip's find-links has one, else PyTorch's CPU index),
# instead of the multi-GB CUDA build an unpinned `torch` would download.
# Overrides: LLMC_PYTHON (interpreter for the venv, default python3),
#            LLMC_TORCH (pip requirement for torch, e.g. "torch==2.6.0"), LLMC_VENV (default .venv).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
action="${1:-install}"
[[ $# -gt 0 ]] && shift
case "$action" in
  install | demo | test) ;;
  *)
    echo "usage: bash scripts/setup.sh {install|demo|test} [pytest args]" >&2
    exit 2
    ;;
esac

python="${LLMC_PYTHON:-python3}"
venv="${LLMC_VENV:-.venv}"
cpu_torch="torch==2.13.0"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if ! command -v "$python" >/dev/null; then
  echo "setup: $python not found; install Python 3.10 or newer, or set LLMC_PYTHON=/path/to/python3." >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup: llmc needs Python 3.10 or newer ($python is $("$python" -V 2>&1)); set LLMC_PYTHON." >&2
  exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
  say "creating $venv with $("$python" -V 2>&1)"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

if "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  say "torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)') already installed"
elif [[ -n "${LLMC_TORCH:-}" ]]; then
  say "installing $LLMC_TORCH (LLMC_TORCH)"
  "${pip[@]}" "$LLMC_TORCH"
elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  say "NVIDIA GPU found: installing the CUDA build of torch"
  "${pip[@]}" "torch>=2.4"
elif "${pip[@]}" --no-index --no-deps "$cpu_torch" 2>/dev/null; then
  say "no GPU: installed $cpu_torch (CPU build) from a wheel on this machine"
  "${pip[@]}" "$cpu_torch" # its small dependencies, from the package index
else
  say "no GPU: installing the CPU build of torch from download.pytorch.org"
  "${pip[@]}" --retries 2 --timeout 30 "$cpu_torch" --index-url https://download.pytorch.org/whl/cpu \
    --extra-index-url https://pypi.org/simple
fi

say "installing llmc and its dependencies"
"${pip[@]}" -e ".[dev]"

case "$action" in
  install) say "done: activate with 'source $venv/bin/activate', then run 'llmc --help'" ;;
  demo) exec "$venv/bin/llmc" train --demo ;;
  test) exec "$venv/bin/python" -m pytest -q "$@" ;;
esac
