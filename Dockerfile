# `fashionlab serve --onnx` in a slim image: onnxruntime answers, no Keras, JAX, pandas or matplotlib.
#
#   fashionlab export runs/my-run --out model.onnx
#   docker build -t fashionlab-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/model.onnx:/model/model.onnx:ro" \
#       -e FASHIONLAB_TOKEN="$(python3 -c 'import secrets; print(secrets.token_urlsafe())')" fashionlab-serve
#
# The page, the JSON API, the Open Inference Protocol (/v2/...) and /metrics, on port 8000. Without
# FASHIONLAB_TOKEN anyone who reaches the port can use the model (the server says so when it starts).
# The page's gallery of test images is empty: the image holds no data set.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# what serve --onnx imports, as pyproject.toml asks for it (its serve and onnx extras, less the export's
# jax2onnx; tests/test_serve_docker.py keeps the two in step), then fashionlab without its training
# dependencies (Keras, JAX, pandas, matplotlib)
RUN pip install "numpy>=1.26" "pillow>=10.3" "scipy>=1.11" "onnx>=1.17" "onnxruntime>=1.20" \
        "fastapi>=0.115" "uvicorn>=0.30,<0.56" "python-multipart>=0.0.18" "httptools>=0.6" \
        "uvloop>=0.19" "prometheus-client>=0.20"
RUN pip install --no-deps .
RUN useradd --create-home --uid 10001 fashionlab
USER fashionlab

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"
ENTRYPOINT ["fashionlab", "serve", "--onnx", "/model/model.onnx", "--host", "0.0.0.0", "--port", "8000"]
