# syntax=docker/dockerfile:1
# The trainer runtime: TFX 1.16 (Python 3.10, protobuf < 5) + TensorFlow Recommenders + ScaNN,
# pinned by cairn_trainer/requirements-py310.lock, with the cairn_trainer package. On Vertex AI
# every pipeline task runs in it (kfp-pipeline-spec: TFX's Kubeflow V2 executor). Build from
# the repository root:
#   docker build -f deploy/docker/trainer.Dockerfile -t cairn-trainer:0.1.0 .
FROM tensorflow/tfx:1.16.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    TF_USE_LEGACY_KERAS=1
COPY cairn_trainer/requirements-py310.lock /tmp/requirements-py310.lock
RUN pip install -c /tmp/requirements-py310.lock tensorflow-recommenders scann kfp-pipeline-spec \
    && rm /tmp/requirements-py310.lock
COPY cairn_trainer /opt/cairn-trainer/cairn_trainer
ENV PYTHONPATH=/opt/cairn-trainer
RUN groupadd --system --gid 10001 cairn \
    && useradd --system --uid 10001 --gid cairn --home-dir /home/cairn --create-home cairn
USER 10001:10001
WORKDIR /home/cairn
ENTRYPOINT ["python", "-m", "cairn_trainer"]
