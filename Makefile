# The two commands of README.md. Both set everything up on a fresh machine first.
PY := .venv/bin/python
ARGS ?=

.PHONY: setup demo demo-quick test bench bench-reference compile-report compat

setup:
	bash scripts/setup.sh

# Main job: the real-data demo (Fashion-MNIST, EfficientNet-Lite0 + MiniLM features).
demo: setup
	$(PY) -m seda_fast demo $(ARGS)

demo-quick: setup
	$(PY) -m seda_fast demo --quick $(ARGS)

# Tests: CPU, Triton kernels under the interpreter; benchmarks run once each, untimed. The test
# files are shared among TEST_WORKERS processes (pytest-xdist; a file's tests stay together, so
# its module fixtures are built once); TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: setup
	TRITON_INTERPRET=1 $(PY) -m pytest tests benchmarks -q --benchmark-disable -n $(TEST_WORKERS) --dist loadfile $(ARGS)

bench: setup
	$(PY) -m pytest benchmarks $(ARGS)

# Refresh the committed CPU benchmark reference on purpose (benchmarks/results/bench_cpu.json and
# .md, speedup.png, roofline.png; README quotes them). Short rounds keep the JSON's samples small.
bench-reference: setup
	$(PY) -m pytest benchmarks -q --benchmark-json=benchmarks/results/bench_cpu.json \
		--benchmark-max-time=0.05 --benchmark-min-rounds=10 $(ARGS)
	$(PY) -m seda_fast bench report benchmarks/results/bench_cpu.json --update-reference

compile-report: setup
	$(PY) -m seda_fast compile-report

# The GPU image's versions (Python 3.12, torch 2.11, triton 3.6.0) on the CPU: kernel tests, sm_90a
# compile report, GPU-run dry run. Run after touching a kernel; too heavy for CI (~4 GB download).
compat:
	VENV=.venv-compat bash scripts/compat.sh $(ARGS)
