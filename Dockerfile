# Candor API and worker image. One image, two commands (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /srv/candor

# torch + torchvision first (large, pinned together), then the project.
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
RUN pip install . && useradd --create-home candor
USER candor

EXPOSE 8000
CMD ["candor", "serve", "--host", "0.0.0.0", "--port", "8000"]
