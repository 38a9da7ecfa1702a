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
  else  # PyPI's x86_64 Linux torch is the CUDA build: take the CPU one from PyTorch's index
    "${pip[@]}" --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple \
      torch==2.13.0 || {
      echo "warning: PyTorch's CPU index is unreachable; installing PyPI's torch (the CUDA build, several GB)" >&2
      "${pip[@]}" torch==2.13.0
    }
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
