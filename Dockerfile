# keystage in a container: `keystage serve` on port 9000, data (embedded PostgreSQL, secret key) in /data.
#
#   docker build -t keystage .
#   docker run -p 9000:9000 -v keystage-data:/data keystage
#
# Settings are KEYSTAGE_* environment variables (docs/admin/configuration.md); for production set
# KEYSTAGE_DATABASE_URL to a real PostgreSQL and KEYSTAGE_EXTERNAL_URL to the public https:// address.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY stages ./stages
COPY plugins ./plugins
COPY web ./web
COPY locales ./locales
RUN python -m venv /opt/keystage && /opt/keystage/bin/pip install .

FROM python:3.11-slim-bookworm
# xmlsec1 signs and verifies SAML messages (pysaml2 calls the binary). tini runs as PID 1: it
# forwards SIGTERM to keystage and reaps the PostgreSQL processes that pg_ctl leaves to PID 1.
RUN apt-get update \
    && apt-get install -y --no-install-recommends xmlsec1 tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin keystage \
    && mkdir -p /data \
    && chown keystage:keystage /data
COPY --from=build /opt/keystage /opt/keystage

ENV PATH=/opt/keystage/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KEYSTAGE_DATA_DIR=/data \
    KEYSTAGE_LISTEN=0.0.0.0:9000
VOLUME /data
WORKDIR /data
# Non-root: PostgreSQL refuses to run as root, and keystage needs no privilege.
USER keystage
EXPOSE 9000
# Liveness only: readiness (/-/health/ready/) also needs the database, which may be restarting.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('KEYSTAGE_LISTEN', '0.0.0.0:9000').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/-/health/live/', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["keystage", "serve"]
