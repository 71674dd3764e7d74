"""The FastAPI application of `fashionlab serve`: the page and the JSON API. Its routes are
defined once, here; each reads what it serves from `request.app.state`, which `build_app` fills.

    app = build_app(load_predictor("runs/x"), data=DataSource(), top_k=3)

GET /            the page: drop, paste or choose images; a gallery of test images
POST /api/predict  multipart images -> the JSON objects of `fashionlab predict --json`
GET /api/model   config, metrics, class names;  GET /api/health;  GET /api/gallery
GET /metrics     Prometheus' text format (`serve.metrics`)
GET /v2, /v2/health/live, /v2/health/ready, /v2/models/NAME[/ready]; POST /v2/models/NAME/infer:
                 the Open Inference Protocol (`serve.v2`), raw pixels in, probabilities out
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from fashionlab import __version__
from fashionlab.data import DataSource
from fashionlab.errors import ModelBusy, ModelTimeout, reason
from fashionlab.images import MAX_IMAGE_PIXELS, Prepared, png_bytes
from fashionlab.prediction import Readings, results_of
from fashionlab.serve import v2
from fashionlab.serve.batching import Batcher
from fashionlab.serve.layers import BodyLimit, printable, warn
from fashionlab.serve.metrics import ServeMetrics
from fashionlab.serve.page import data_url, gallery, serve_page
from fashionlab.serve.predictor import MAX_PASSES, Predictor
from fashionlab.serve.uploads import MAX_FILES, MAX_REQUEST_PIXELS, ClientGone, UploadError, UploadWorkers

MAX_REQUEST_BYTES = 32 * 1024 * 1024  # one request's body, all its images together
MAX_HELD_BYTES = 256 * 1024 * 1024  # the bodies of all the requests being read and decoded at once
TOP_K_HELP = "the classes listed for each image, most likely first; by default the server's (serve --top-k)"
MC_HELP = ("Monte-Carlo dropout: average this many passes with the model's dropout on, and give each probability's "
           "spread (standard deviation) over them; a Keras model trained with dropout only (/api/model says)")

router = APIRouter()


def build_app(predictor: Predictor, *, data: DataSource = DataSource(), top_k: int = 3,
              metrics: ServeMetrics | None = None, model_name: str | None = None) -> FastAPI:
    """The FastAPI application serving `predictor`: the page and the API (`top_k`: the classes an
    answer lists unless the request says); `metrics`: what /metrics shows (none: /metrics is 404);
    `model_name`: the model's name in /v2 paths (default: its run's).
    `serve` wraps it in `guarded` (Host check, HEAD, token, CORS, no tracebacks) before it meets a client."""
    app = FastAPI(title="fashionlab", version=__version__, docs_url=None, redoc_url=None, redirect_slashes=False,
                  description=f"{predictor.dataset.label} classes for images: the API of `fashionlab serve`.")
    app.add_middleware(BodyLimit, limit=MAX_REQUEST_BYTES)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, failed)
    app.include_router(router)
    state = app.state
    state.predictor, state.top_k, state.started = predictor, top_k, time.time()
    state.batcher = Batcher(predictor, on_batch=metrics.batch if metrics is not None else None)
    state.workers = UploadWorkers()  # the batcher and the workers are closed by whoever runs the app (serve)
    state.metrics, state.v2_name = metrics, model_name or v2.model_name(predictor.info["name"])
    if metrics is not None:
        _watch(metrics, app)
    state.held_bytes = 0  # of the request bodies being read and decoded
    state.model_info = model_info(predictor, state.workers)
    state.gallery = gallery(data, predictor.dataset)
    state.page, script_hash = serve_page({"model": state.model_info, "gallery": state.gallery, "top_k": top_k})
    state.page_headers = page_headers(script_hash)
    return app


def _watch(metrics: ServeMetrics, app: FastAPI) -> None:
    """What /metrics says of the application: its routes as request labels, what it serves, and the gauges
    it reads from the server's state when it is scraped."""
    state = app.state
    metrics.label_routes([*router.routes, *app.routes])  # the app's lists an included router as one entry
    metrics.describe(model=state.v2_name, engine=state.predictor.engine, dataset=state.predictor.dataset.name)
    metrics.watch("fashionlab_queue_images", "Images waiting for the model", lambda: state.batcher.waiting)
    metrics.watch("fashionlab_uploads_waiting", "Uploads waiting to be decoded", lambda: state.workers.waiting)
    metrics.watch("fashionlab_upload_bytes_held", "Bytes of request bodies held while read", lambda: state.held_bytes)
    metrics.watch("fashionlab_model_timeouts_total", "Calls of the model that ran over their time limit",
                  lambda: state.predictor.calls.timeouts, counter=True)


