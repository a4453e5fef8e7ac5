# Training worker: the whole package with torch (the registry's CUDA wheels) and Prefect. It runs a
# Prefect process worker; train / retrain / backfill flow runs execute in /opt/inspector, the working
# directory prefect.yaml's pull step names, and write versions into the shared registry (/srv/models).
#   docker build -f docker/train.Dockerfile -t inspector-train .          (from the repository root)
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    OMP_WAIT_POLICY=PASSIVE PREFECT_SERVER_ANALYTICS_ENABLED=false
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /opt/inspector
COPY pyproject.toml README.md prefect.yaml ./
COPY inspector ./inspector
COPY flows ./flows
COPY launch ./launch
RUN pip install ".[train,runtime]" \
 && python -c "import flows.train, flows.retrain, flows.backfill, flows.report, flows.watch"
# Same /srv layout and owner as the runtime image, whichever of them first fills the shared volume.
RUN mkdir -p /srv/models /srv/lines/line1 /srv/datasets && chown -R 1000:1000 /srv

CMD ["prefect", "worker", "start", "--pool", "gpu", "--type", "process"]
