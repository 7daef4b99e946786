# The peergrid image: web, scheduler and worker all run from it with different commands.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY scheduler ./scheduler
COPY worker ./worker
COPY web ./web
COPY cli ./cli
COPY gateway ./gateway
COPY migrations ./migrations
# The peergrid user gets a home (gunicorn and Celery keep files there) and owns /data before any
# volume is mounted on it: Docker copies that ownership into a new named volume, so the web's
# artifacts and uploads can be written there.
RUN pip install ".[deploy]" \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/peergrid peergrid \
 && install -d -o peergrid -g peergrid -m 0750 /data
USER peergrid
EXPOSE 8000 8080 2222
CMD ["peergrid", "web", "--host", "0.0.0.0", "--port", "8000"]
