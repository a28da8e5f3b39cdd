# syntax=docker/dockerfile:1
# The controller image (`make docker-build`). Two stages: the builder turns this project and its runtime
# dependencies (pyproject [project.dependencies], never the [dev] extra) into wheels; the final stage
# installs only those wheels, runs as a numeric non-root user and writes nothing outside /tmp, so it
# works with the Deployment's readOnlyRootFilesystem.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is built from: the package (with its seed templates) and its metadata.
COPY pyproject.toml ./
COPY capi_provider ./capi_provider
# One wheel per distribution: ours plus the pinned runtime dependencies.
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# HOME and TMPDIR in the one writable mount (an emptyDir at /tmp in config/manager); no .pyc writes at
# runtime (pip compiled them at install time, while the filesystem was still writable); PYTHONSAFEPATH
# keeps `python -m` from putting the working directory first on sys.path.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels capi-provider-baremetal
# Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 65532:65532
WORKDIR /
ENTRYPOINT ["python", "-m", "capi_provider"]
