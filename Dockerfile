# The peergrid image: web, scheduler and worker all run from it with different commands.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scheduler ./scheduler
COPY worker ./worker
COPY web ./web
COPY cli ./cli
COPY migrations ./migrations
RUN pip install --no-cache-dir . gunicorn && useradd --system --uid 10001 peergrid
USER peergrid
EXPOSE 8000
CMD ["peergrid", "web", "--host", "0.0.0.0", "--port", "8000"]
