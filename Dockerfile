# maskserve: the frontend and the exporter (CPU torch for export; serving needs no torch).
FROM python:3.11-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends curl gcc g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src src
COPY export export
COPY frontend frontend
COPY scripts scripts
RUN python -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && python -m pip install --no-cache-dir -e ".[export]" \
 && SAM2_BUILD_CUDA=0 python -m pip install --no-cache-dir --no-build-isolation --no-deps sam2==1.1.0
ENV MASKSERVE_HOST=0.0.0.0 MASKSERVE_PORT=8080
EXPOSE 8080
HEALTHCHECK CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["maskserve"]
CMD ["frontend", "--triton-url", "triton:8001"]
