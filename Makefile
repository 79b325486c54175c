# Two commands do all the set-up: `make run` (the main job) and `make test`.
# Each creates .venv on first use and installs tvmsep with its pinned stack.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench aarch64 clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/tvmsep run --network mobilenet_v1

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

# An emulated aarch64 machine for tests/test_aarch64.py (root: it apt-installs the cross
# compiler and qemu-user); without it those tests skip.
aarch64: .aarch64/.installed
.aarch64/.installed: scripts/aarch64-emulation.sh pyproject.toml $(BIN)/.installed
	PYTHON=$(BIN)/python scripts/aarch64-emulation.sh .aarch64

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/peers.py

clean:
	rm -rf $(VENV) .aarch64 .pytest_cache .hypothesis
