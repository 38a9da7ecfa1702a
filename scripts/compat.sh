#!/usr/bin/env bash
# `make compat`: the GPU image's versions on this CPU machine. A venv in .venv-compat with
# Python 3.12, torch 2.11.0 (PyPI's CUDA build; it runs on the CPU), triton 3.6.0 and numpy < 2.4
# (triton 3.6.0's interpreter breaks with numpy >= 2.4; the GPU image's numpy 2.5 never runs the
# interpreter). It runs the kernel tests under the interpreter, the sm_90a compile report and the
# GPU run's dry run there, so "zero spills" and "compiles" are checked against the GPU's own
# compiler. Downloads ~4 GB the first time; too heavy for CI. Run it after touching a kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${COMPAT_PYTHON:-}
if [ -z "$PY" ]; then  # the first that runs (a pyenv shim can exist and still refuse to run)
  for candidate in python3.12 python3; do
    if "$candidate" -c "" 2>/dev/null; then PY=$candidate; break; fi
  done
  if [ -z "$PY" ]; then
    echo "error: neither python3.12 nor python3 runs here; set COMPAT_PYTHON=/path/to/python3.12" >&2
    exit 1
  fi
fi
if ! "$PY" -c "import sys; sys.exit(sys.version_info[:2] != (3, 12))"; then
  echo "warning: $PY is not Python 3.12, the GPU image's; set COMPAT_PYTHON to a 3.12" >&2
fi
VENV=${VENV:-.venv-compat}
stamp=$VENV/.seda_fast_compat
if [ ! -f "$stamp" ]; then
  [ -x $VENV/bin/python ] || "$PY" -m venv $VENV
  $VENV/bin/python -m pip install -q torch==2.11.0 triton==3.6.0 'numpy<2.4' einops tqdm pytest \
    pytest-benchmark hypothesis matplotlib
  $VENV/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  touch "$stamp"
fi
$VENV/bin/python -c "import sys, torch, triton, numpy; print('compat venv: python', sys.version.split()[0], \
'torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
# kernel tests (interpreter), the compile report's tests, the GPU run's own tests
TRITON_INTERPRET=1 $VENV/bin/python -m pytest -q -p no:cacheprovider --benchmark-disable \
  tests/ops tests/core/test_triton_inference.py tests/core/test_triton_training.py tests/core/test_float64.py \
  tests/core/test_integration.py tests/tools/test_cost_model.py tests/tools/test_compile_report.py \
  tests/tools/test_gpu_check.py "$@"
$VENV/bin/python -m seda_fast.tools.compile_report
$VENV/bin/python benchmarks/gpu_check.py --dry-run "${TMPDIR:-/tmp}/seda_fast_compat_gpu_check"
