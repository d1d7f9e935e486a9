# Set-up and checks. `make serve` and `make test` are the README's two commands; both install what they need.
# Where: the active virtual environment, else .venv/ in this checkout, made on first use. Never the
# system's Python, which Debian and Ubuntu mark externally managed (pip refuses to install there).
ifdef VIRTUAL_ENV
PY ?= python3
VENV :=
else
PY ?= .venv/bin/python3
VENV := .venv/bin/python3
endif
PIP := $(PY) -m pip install --disable-pip-version-check -q
# torch first and pinned: a looser requirement with no torch present pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: install install-test browser serve test lint typecheck pytest bench test-image

# The virtual environment, made with the first python3 on PATH once it is known to be new enough.
.venv/bin/python3:
	@python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "poolserve needs Python 3.11 or newer; python3 is $$(python3 --version 2>&1 || echo missing)." >&2; \
	  echo "Install a newer Python (or activate a virtual environment that has one) and run make again." >&2; \
	  exit 1; }
	@echo "making .venv/ (python3 -m venv): poolserve and its dependencies are installed there"
	@python3 -m venv .venv 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    rm -rf .venv; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
	      && python3 -m venv .venv; \
	  else rm -rf .venv; echo "python3 -m venv failed: install your distribution's python3-venv package" >&2; exit 1; fi; }

# Installs follow the locks in requirements/ (made by `make lock`, every file's hash pinned): a fresh install
# gets exactly what CI tested. torch is left out of them and installed first, pinned: its CPU and CUDA
# builds differ in their own dependencies. poolserve itself goes in last, without dependencies.
# Each install leaves a stamp in the environment, so a later `make serve` skips pip (half a minute of
# re-checking an unchanged install) unless pyproject.toml or the lock changed since. The stamp lives in the
# environment, so switching environments installs afresh.
ENV_DIR := $(shell $(PY) -c 'import sys; print(sys.prefix)' 2>/dev/null || echo .venv)
STAMP = $(ENV_DIR)/.poolserve-installed
LOCKED := $(PIP) --require-hashes --no-deps -r

install: $(VENV)
	@if [ -f "$(STAMP)-service" ] && [ "$(STAMP)-service" -nt pyproject.toml ] \
	    && [ "$(STAMP)-service" -nt requirements/service.txt ]; then \
	  echo "poolserve is installed in $(ENV_DIR) and pyproject.toml and its lock are unchanged: skipping pip"; \
	else $(PIP) $(TORCH) && $(LOCKED) requirements/service.txt && $(PIP) --no-deps -e . \
	  && touch "$(STAMP)-service"; fi

install-test: $(VENV)
	@if [ -f "$(STAMP)-test" ] && [ "$(STAMP)-test" -nt pyproject.toml ] \
	    && [ "$(STAMP)-test" -nt requirements/test.txt ]; then \
	  echo "the test dependencies are installed in $(ENV_DIR) and pyproject.toml and its lock are unchanged: skipping pip"; \
	else $(PIP) $(TORCH) && $(LOCKED) requirements/test.txt && $(PIP) --no-deps -e . \
	  && touch "$(STAMP)-test" "$(STAMP)-service"; fi

# Refresh the locks from pyproject.toml and PyPI. Versions already locked are kept unless pyproject.toml
# excludes them: `make lock` after editing a range; `make lock UPGRADE=--upgrade` (or
# `UPGRADE="--upgrade-package gradio"`) to move to newer releases. requirements/test.txt is the CI set;
# requirements/service.txt is its service part, at the same versions.
UV_PIN := uv==0.13.10
UV ?= $(PY) -m uv
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes \
	--no-config --override requirements/torch-excluded.txt --no-emit-package torch --quiet
.PHONY: lock
lock: $(VENV)
	@$(UV) --version >/dev/null 2>&1 || $(PIP) $(UV_PIN)
	$(UV) pip compile pyproject.toml --extra service --extra test $(LOCK_FLAGS) $(UPGRADE) \
	  -o requirements/test.txt
	$(UV) pip compile pyproject.toml --extra service $(LOCK_FLAGS) -c requirements/test.txt \
	  -o requirements/service.txt

