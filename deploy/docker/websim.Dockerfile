# syntax=docker/dockerfile:1
# websim image: the simulated web, its own process and image; it needs no crawler code (only the
# base dependencies: aiohttp, pydantic, prometheus-client), built in one stage and copied into a
# slim runtime as non-root.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /venv
ENV PATH=/venv/bin:$PATH PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY services/__init__.py ./services/__init__.py
COPY services/websim ./services/websim
RUN pip install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 app
COPY --from=build /venv /venv
COPY --from=build /src /app
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /app
USER app
EXPOSE 8090
CMD ["python", "-m", "services.websim", "--host", "0.0.0.0", "--port", "8090"]
