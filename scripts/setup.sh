#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtualenv in .venv with seda_fast (editable) and its
# dev/bench/data extras. torch is installed first from the CPU wheel (constraints-cpu.txt; from
# /opt/wheels where that exists, else PyTorch's CPU index) so that no step pulls a multi-GB CUDA
# build. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.seda_fast_setup
if [ -f "$stamp" ] && [ "$stamp" -nt setup.py ] && [ "$stamp" -nt constraints-cpu.txt ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install -q -c constraints-cpu.txt)
if [ -d /opt/wheels ]; then pip+=(--find-links /opt/wheels); fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -d /opt/wheels ]; then  # a local wheel directory (the CI image's) holds the CPU wheel
    "${pip[@]}" torch==2.13.0
  else  # PyPI's x86_64 Linux torch is the CUDA build: offer PyTorch's CPU index beside the user's
    # index (its 2.13.0+cpu outranks PyPI's 2.13.0), then say which build came
    "${pip[@]}" --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0
    if .venv/bin/python -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
      echo "warning: pip installed a CUDA build of torch (PyTorch's CPU index gave no wheel: unreachable, or" \
           "none for this Python); it runs on the CPU too, at several GB" >&2
    fi
  fi
fi
"${pip[@]}" -e ".[dev,bench,data]"
# The demo and the data tests fetch Fashion-MNIST with `apt-get download` (no root needed), which
# needs apt's package lists; refresh them once when they lack the package and we may.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-cache >/dev/null \
   && ! apt-cache show dataset-fashion-mnist >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq || echo "warning: apt-get update failed; the Fashion-MNIST download may fail" >&2
fi
touch "$stamp"