# Debian's Chromium for the browser tests (Playwright drives it; nothing is downloaded at run time), and
# axe-core (the WCAG checker they inject) from npm into the git-ignored .browser-deps/.
AXE := .browser-deps/node_modules/axe-core/axe.min.js
browser: $(AXE)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium with apt-get, for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing and cannot apt-get it: browser tests will skip"; fi; }

$(AXE):
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's nodejs and npm with apt-get, for axe-core (the accessibility checks)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	  else echo "npm missing and cannot apt-get it: the accessibility checks will skip"; fi; }
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --prefix .browser-deps --no-audit --no-fund --no-save --silent axe-core@4; fi

HOST ?= 127.0.0.1
PORT ?= 8000
serve: install
	$(PY) -m service --host $(HOST) --port $(PORT)

lint:
	$(PY) -m ruff check poolcore service tests bench
	$(PY) -m ruff format --check poolcore service tests bench

typecheck:
	$(PY) -m mypy

# Two pytest processes (pytest-xdist): on two cores one compiles or pools while the other's live server,
# browser or gRPC call waits. --dist loadfile runs each test file whole, in its order, on one worker: its
# module-scoped servers and compiled modules are built once, and a test that reads what an earlier one in
# its file left (test_grpc's metrics) still sees it. PYTEST_WORKERS=0 runs in-process.
# TORCHINDUCTOR_COMPILE_THREADS=1: inductor compiles in each pytest process rather than starting its own
# pool of compile workers there, which on two cores only competes with the other pytest process (one run
# of tests/poolcore each way: 5 min 24 s of CPU instead of 6 min 14 s; from a cold inductor cache, the
# slowest compile test took 117 s instead of 133 s).
PYTEST_WORKERS ?= 2
pytest:
	TORCHINDUCTOR_COMPILE_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile

# mypy (a minute from a cold cache, as on a fresh clone) runs beside pytest rather than before it: pytest's
# two workers leave a core idle whenever a test waits on a server, a timeout or a browser.
test: install-test browser lint
	@$(MAKE) --no-print-directory -j2 typecheck pytest

bench: install
	$(PY) bench/ops.py

# The service benchmark (bench/service.py): poolserve against a plain FastAPI endpoint and LitServe, driven
# by wrk (a Debian package, installed here when missing; without it the benchmark says so and skips).
.PHONY: bench-service
bench-service: install-test  # tritonclient (test extras) for the --oip rows
	$(PIP) -e '.[service,test,bench]'
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else echo "wrk missing and cannot apt-get it (not root or no apt-get): install wrk to run the benchmark"; fi; }
	$(PY) bench/service.py $(ARGS)

# Deployment proof: static checks of Dockerfile/compose/Kubernetes, then a real Docker engine builds the image
# on a local Debian+CPU-torch base, runs the CPU compose variant and queries it (see scripts/test_image.sh).
# The host side of the checks (scripts/image_checks.py) needs numpy: it runs in this project's environment.
test-image: install
	PY="$(PY)" bash scripts/test_image.sh

# The training benchmark (bench/train.py): a small CNN per method on scikit-learn's digits, 5 seeds, 2-d and
# 1-d pooling; writes bench/results/train.{md,json} and train_curves.png. ARGS="--quick" for a smoke run.
.PHONY: bench-train
bench-train: install
	$(PIP) -e '.[service,bench]'
	$(PY) bench/train.py $(ARGS)

# Everything that needs a CUDA device, in one report (test-artifacts/gpu-check.md): the CUDA tests,
# bench/ops.py --device cuda, the service on --device cuda (one request per method and format) and the service
# benchmark; within 10 minutes on one GPU. Without a GPU it says so and exits 0.
.PHONY: gpu-check
gpu-check:
	$(PY) scripts/gpu_check.py $(ARGS)
