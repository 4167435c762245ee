# syntax=docker/dockerfile:1
# One image for every Cairn service: `cairn serve tracker|scheduler|analytics|gateway` and
# `cairn db upgrade` (the Helm chart's migration Job); the k8s extra is the scheduler's
# Kubernetes launcher, the gcp extra its Vertex AI launcher. Build from the repository root:
#   docker build -f deploy/docker/services.Dockerfile --target runtime -t cairn:0.1.0 .
# and the scheduler for the Vertex AI launcher (the last stage, below):
#   docker build -f deploy/docker/services.Dockerfile -t cairn:0.1.0-vertex .
FROM python:3.11.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cairn ./cairn
COPY services ./services
COPY cairn_trainer ./cairn_trainer
RUN python -m venv /opt/cairn \
    && /opt/cairn/bin/pip install ".[postgres,gcp,s3,k8s]"

FROM python:3.11.11-slim-bookworm AS runtime

ENV PATH=/opt/cairn/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CAIRN_HOST=0.0.0.0 \
    CAIRN_DATA_DIR=/var/lib/cairn \
    CAIRN_LOG_FORMAT=json
COPY --from=build /opt/cairn /opt/cairn
RUN groupadd --system --gid 10001 cairn \
    && useradd --system --uid 10001 --gid cairn --home-dir /var/lib/cairn --create-home cairn
USER 10001:10001
WORKDIR /var/lib/cairn
EXPOSE 50051 50052 50053 50054 8080 9101 9102 9103 9104
ENTRYPOINT ["cairn"]
CMD ["serve", "tracker"]

# The scheduler with the Vertex AI launcher compiles each job's pipeline in the trainer
# runtime (CPython 3.10 + TFX, from cairn_trainer/requirements-py310.lock): uv installs a
# standalone CPython 3.10 (python3.10 on PATH, where `cairn trainer-env` looks) and the runtime
# is built into the image (about 3 GB), so a pod never builds one.
FROM runtime AS scheduler-vertex
USER root
COPY --from=ghcr.io/astral-sh/uv:0.9.7 /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_BIN_DIR=/usr/local/bin \
    CAIRN_TRAINER_RUNTIME_DIR=/opt/cairn-trainer-runtime
RUN uv python install 3.10 \
    && cairn trainer-env \
    && chmod -R a+rX /opt/python /opt/cairn-trainer-runtime
USER 10001:10001
