# syntax=docker/dockerfile:1
# Robustar for Label Studio: the ML backend and the RQ training worker, one multi-stage file.
#
#   docker build --target backend -t robustar-ls-backend .                    # CPU torch, small
#   docker build --target worker  -t robustar-ls-worker  .                    # CUDA torch (PyPI wheels)
#   docker build --target backend --build-arg TORCH_INDEX_URL=https://pypi.org/simple ...   # GPU backend
#
# TORCH_INDEX_URL picks the torch build: https://download.pytorch.org/whl/cpu (CPU only, ~1 GB smaller)
# or https://pypi.org/simple (Linux wheels with the CUDA 12 runtime; the host needs only the NVIDIA
# driver and the NVIDIA Container Toolkit). docker-compose.yml sets it per service.

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------- builder: a venv with everything
FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the chosen index: the biggest and least often changing layer
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
WORKDIR /src
# dependencies next (cached until pyproject.toml changes), then our code
COPY pyproject.toml README.md ./
RUN mkdir -p ml_backend training label_config \
    && touch ml_backend/__init__.py training/__init__.py label_config/__init__.py \
    && pip install ".[deploy]" \
    && pip uninstall -y robustar-ls
COPY ml_backend ml_backend
COPY training training
COPY label_config label_config
RUN pip install --no-deps .

# ---------------------------------------------------------------- runtime: slim, non-root
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 robustar \
    && useradd --system --uid 10001 --gid robustar --home-dir /home/robustar --create-home \
        --shell /usr/sbin/nologin robustar \
    && mkdir -p /data/models /data/weights /data/datasets \
    && chown -R robustar:robustar /data
COPY --from=builder /opt/venv /opt/venv
COPY docker/gunicorn.conf.py docker/healthcheck.py /app/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/robustar \
    MODEL_DIR=/data/models \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /app
USER robustar:robustar

# ---------------------------------------------------------------- the ML backend (gunicorn + uvicorn workers)
FROM runtime AS backend
ENV PORT=9090 GUNICORN_WORKERS=1 GUNICORN_THREADS=8
EXPOSE 9090
HEALTHCHECK --interval=15s --timeout=6s --start-period=90s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "backend"]
CMD ["gunicorn", "-c", "/app/gunicorn.conf.py", "ml_backend.api.server:build_app()"]

# ---------------------------------------------------------------- the RQ training worker (GPU)
FROM runtime AS worker
ENV DEVICE=auto
# a fresh name per start (a crashed worker's registration must not block its restart); the
# health check looks for "<WORKER_NAME or hostname>-*" among Redis's live workers
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "worker"]
CMD ["sh", "-c", "exec robustar worker --name \"${WORKER_NAME:-$(hostname)}-$(date +%s)\""]
