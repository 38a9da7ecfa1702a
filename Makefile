# The two commands of README.md. Both set everything up on a fresh machine first.
PY := .venv/bin/python
ARGS ?=

.PHONY: setup demo demo-quick test bench compile-report

setup:
	bash scripts/setup.sh

# Main job: the real-data demo (Fashion-MNIST, EfficientNet-Lite0 + MiniLM features).
demo: setup
	$(PY) -m seda_fast demo $(ARGS)

demo-quick: setup
	$(PY) -m seda_fast demo --quick $(ARGS)

# Tests: CPU, Triton kernels under the interpreter; benchmarks run once each, untimed.
test: setup
	TRITON_INTERPRET=1 $(PY) -m pytest tests benchmarks -q --benchmark-disable $(ARGS)

bench: setup
	$(PY) -m pytest benchmarks $(ARGS)

compile-report: setup
	$(PY) -m seda_fast.compile_report
