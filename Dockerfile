# syntax=docker/dockerfile:1
# veilgate container image (README "Operations guide: Docker").
#
#   docker build -t veilgate .
#   docker run -p 6432:6432 -p 9187:9187 -v /etc/veilgate:/etc/veilgate:ro veilgate
#
# Stage 1 builds the two wheels (Rust engine + Cython glue) for the image's CPython; stage 2 is
# python:slim with the wheels installed into /opt/veilgate, running as an unprivileged user.  The
# configuration must listen on 0.0.0.0 (listen.host, admin.host) to be reachable from outside.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH=/root/.cargo/bin:$PATH
RUN pip install --no-cache-dir "maturin>=1.9,<2" "Cython>=3.0" "setuptools>=77" wheel build
WORKDIR /src
COPY . .
RUN maturin build --release --locked --strip -m native/py/Cargo.toml -o /wheels \
 && python -m build --wheel --no-isolation -o /wheels .

FROM python:${PYTHON_VERSION}-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/veilgate/bin:$PATH
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/veilgate \
 && /opt/veilgate/bin/pip install --no-cache-dir /wheels/*.whl \
 && useradd --system --uid 10001 --home-dir /var/lib/veilgate --create-home \
            --shell /usr/sbin/nologin veilgate \
 && mkdir -p /etc/veilgate
USER 10001:10001
WORKDIR /var/lib/veilgate
EXPOSE 6432 9187
# /readyz: 200 only when upstream logins, identity keys, masking key, certificate and audit pass
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:9187/readyz', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["veilgate", "serve", "--config", "/etc/veilgate/veilgate.yaml"]
