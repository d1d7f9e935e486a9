# poolserve image. torch (and CUDA) come from the base image and are never reinstalled here: the project
# is installed with `python3 -m pip` into a venv that sees the base's site-packages, so any base with
# Python >= 3.11, venv and the torch CI tests works (the CPU proof in scripts/test_image.sh uses a Debian
# one). A base with another torch fails the build rather than serve an untested one.
# No `# syntax=` line on purpose: it would make BuildKit pull a frontend image.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.9-cudnn9-runtime

# --- build: pip, its downloads and the source tree stay in this stage -------------------------------
FROM ${BASE_IMAGE} AS build
# The torch CI tests (the Makefile's TORCH): the base must carry exactly this release.
ARG TORCH_VERSION=2.13.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# One COPY (one layer): .dockerignore admits only what the wheel and the lock need.
COPY . /src
# The dependencies come from the hashed lock (requirements/service.txt, torch left out), then poolserve
# without dependencies: the image gets exactly the versions CI tested. The constraint pins torch to the
# base's exact build, so nothing can pull a second (multi-GB) torch; pip fails instead.
# --system-site-packages is what lets the venv see that torch.
RUN python3 -c "import sys, torch; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '${TORCH_VERSION}' else f'the base image has torch {v}; CI tests ${TORCH_VERSION}')" \
 && python3 -m venv --system-site-packages /opt/poolserve \
 && python3 -c "import torch; print('torch==' + torch.__version__)" > /tmp/torch-from-base.txt \
 && /opt/poolserve/bin/python3 -m pip install --no-cache-dir --constraint /tmp/torch-from-base.txt \
        --require-hashes --no-deps -r /src/requirements/service.txt \
 && /opt/poolserve/bin/python3 -m pip install --no-cache-dir --constraint /tmp/torch-from-base.txt --no-deps '/src' \
 && /opt/poolserve/bin/python3 -c "import torch, service.app; print('poolserve ok, torch', torch.__version__)"

# --- runtime -------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/poolserve \
        --shell /usr/sbin/nologin poolserve
COPY --from=build /opt/poolserve /opt/poolserve
ENV PATH=/opt/poolserve/bin:$PATH \
    HOME=/home/poolserve \
    PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    POOLSERVE_DEVICE=auto \
    POOLSERVE_DRAIN_SECONDS=5 \
    POOLSERVE_GRPC_PORT=8001 \
    POOLSERVE_GRPC_HOST=0.0.0.0
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/poolserve
# 8000: HTTP; 8001: the Open Inference Protocol over gRPC (Triton's port; unset POOLSERVE_GRPC_PORT: off).
EXPOSE 8000 8001
# Liveness only (slim bases have no curl). Compose and Kubernetes probe /ready separately for readiness.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
# On SIGTERM poolserve drains for POOLSERVE_DRAIN_SECONDS (/ready answers 503, requests still served), then
# finishes what is in flight and exits 0: 5 s fits `docker stop`'s default 10 s; compose and Kubernetes
# set their own, to fit their probe periods.
# 0.0.0.0 explicitly: poolserve's own default is 127.0.0.1, unreachable from outside the container.
CMD ["poolserve", "--host", "0.0.0.0", "--port", "8000"]
