# Set-up and checks. `make serve` and `make test` are the README's two commands; both install what they need.
PY ?= python3
PIP := $(PY) -m pip install --disable-pip-version-check -q
# torch first and pinned: a looser requirement with no torch present pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: install install-test browser serve test lint typecheck pytest bench test-image

install:
	$(PIP) $(TORCH)
	$(PIP) -e '.[service]'

install-test:
	$(PIP) $(TORCH)
	$(PIP) -e '.[service,test]'

# Debian's Chromium for the browser tests (Playwright drives it; nothing is downloaded at run time).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing and cannot apt-get it: browser tests will skip"; fi; }

serve: install
	poolserve

lint:
	$(PY) -m ruff check poolcore service tests bench
	$(PY) -m ruff format --check poolcore service tests bench

typecheck:
	$(PY) -m mypy

pytest:
	$(PY) -m pytest

test: install-test browser lint typecheck pytest

bench: install
	$(PY) bench/ops.py

# The service benchmark (bench/service.py): HTTP against in-process, on a real uvicorn on loopback.
.PHONY: bench-service
bench-service: install-test  # tritonclient (test extras) for the Open Inference Protocol rows
	$(PY) bench/service.py

# Deployment proof: static checks of Dockerfile/compose/Kubernetes, then a real Docker engine builds the image
# on a local Debian+CPU-torch base, runs the CPU compose variant and queries it (see scripts/test_image.sh).
test-image:
	bash scripts/test_image.sh
