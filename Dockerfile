# The insider service. Alone (`docker run -p 8080:8080 insider`) it runs on the embedded
# defaults: SQLite in the /data volume, the in-process cache, the built-in simulator.
# `docker compose up` runs it beside PostgreSQL, Redis and the simulator as an HTTP provider.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY config ./config
COPY insider ./insider
RUN pip install . \
    && useradd --system --uid 10001 insider \
    && mkdir /data \
    && chown insider /data
USER insider

# Listen on every interface inside the container; compose publishes the port. The SQLite
# file (used when INSIDER_DATABASE_URL is not overridden) lives in the volume, not the image.
ENV INSIDER_HOST=0.0.0.0 \
    INSIDER_PORT=8080 \
    INSIDER_LOG_FORMAT=json \
    INSIDER_DATABASE_URL=sqlite:////data/insider.db
VOLUME /data
EXPOSE 8080
CMD ["python", "-m", "insider"]
