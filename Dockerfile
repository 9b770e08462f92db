# One image for worker, beat and web (and any CLI use): batchapp on Python 3.11, as a non-root user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    BATCHAPP_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY batchapp ./batchapp
COPY docker ./docker
RUN pip install ".[postgres,web]" \
    && groupadd --gid 10001 batchapp \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin batchapp \
    && mkdir -p /data && chown batchapp:batchapp /data \
    && chmod 0755 docker/beat-start.sh

USER batchapp
VOLUME ["/data"]
CMD ["celery", "-A", "batchapp", "worker", "-l", "INFO"]
