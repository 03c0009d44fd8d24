# syntax=docker/dockerfile:1
# inference image: only the inference extra, built in one stage and copied into a slim runtime as non-root.
FROM python:3.11-slim AS build
# CPU torch by default (the pin in pyproject resolves to the CPU wheel via this index).
# CUDA variant: build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
# and run with `--gpus all`; the server picks cuda (bf16/fp16) when it sees a GPU.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /src
RUN python -m venv /venv
ENV PATH=/venv/bin:$PATH PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY services/__init__.py ./services/__init__.py
COPY services/inference ./services/inference
RUN pip install --extra-index-url "$TORCH_INDEX" ".[inference]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 app && mkdir -p /data && chown app /data
COPY --from=build /venv /venv
COPY --from=build /src /app
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /app
USER app
VOLUME ["/data"]
CMD ["python", "-m", "services.inference"]
