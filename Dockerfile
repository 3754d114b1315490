# ESPCN super-resolution service — CPU image by default.
#   docker build -t espcn-sr:cpu .
# CUDA variant (any CUDA wheel index of the same torch release; see docker-compose.gpu.yml), with
# torchvision for nvJPEG (SR_DEVICE_JPEG; the release made for that torch, from the same index):
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#     --build-arg TORCHVISION_VERSION=0.28.0 -t espcn-sr:cuda .
# The CUDA wheels bundle their CUDA libraries, so the slim base works; the host needs the
# NVIDIA driver and container toolkit.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCHVISION_VERSION=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SR_MODEL_STORE=/srv/model_store \
    SR_HOST=0.0.0.0 \
    SR_PORT=8000

WORKDIR /srv

# torch first, from its own index: the largest layer, rebuilt only when the ARGs change.
RUN pip install "torch==${TORCH_VERSION}" ${TORCHVISION_VERSION:+"torchvision==${TORCHVISION_VERSION}"} \
    --index-url "${TORCH_INDEX}"

# Dependencies next, cached until pyproject.toml changes: building with no app/ yet yields
# an empty distribution whose only effect is installing the requirements (torch is satisfied).
COPY pyproject.toml README.md ./
RUN pip install ".[redis]" && pip uninstall -y espcn-service

# Then the code and the models.
COPY app/ ./app/
RUN pip install --no-deps .
COPY model_store/ ./model_store/

# A writable home for library caches; the code itself stays root-owned and read-only.
RUN useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin sr
# Where compose mounts the shared jobs volume: a new named volume takes this folder's owner and mode.
RUN mkdir -m 0700 /jobs && chown sr /jobs
USER sr

EXPOSE 8000

# /healthz = process alive (readiness is /readyz). No curl in slim images: use Python.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

# app.serve, not bare uvicorn: SR_WORKERS (default auto: the processes the container's cores need),
# per-process thread shares and one coherent /metrics across processes (Prometheus multiprocess mode).
CMD ["python", "-m", "app.serve"]
