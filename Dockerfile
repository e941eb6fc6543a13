# The insider service: `docker compose up` runs it beside PostgreSQL and Redis.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY config ./config
COPY insider ./insider
RUN pip install . && useradd --system --uid 10001 insider
USER insider

# Listen on every interface inside the container; compose publishes the port.
ENV INSIDER_HOST=0.0.0.0 \
    INSIDER_PORT=8080 \
    INSIDER_LOG_FORMAT=json
EXPOSE 8080
CMD ["python", "-m", "insider"]
