"""fashionlab: the Fashion-MNIST batch-normalization tutorial as a tool.

    python -m fashionlab train --epochs 10
"""

import os

# Keras reads its backend once, at first import: default to JAX unless the user chose.
os.environ.setdefault("KERAS_BACKEND", "jax")


def _cache_compiled_code() -> None:
    """Keep what XLA compiles in a folder shared by every fashionlab process, so a start does not
    compile again what an earlier one did: loading a model draws its initial weights with kernels
    that take ~1 s to compile on a CPU, which the cache turns into ~0.1 s. Set
    JAX_COMPILATION_CACHE_DIR to choose the folder; FASHIONLAB_NO_CACHE=1 turns it off."""
    if os.environ.get("FASHIONLAB_NO_CACHE") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(root, "fashionlab", "jax")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return  # no writable cache: compile every time, as without one
    if not os.access(folder, os.W_OK | os.X_OK):
        return
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # A size makes JAX evict the least recently used entries, and lock the folder while it
    # reads or writes one, so concurrent processes never read a half-written entry.
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(1 << 30))


_cache_compiled_code()

from fashionlab.errors import FashionlabError  # noqa: E402

__version__ = "0.1.0"

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

__all__ = ["CLASS_NAMES", "FashionlabError", "__version__"]
