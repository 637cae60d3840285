# sfn-activity-worker: runs `sfn-worker run` as PID 1, tuned with SFN_* environment variables.
# Build: docker build -t sfn-activity-worker .
# Run:   docker run --rm -e SFN_ACTIVITY_ARN=arn:aws:states:... -e SFN_HANDLER=module:function \
#          -e AWS_REGION=... sfn-activity-worker
# The image names no handler (SFN_HANDLER is required): set it, or build FROM this image
# with your code and SFN_HANDLER set (examples/custom-image).
# (`make image` builds it tagged and labelled with the version in pyproject.toml.)

# The base image, pinned by digest (the multi-platform index) so a rebuild gets the same
# bytes. `make base-image-digest` moves it to the current python:3.13-slim, with
#   docker buildx imagetools inspect python:3.13-slim --format '{{.Manifest.Digest}}'
ARG PYTHON_IMAGE=python:3.13-slim@sha256:9662417aace5ae7b8e2609cce472b72a8958e134ba372808abe9cc1a0c0125e6

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first (hash-pinned, exported from uv.lock) so code changes reuse this layer.
COPY requirements.lock ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY service ./service
RUN /opt/venv/bin/pip install --no-deps --no-compile . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE}
# The version in pyproject.toml (tests/test_adoption.py checks they agree).
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="sfn-activity-worker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid worker --no-create-home --shell /usr/sbin/nologin worker
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SFN_HTTP_PORT=8080
USER 10001:10001
EXPOSE 8080
# ECS and `docker stop` send STOPSIGNAL to PID 1; the worker drains for SFN_SHUTDOWN_GRACE_SECONDS.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["sfn-worker", "healthcheck"]
# Exec form: the worker itself is PID 1 and receives SIGTERM (a shell would not forward it).
ENTRYPOINT ["sfn-worker"]
CMD ["run"]
