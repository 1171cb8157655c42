# syntax=docker/dockerfile:1
# The kvcap operator image: `kvcap run` (kopf) as a non-root user on a read-only root filesystem.
#
#   docker build -t ghcr.io/kvcap/kvcap:0.1.0 .
#   docker run --rm ghcr.io/kvcap/kvcap:0.1.0 plan --help
#
# Two stages: the first installs kvcap and its dependencies into a virtualenv, the second copies
# only that virtualenv onto a clean python:3.11-slim (no pip cache, no build context, no tests).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore lets in only what the package needs.
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m venv /opt/kvcap \
 && /opt/kvcap/bin/pip install . \
 && /opt/kvcap/bin/kvcap --version

FROM python:3.11-slim
LABEL org.opencontainers.image.title="kvcap" \
      org.opencontainers.image.description="Kubernetes operator that sizes and runs vLLM model servers from the KV-cache budget" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/kvcap/kvcap"
COPY --from=build /opt/kvcap /opt/kvcap
# uid/gid 65532 ("nonroot" in distroless images) has no home directory: HOME=/tmp, which the
# chart mounts as an emptyDir because the root filesystem is read-only.
ENV PATH=/opt/kvcap/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
# kopf's liveness endpoint (`kvcap run --liveness=http://0.0.0.0:8080/healthz`).
EXPOSE 8080
ENTRYPOINT ["kvcap"]
CMD ["run"]
