# Edge image for the watcher and the dashboard: ONNX Runtime (CUDA / TensorRT, CPU fallback), OpenCV
# headless, the store drivers and the sinks. No torch, no Prefect: `pip install .[runtime]` only.
#   docker build -f docker/runtime.Dockerfile -t inspector-runtime .      (from the repository root)
#   docker run --gpus all -v /srv:/srv inspector-runtime watch --config /srv/lines/line1/line.yaml
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /opt/inspector
COPY pyproject.toml README.md ./
COPY inspector ./inspector
# The edge contract, checked at build time: everything imports, and torch is not there.
RUN pip install ".[runtime]" \
 && python -c "import inspector.watcher, inspector.dashboard.app, inspector.runtime, onnxruntime, cv2" \
 && ! python -c "import torch" 2>/dev/null

# A fresh named volume mounted at /srv takes this ownership: the watcher writes its hot folder and media
# under /srv/lines, the dashboard the retrain folder; /srv/models (the registry) it only reads.
RUN useradd --system --uid 1000 --home-dir /opt/inspector inspector \
 && mkdir -p /srv/models /srv/lines/line1 /srv/datasets && chown -R 1000:1000 /srv
USER inspector
EXPOSE 8080 9108
ENTRYPOINT ["inspector"]
CMD ["watch", "--config", "/srv/lines/line1/line.yaml"]
