# Candor API and worker image. One image, several commands (see docker-compose.yml).
# The build stage turns the source into a wheel; the image installs only that wheel. Migrations and the
# Alembic configuration ship inside the package, so `candor db upgrade` and `candor serve` need no source tree.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY candor ./candor
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# torch + torchvision first (large, pinned together), then the project's wheel and its dependencies.
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels && useradd --create-home --uid 10001 candor

# Not root; the home folder is writable (embedded mode's data folder lives under it).
USER candor
WORKDIR /home/candor

EXPOSE 8000
# Healthy = ready: GET /readyz answers 200 once the database and the broker answer (503 otherwise).
# The slim image has no curl; urlopen raises (exit 1) on a refused connection or any non-2xx answer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["candor", "serve", "--host", "0.0.0.0", "--port", "8000"]