def model_info(predictor: Predictor, workers: UploadWorkers) -> dict[str, Any]:
    """What /api/model says: the model, its classes, and the limits on what a request may hold."""
    dataset = predictor.dataset
    return {**predictor.info, "engine": predictor.engine, "dataset": dataset.name,
            "class_names": list(dataset.class_names), "fashionlab": __version__,
            "limits": {"request_bytes": MAX_REQUEST_BYTES, "images_per_request": MAX_FILES,
                       "image_pixels": MAX_IMAGE_PIXELS, "request_pixels": MAX_REQUEST_PIXELS,
                       "model_seconds": predictor.calls.seconds, "decode_seconds": workers.job_seconds,
                       "top_k": [1, dataset.classes], "mc_dropout": [2, MAX_PASSES]},
            "mc_dropout": predictor.sampler is not None}


def page_headers(script_hash: str) -> dict[str, str]:
    """The page's security headers: its one inline script runs, nothing is fetched from elsewhere."""
    policy = (f"default-src 'none'; img-src 'self' data: blob:; style-src 'unsafe-inline'; script-src '{script_hash}'; "
              f"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return error(exc.status_code, str(exc.detail) if exc.detail else "request refused")


async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
    return error(422, f"{where}: {first.get('msg', 'invalid value')}" if where else "invalid request")


async def failed(request: Request, exc: Exception) -> JSONResponse:
    """A bug: the answer is JSON too, and one line on stderr says what failed."""
    warn(f"a request to {printable(request.url.path)[:80]} failed: {type(exc).__name__}: {reason(exc)}")
    return error(500, "the server failed on this request; it goes on serving others")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(request: Request) -> Response:
    return HTMLResponse(request.app.state.page, headers=request.app.state.page_headers)


@router.get("/api/health")
async def health(request: Request) -> Response:
    """200 while the model answers; 503 while it is stuck in a call that ran over its time limit."""
    state = request.app.state
    predictor, batcher = state.predictor, state.batcher
    stuck = predictor.calls.stuck_for()
    said = {"status": "ok" if stuck is None else "unavailable", "engine": predictor.engine,
            "model": predictor.info["name"], "uptime_seconds": round(time.time() - state.started, 1),
            "batches": batcher.batches, "images": batcher.images, "model_timeouts": predictor.calls.timeouts,
            "uploads_waiting": state.workers.waiting, "upload_bytes_held": state.held_bytes,
            "images_waiting": batcher.waiting}
    if stuck is not None:
        said["reason"] = (f"the model has been stuck for {stuck:.0f} s in a call that ran over "
                          f"{predictor.calls.seconds:g} s")
    return JSONResponse(said, status_code=200 if stuck is None else 503)


@router.get("/api/model")
async def model(request: Request) -> dict[str, Any]:
    return request.app.state.model_info


@router.get("/api/gallery")
async def test_images(request: Request) -> list[dict[str, Any]]:
    return request.app.state.gallery


@router.post("/api/predict")
async def predict(request: Request, top_k: Annotated[int | None, Query(description=TOP_K_HELP)] = None,
                  prepared: bool = False, mc_dropout: Annotated[int | None, Query(description=MC_HELP)] = None
                  ) -> Response:
    """Images as multipart/form-data files (any field names), in order -> one result each."""
    state = request.app.state
    top_k = state.top_k if top_k is None else top_k
    classes = state.predictor.dataset.classes
    if not 1 <= top_k <= classes:
        return error(422, f"top_k must be between 1 and {classes}, got {top_k}")
    if mc_dropout is not None and (problem := mc_problem(state.predictor, mc_dropout)):
        return error(422, problem)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        return error(415, "send the images as multipart/form-data files (curl -F image=@shoe.png)")
    try:
        names, images = await read_images(request)
    except UploadError as exc:
        return error(exc.status, str(exc))
    except (ClientDisconnect, ClientGone):  # the client went away: nobody to answer
        return Response(status_code=400)
    pixels = np.stack([image.pixels for image in images])
    readings = await read_batched(state.batcher, pixels, [not image.as_is for image in images],  # photos
                                  mc_dropout)
    if isinstance(readings, Response):
        return readings
    results = results_of(readings, names, state.predictor.dataset, top_k, [image.missing for image in images])
    if prepared:
        for result, image in zip(results, images):
            result["prepared"] = data_url(png_bytes(image.pixels))
    return Response(json.dumps(results), media_type="application/json")


def mc_problem(predictor: Predictor, passes: int) -> str | None:
    """Why MC dropout's `passes` cannot be read with this model, or None."""
    if not 2 <= passes <= MAX_PASSES:
        return f"mc_dropout must be between 2 and {MAX_PASSES}, got {passes}"
    if predictor.sampler is None:
        what = "an ONNX file computes the model with its dropout off" if predictor.engine == "onnx" else (
            "this model has no dropout layer, so every pass would give the same probabilities")
        return f"mc_dropout cannot be used: {what}; serve a run trained with dropout"
    return None


async def read_batched(batcher: Batcher, pixels: np.ndarray, mirror: list[bool],
                       passes: int | None = None) -> Readings | Response:
    """The model's readings of `pixels` in the next batch, or the answer that says why there are none."""
    try:
        return await batcher.read(pixels, mirror, passes)
    except ModelTimeout as exc:
        return error(504, str(exc))
    except ModelBusy as exc:
        return error(503, str(exc))
    except Exception as exc:  # the model failed on this batch: say so, keep serving
        return error(500, f"the model failed: {reason(exc)}")


@contextlib.contextmanager
def held(request: Request, most: int) -> Iterator[None]:
    """A request's body counted against MAX_HELD_BYTES while it is read and worked on: its declared
    length (or `most`, the most it may hold); refused (503) past it."""
    state = request.app.state
    declared = request.headers.get("content-length", "")
    size = min(int(declared), most) if declared.isascii() and declared.isdigit() else most
    if state.held_bytes and state.held_bytes + size > MAX_HELD_BYTES:
        raise UploadError(f"the server is reading {state.held_bytes / 2**20:.0f} MB of other requests; try again in "
                          f"a moment", status=503)
    state.held_bytes += size
    try:
        yield
    finally:
        state.held_bytes -= size


async def read_images(request: Request) -> tuple[list[str], list[Prepared]]:
    """The names and prepared images of the request's files, read by the upload workers, the body held
    (`held`) until they are."""
    state = request.app.state
    with held(request, MAX_REQUEST_BYTES):
        body = await request.body()
        return await state.workers.read(body, request.headers.get("content-type", ""), gone=request.is_disconnected)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus' text format: requests, images, batches, latencies, queues, the model's load time."""
    if request.app.state.metrics is None:
        return error(404, "this server was started with --no-metrics")
    body, content_type = request.app.state.metrics.render(request.headers.get("accept", ""))
    return Response(body, headers={"content-type": content_type})


# --- the Open Inference Protocol (v2) -----------------------------------------------------------------

@router.get("/v2")
async def v2_server(request: Request) -> dict[str, Any]:
    return {"name": "fashionlab", "version": __version__, "extensions": v2.EXTENSIONS}


@router.get("/v2/health/live")
async def v2_live(request: Request) -> dict[str, Any]:
    return {"live": True}


@router.get("/v2/health/ready")
async def v2_ready(request: Request) -> Response:
    """Ready while the model answers; 503 while a call of it is stuck past its time limit."""
    ready = request.app.state.predictor.calls.stuck_for() is None
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.post("/v2/repository/index")
async def v2_index(request: Request) -> list[dict[str, Any]]:
    """The models served: one, ready (Triton's model repository index; models are not loaded or unloaded)."""
    return [{"name": request.app.state.v2_name, "version": "1", "state": "READY"}]


def _v2_model(request: Request, name: str, version: str | None) -> JSONResponse | None:
    """None when `name` (and `version`, when given) is the model served; else the 404 that says which one is."""
    served = request.app.state.v2_name
    if name == served and version in (None, "1"):
        return None
    asked = printable(name)[:64] + ("" if version is None else f" version {printable(version)[:16]}")
    return error(404, f"no model {asked!r} here; this server serves {served!r} (version 1): /v2/models/{served}")


def _platform(request: Request) -> str:
    return "onnxruntime" if request.app.state.predictor.engine == "onnx" else "keras"


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def v2_metadata(request: Request, name: str, version: str | None = None) -> Response:
    dataset = request.app.state.predictor.dataset
    return _v2_model(request, name, version) or JSONResponse(
        v2.model_metadata(name, list(dataset.class_names), _platform(request)))


@router.get("/v2/models/{name}/config")
@router.get("/v2/models/{name}/versions/{version}/config")
async def v2_config(request: Request, name: str, version: str | None = None) -> Response:
    classes = request.app.state.predictor.dataset.classes
    return _v2_model(request, name, version) or JSONResponse(
        v2.model_config(name, classes, MAX_FILES, _platform(request)))


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def v2_model_ready(request: Request, name: str, version: str | None = None) -> Response:
    ready = request.app.state.predictor.calls.stuck_for() is None
    return _v2_model(request, name, version) or JSONResponse({"name": name, "ready": ready},
                                                             status_code=200 if ready else 503)


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def v2_infer(request: Request, name: str, version: str | None = None) -> Response:
    """Raw pixels in, probabilities out, through the same batches as the page's images. The body is
    at most v2.MAX_BODY, held while it is read (`held`), parsed in a thread: not on the event loop."""
    refused = _v2_model(request, name, version)
    if refused is not None:
        return refused
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        return error(415, f"Content-Encoding {printable(encoding)[:20]} is not read; send the request uncompressed")
    state = request.app.state
    try:
        with held(request, v2.MAX_BODY):
            body = await request.body()
            if len(body) > v2.MAX_BODY:
                return error(413, f"an inference request is at most {v2.MAX_BODY // 2**20} MB; send fewer images")
            asked = await asyncio.to_thread(v2.parse_infer, body, request.headers.get(v2.HEADER), most=MAX_FILES)
    except UploadError as exc:
        return error(exc.status, str(exc))
    except v2.ProtocolError as exc:
        return error(exc.status, str(exc))
    except ClientDisconnect:
        return Response(status_code=400)
    readings = await read_batched(state.batcher, asked.pixels, [])
    if isinstance(readings, Response):
        return readings
    body, headers = v2.infer_response(name, asked, readings.proba)
    return Response(body, headers=headers)
