# syntax=docker/dockerfile:1
# One image for every Cairn service: `cairn serve tracker|scheduler|analytics|gateway` and
# `cairn db upgrade` (the Helm chart's migration Job); the k8s extra is the scheduler's
# Kubernetes launcher. Build from the repository root:
#   docker build -f deploy/docker/services.Dockerfile -t cairn:0.1.0 .
FROM python:3.11.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cairn ./cairn
COPY services ./services
COPY cairn_trainer ./cairn_trainer
RUN python -m venv /opt/cairn \
    && /opt/cairn/bin/pip install ".[postgres,gcp,s3,k8s]"

FROM python:3.11.11-slim-bookworm

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
EXPOSE 50051 50052 50053 8080 9101 9102 9103
ENTRYPOINT ["cairn"]
CMD ["serve", "tracker"]
