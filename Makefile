# corra's everyday commands. Works from a clean clone on Debian 12 with python3 on PATH;
# as root it installs the Debian packages it needs, otherwise it says which ones are missing.
#
#   make run                  corra run examples/quickstart.toml (state in ./.corra)
#   make test                 ruff (lint + format check) and pytest
#   make bench SUITE=kernel   a benchmark suite; writes bench-$(SUITE).json
#   make clean                remove the venv and caches

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUITE ?= kernel
PYTEST_ARGS ?=
BENCH_ARGS ?=

# Debian packages the tests need (sshd, Slurm ... as the suites grow).
SYSTEM_PACKAGES ?= openssh-server openssh-client slurm-wlm munge
# Debian packages needed to create the venv itself (Debian's python3 has no ensurepip without it).
VENV_SYSTEM_PACKAGES ?= python3-venv

# Installs the Debian packages named in $(1) that `dpkg -s` says are missing: as root with
# apt-get, `apt-get update` once, then install; otherwise name them and fail.
define apt_install
missing=(); \
for package in $(1); do \
	dpkg -s "$$package" >/dev/null 2>&1 || missing+=("$$package"); \
done; \
if [ $${#missing[@]} -gt 0 ]; then \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages: $${missing[*]}"; \
		apt-get update; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$${missing[@]}"; \
	else \
		echo "error: missing Debian packages: $${missing[*]} (run as root, or install them)" >&2; \
		exit 1; \
	fi; \
fi
endef

.PHONY: run test lint pytest bench system-deps kube-build venv clean

# The venv's python is the marker that the venv exists; the stamps below record what was
# installed into it, so a second `make test` installs nothing unless pyproject.toml changed
# (or corra/__init__.py appeared: before it exists setuptools finds no package to install).
$(BIN)/python:
	@if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
		$(call apt_install,$(VENV_SYSTEM_PACKAGES)); \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per extra: .installed-base is `pip install -e .`, .installed-test is '.[test]', ...
$(VENV)/.installed-%: pyproject.toml $(wildcard corra/__init__.py) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.$(if $(filter base,$*),,[$*])'
	@touch $@

venv: $(VENV)/.installed-base

system-deps:
	@$(call apt_install,$(SYSTEM_PACKAGES))

# corra's main job: the quickstart job file, on the embedded default (local programs, state
# in ./.corra, or $$CORRA_STATE_DIR). Running it again continues, never duplicates.
run: $(VENV)/.installed-base
	$(BIN)/corra run examples/quickstart.toml

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The Kubernetes control plane of the tests marked kubernetes, built once per machine (about
# 6.5 minutes; cached in ~/.cache/corra). Where it cannot be built (not root, Debian packages
# missing) those tests skip and say why; where a build failed they fail and say so.
kube-build:
	@bash scripts/kube-test-cluster.sh build || \
		echo "warning: scripts/kube-test-cluster.sh build failed (see above)" >&2

# The control plane is built while the other tests run (a no-op once built); the tests that
# need it (marked kubernetes: tests/conftest.py marks every test that uses the cluster) run
# after it. pytest exits 5 when it collected nothing: both runs doing so is a broken test
# setup, not a pass (one of them may: PYTEST_ARGS can name files of one kind only).
KUBE_BUILD_LOG ?= $(VENV)/kube-build.log
pytest: $(VENV)/.installed-test system-deps
	@bash scripts/kube-test-cluster.sh build >$(KUBE_BUILD_LOG) 2>&1 & build=$$!; \
	others=0; $(BIN)/python -m pytest -m "not kubernetes" $(PYTEST_ARGS) || others=$$?; \
	if ! wait $$build; then \
		cat $(KUBE_BUILD_LOG) >&2; \
		echo "warning: scripts/kube-test-cluster.sh build failed (see above)" >&2; \
	fi; \
	kube=0; $(BIN)/python -m pytest -m kubernetes $(PYTEST_ARGS) || kube=$$?; \
	if [ $$others -eq 5 ] && [ $$kube -eq 5 ]; then \
		echo "error: pytest collected no tests (exit 5); failing" >&2; exit 5; \
	fi; \
	[ $$others -eq 5 ] && others=0; [ $$kube -eq 5 ] && kube=0; \
	if [ $$others -ne 0 ]; then exit $$others; fi; \
	exit $$kube

test: lint pytest

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks --suite $(SUITE) --json bench-$(SUITE).json $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
