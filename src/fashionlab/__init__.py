"""fashionlab: the Fashion-MNIST batch-normalization tutorial as a tool.

    python -m fashionlab train --epochs 10
"""

import os

# Keras reads its backend once, at first import: default to JAX unless the user chose.
os.environ.setdefault("KERAS_BACKEND", "jax")

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
