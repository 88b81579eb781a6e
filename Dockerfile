# One image for web, worker, beat and flower; docker-compose.yml picks the command.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY web ./web
COPY worker ./worker
COPY tasks ./tasks
COPY cli ./cli
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/postroom --create-home postroom

USER postroom
EXPOSE 8000 5555
CMD ["gunicorn", "-c", "python:web.gunicorn_conf", "--bind", "0.0.0.0:8000", "web:create_app()"]
