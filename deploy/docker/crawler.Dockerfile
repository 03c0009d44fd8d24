# syntax=docker/dockerfile:1
# crawler image: only the crawler extra, built in one stage and copied into a slim runtime as non-root.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /venv
ENV PATH=/venv/bin:$PATH PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY services/__init__.py ./services/__init__.py
COPY services/crawler ./services/crawler
RUN pip install ".[crawler]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 app && mkdir -p /data && chown app /data
COPY --from=build /venv /venv
COPY --from=build /src /app
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /app
USER app
VOLUME ["/data"]
CMD ["python", "-m", "services.crawler"]
