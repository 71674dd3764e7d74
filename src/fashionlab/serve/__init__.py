"""`fashionlab serve`: a prediction page and a JSON API for one model, with FastAPI and uvicorn.

    serve("runs/x", host="127.0.0.1", port=8000)   # until Ctrl-C
    app = build_app(load_predictor("runs/x"))      # or load_predictor(onnx="model.onnx")

Requests are answered from one model compiled at start for every batch size it will run
(`predictor`), each call bounded in time; uploads are parsed and decoded in worker processes,
each job bounded in time and memory, fairly between requests (`uploads`); images that arrive
together are read in one batch (`batching`). The routes and the page are in `app` and `page`;
every request passes the ASGI `layers` and every connection the HTTP `protocol`; `server` runs
them. Every refusal is a JSON answer {"error": "one line"}, and the server goes on.

Each name below is imported when first used: `import fashionlab.serve` imports neither FastAPI,
uvicorn, Keras nor JAX.
"""

import importlib

# name -> the module of this package that holds it
EXPORTS = {
    "serve": "server",
    "open_socket": "server",
    "build_app": "app",
    "load_predictor": "predictor",
    "Predictor": "predictor",
    "Batcher": "batching",
    "guarded": "layers",
    "serve_page": "page",
    "UploadWorkers": "uploads",
}


def __getattr__(name: str):
    if name in EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(EXPORTS)
