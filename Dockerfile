# broadcaster: stream Postgres row changes to WebSocket clients.
#
#   docker build -t broadcaster .
#   docker run --rm -p 8000:8000 -e DATABASE_URL=postgresql://user:pass@host:5432/db \
#       -e BROADCASTER_JWT_SECRET=... broadcaster   # or the other keys: docs/security.md
#
# The container expects DATABASE_URL. Apply the schema first with
# `docker run --rm -e DATABASE_URL=... broadcaster migrate` (docker-compose.yml does it
# on every start). Without DATABASE_URL, `serve` starts the embedded Postgres of the
# pgserver wheel instead, migrates it and keeps its data in BROADCASTER_DATA_DIR
# (/data, a volume): fine for a demo, not for production.

# --- build: the project's wheel (schema/ and triggers.sql bundled by force-include) ---
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# Only what the wheel is made of; README.md is the package's readme in pyproject.toml.
COPY pyproject.toml README.md triggers.sql ./
COPY schema ./schema
COPY broadcaster ./broadcaster
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- runtime ---
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    BROADCASTER_HOST=0.0.0.0 \
    BROADCASTER_PORT=8000 \
    BROADCASTER_DATA_DIR=/data

# A fixed, unprivileged uid/gid, so volume ownership is predictable.
RUN groupadd --system --gid 10001 broadcaster \
    && useradd --system --uid 10001 --gid broadcaster --create-home \
        --home-dir /home/broadcaster --shell /usr/sbin/nologin broadcaster \
    && mkdir -p /data \
    && chown broadcaster:broadcaster /data

COPY --from=build /wheels/ /tmp/wheels/
RUN pip install /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels

# Embedded-Postgres data (only used without DATABASE_URL). Declared after the chown
# above so a fresh volume is created owned by the app user.
VOLUME ["/data"]

USER 10001:10001
WORKDIR /home/broadcaster

EXPOSE 8000

# /readyz answers 200 once the server listens to Postgres, 503 otherwise; urlopen
# raises on 503 or a refused connection, so the check exits 1. No proxy: the
# request goes straight to the server in this container.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/readyz' % os.environ.get('BROADCASTER_PORT', '8000'), timeout=3)"]

ENTRYPOINT ["broadcaster"]
CMD ["serve"]
