"""fashionlab: the Fashion-MNIST batch-normalization tutorial as a tool.

    python -m fashionlab train --epochs 10
"""

import os

# Keras reads its backend once, at first import: default to JAX unless the user chose.
os.environ.setdefault("KERAS_BACKEND", "jax")


def compile_cache_folder() -> str | None:
    """Where XLA's compiled programs are kept for every fashionlab process: FASHIONLAB_COMPILE_CACHE,
    or ~/.cache/fashionlab/xla; None when that variable says "off"."""
    setting = os.environ.get("FASHIONLAB_COMPILE_CACHE")
    if setting is None:
        root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(root, "fashionlab", "xla")
    return None if setting.lower() in ("", "0", "off", "false", "no") else setting


# Set before JAX is imported, so that every program is read from the cache, the first included:
# a model's initial weights are drawn by kernels that take ~1 s to compile on a CPU, ~0.1 s to
# read back (engine.enable_compilation_cache sets it again when JAX came first).
if compile_cache_folder() and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = compile_cache_folder()
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from fashionlab.errors import FashionlabError  # noqa: E402

__version__ = "0.1.0"

from fashionlab.datasets import FASHION_MNIST  # noqa: E402

CLASS_NAMES = FASHION_MNIST.class_names  # the default data set's (a run's own come from its data set)

# The notebook API (fashionlab.notebook), imported when first used: `import fashionlab` stays quick.
NOTEBOOK_NAMES = ("train", "lr_find", "compare", "sweep", "ensemble", "runs", "Run", "Comparison", "Sweep", "LrFind")


def __getattr__(name: str):
    if name in NOTEBOOK_NAMES:
        from fashionlab import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'fashionlab' has no attribute {name!r}")


__all__ = ["CLASS_NAMES", "FashionlabError", "__version__", *NOTEBOOK_NAMES]
