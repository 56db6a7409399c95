# The enx-streams roles (ingest, worker, migrate, ...) for docker-compose.yml and production.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ENX_DATA_DIR=/var/lib/enx-streams
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY schemas ./schemas
RUN pip install --no-cache-dir -e . && useradd --system --home-dir /var/lib/enx-streams --create-home enx
USER enx
ENTRYPOINT ["enx-streams"]
CMD ["--help"]
