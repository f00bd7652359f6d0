# syntax=docker/dockerfile:1
#
# Sniffer's image: `sniffer watch` (Deployment) and `sniffer reconcile` (CronJob).
#
# * Base: python:3.11.14-slim-bookworm, pinned by the digest of its multi-architecture
#   index. The digest was taken from public Dockerfiles that pin this tag (no registry is
#   reachable where this file was written); check it with
#   `docker buildx imagetools inspect python:3.11.14-slim-bookworm` and bump tag and
#   digest together, never one without the other.
# * Dependencies come only from requirements.lock (`make lock`), every file checked
#   against its hash; the project itself is installed without dependencies, from a wheel
#   built with the hash-locked build backend (requirements-build.lock).
# * Runtime: a non-root numeric user (65532) that owns nothing it runs; nothing writes
#   outside /tmp (byte code is compiled at build time), so the root filesystem can be
#   mounted read-only. tests/test_deploy.py replays these steps in a fresh venv.
# * BASE is a build argument only so that a machine with no registry can build from a local
#   copy of the same Debian release and Python minor (testbed/baseimage.py, docs/deploy.md);
#   its default is the pinned digest, and every real build uses the default.
ARG BASE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
FROM ${BASE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

FROM base AS build
WORKDIR /src
COPY requirements-build.lock requirements.lock ./
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --no-deps --require-hashes -r requirements-build.lock \
 && python -m venv /opt/sniffer \
 && /opt/sniffer/bin/pip install --no-cache-dir --no-deps --require-hashes -r requirements.lock
# .dockerignore admits only what the wheel is built from.
COPY . .
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/sniffer/bin/pip install --no-cache-dir --no-deps /wheels/sniffer-*.whl \
 && /opt/sniffer/bin/sniffer --help >/dev/null

FROM base AS runtime
COPY --from=build /opt/sniffer /opt/sniffer
ENV PATH=/opt/sniffer/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp
WORKDIR /tmp
USER 65532:65532
ENTRYPOINT ["sniffer"]
CMD ["--help"]
