"""Model files read back safely: a `.keras` archive is untrusted until its declared sizes are
bounded, Keras' safe mode has built it, and it takes 28 x 28 images and gives class probabilities.

    model = load_model_file("runs/X/model.keras", classes=10)
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fashionlab.datasets import MAX_CLASSES, MIN_CLASSES
from fashionlab.errors import RunError, reason
from fashionlab.files import open_regular

# A .keras archive of this network is ~3.5 MB; refuse archives that would inflate past this.
MAX_MODEL_UNCOMPRESSED_BYTES = 512 * 1024 * 1024
MAX_MODEL_CONFIG_BYTES = 16 * 1024 * 1024  # the config.json inside an archive
# What a model archive may declare before Keras builds it (building allocates every weight).
MAX_MODEL_PARAMETERS = 100_000_000


def load_model_file(path: str | Path, *, follow_links: bool = False, compile: bool = False,
                    classes: int | None = None):
    """Load a fashionlab model from a `.keras` archive, as safely as it can be done.

    Only a regular file in the native zip format; its inflated size and the layer sizes it
    declares are bounded before Keras builds anything (building allocates every weight);
    Keras' safe mode is on (no code in the archive runs); whatever Keras unpacks goes to a
    folder of our own, removed afterwards; and the loaded model must take 28 x 28 images and
    give class probabilities (`classes` of them, when given). `compile` True restores the
    optimizer too (to train on).
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise RunError(f"{path}: only .keras model files are loaded (not .h5, pickle or SavedModel)")
    with open_regular(path, what="model file", error=RunError, limit=MAX_MODEL_UNCOMPRESSED_BYTES,
                      follow_links=follow_links) as handle:
        declared = _archive_config(path, handle)
        try:
            problem = _declared_problem(declared) or _test_time_problem(declared)
        except _TooDeep:
            problem = f"declares layers nested more than {MAX_NESTING} levels deep"
        if problem:
            raise RunError(f"{path} {problem}; it is not a fashionlab model")
        model = _load_keras(path, handle, compile)
    problem = _built_test_time_problem(model)  # what Keras built, whatever the config called its layers
    if problem:
        raise RunError(f"{path} {problem}; it is not a fashionlab model")
    inputs, outputs = tuple(model.inputs[0].shape) if len(model.inputs) == 1 else None, model.outputs
    if inputs != (None, 28, 28):
        raise RunError(f"{path} takes inputs of shape {inputs if inputs else len(model.inputs)}, not 28 x 28 images; "
                       f"it is not a fashionlab model")
    shape = tuple(outputs[0].shape) if len(outputs) == 1 else ()
    if len(shape) != 2 or shape[0] is not None or not MIN_CLASSES <= (shape[1] or 0) <= MAX_CLASSES or (
            classes is not None and shape[1] != classes):
        wanted = f"{classes} class probabilities" if classes else "class probabilities (N, classes)"
        raise RunError(f"{path} gives outputs of shape {shape or f'{len(outputs)} outputs'}, not {wanted}; "
                       f"it is not a fashionlab model")
    return model


def _archive_config(path: Path, handle) -> dict[str, Any]:
    """The model config declared inside the archive, read without building anything."""
    try:
        with zipfile.ZipFile(handle) as archive:
            infos = archive.infolist()
            if sum(info.file_size for info in infos) > MAX_MODEL_UNCOMPRESSED_BYTES:
                raise RunError(f"{path} would inflate to more than {MAX_MODEL_UNCOMPRESSED_BYTES:,} bytes, more than "
                               f"any fashionlab model; refusing it")
            info = next((i for i in infos if i.filename == "config.json"), None)
            if info is None:
                raise RunError(f"{path} is not a Keras model archive (no config.json inside)")
            if info.file_size > MAX_MODEL_CONFIG_BYTES:
                raise RunError(f"{path} declares a {info.file_size:,}-byte model config; refusing it")
            text = archive.read(info)[:MAX_MODEL_CONFIG_BYTES + 1]
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise RunError(f"{path} is not a valid .keras archive ({reason(exc)}); "
                       f"train the run again") from None
    try:
        config = json.loads(text)
    except (ValueError, RecursionError):
        raise RunError(f"{path} holds a damaged model config (config.json inside is not JSON)") from None
    if not isinstance(config, dict):
        raise RunError(f"{path} holds a damaged model config (config.json inside is not a table)")
    return config


def _declared_problem(config: dict[str, Any]) -> str | None:
    """What is wrong with the sizes a model config declares, estimated layer by layer in order:
    a Dense layer of `units` after n features holds n x units weights, a convolution
    in_channels x filters x kernel area. None when the model is a plausible size."""
    features, parameters, nodes = 28 * 28, 0, 0
    for layer in _layer_configs(config):
        nodes += 1
        if nodes > 100_000:
            return "declares more than 100,000 layers"
        units, filters = layer.get("units"), layer.get("filters")
        if units is not None or filters is not None:
            size = units if units is not None else filters
            if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 10**6:
                return f"declares a layer of {size!r} units"
            kernel = layer.get("kernel_size", 1)
            kernel = kernel if isinstance(kernel, list) else [kernel]
            if not all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 1024 for k in kernel):
                return f"declares a kernel of size {layer.get('kernel_size')!r}"
            area = math.prod(kernel) if filters is not None else 1
            parameters += features * size * area
            features = size
        if parameters > MAX_MODEL_PARAMETERS:
            return f"declares more than {MAX_MODEL_PARAMETERS:,} weights"
    return None


TEST_TIME = ("TestTimeViews", "TestTimeMean")


def _test_time_problem(config: dict[str, Any]) -> str | None:
    """What is wrong with a model's test-time views, or None. They change how many rows pass the
    network, so they are allowed only as fashionlab builds them: in a Sequential model (a run's, or
    each member of an ensemble) whose first layer is a TestTimeViews and whose last is a TestTimeMean
    of the same views, and nowhere else."""
    found = sum(_built_as(layer) in TEST_TIME for layer in _layers_of(config))
    placed = sum(2 for layer in _layers_of(config) if _views_around(layer))
    return None if found == placed else f"{TESTED_VIEWS} of a Sequential model"


def _views_around(model: dict[str, Any]) -> bool:
    """Whether `model` is a Sequential model whose first layer is a TestTimeViews and last a TestTimeMean
    of the same views."""
    top = model["config"].get("layers") if model.get("class_name") == "Sequential" else None
    top = [layer for layer in top if isinstance(layer, dict)] if isinstance(top, list) else []
    if top[:1] and top[0].get("class_name") == "InputLayer":
        top = top[1:]
    names = [_built_as(layer) for layer in top]

    def views(layer: dict[str, Any]) -> Any:
        return layer["config"].get("views") if isinstance(layer.get("config"), dict) else None

    return (len(top) >= 2 and names[0] == "TestTimeViews" and names[-1] == "TestTimeMean"
            and views(top[0]) == views(top[-1]))


def _built_as(layer: dict[str, Any]) -> Any:
    """The class Keras builds for a layer table: the one its `registered_name` names when it has one
    ("fashionlab>TestTimeViews"), else its `class_name`."""
    registered = layer.get("registered_name")
    return registered.rpartition(">")[2] if isinstance(registered, str) else layer.get("class_name")


TESTED_VIEWS = "declares test-time views other than one TestTimeViews first and one TestTimeMean of the same views last"


def _built_test_time_problem(model) -> str | None:
    """What is wrong with the test-time views of a model as built, or None: as `_test_time_problem`
    checks its config, on the layers themselves."""
    import keras

    from fashionlab.layers import TestTimeMean, TestTimeViews, models_within

    found, placed = set(), set()
    for inner in models_within(model):
        layers = inner.layers
        found |= {id(layer) for layer in layers if isinstance(layer, (TestTimeViews, TestTimeMean))}
        if (isinstance(inner, keras.Sequential) and len(layers) >= 2 and isinstance(layers[0], TestTimeViews)
                and isinstance(layers[-1], TestTimeMean) and layers[0].views == layers[-1].views):
            placed |= {id(layers[0]), id(layers[-1])}
    return None if found == placed else f"{TESTED_VIEWS} of a Sequential model"


MAX_NESTING = 64  # dict and list levels of a model config: a fashionlab ensemble has about a dozen


class _TooDeep(Exception):
    """A model config nested deeper than MAX_NESTING: refused, not looked through."""


def _layers_of(value: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    """Every layer table (a class name and its config) in a Keras model config, nested ones included;
    a config nested deeper than MAX_NESTING is refused, not skipped."""
    if depth > MAX_NESTING:
        raise _TooDeep
    if isinstance(value, dict):
        if isinstance(value.get("class_name"), str) and isinstance(value.get("config"), dict):
            yield value
        for item in value.values():
            yield from _layers_of(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _layers_of(item, depth + 1)


def _layer_configs(value: Any) -> Iterator[dict[str, Any]]:
    """Every layer's `config` table in a Keras model config, in document order, nested models included."""
    return (layer["config"] for layer in _layers_of(value))


_UNPACKING = threading.Lock()  # tempfile.tempdir is process-wide


def _load_keras(path: Path, handle, compile: bool):
    """keras.saving.load_model with safe mode, everything it unpacks kept in a folder removed afterwards."""
    import keras

    import fashionlab.layers  # noqa: F401  (registers PatchConv2D, which checkpoints hold)

    scratch = tempfile.mkdtemp(prefix="fashionlab-load-")
    try:
        with _UNPACKING:
            before, tempfile.tempdir = tempfile.tempdir, scratch
            try:
                handle.seek(0)
                return keras.saving.load_model(path, compile=compile, safe_mode=True)
            finally:
                tempfile.tempdir = before
    except Exception as exc:  # Keras raises many types here; the user only needs the reason.
        raise RunError(f"{path} cannot be loaded safely: {reason(exc, 300)}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
