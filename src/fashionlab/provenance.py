"""What a result was measured on: library versions and the machine, recorded with every run.

    machine_info()   # {"platform": ..., "cpu": "AMD EPYC ...", "cores": 2, "device": "cpu: cpu"}

Importing this module imports neither Keras nor JAX, so a benchmark's parent process can use it
without claiming the accelerator its contenders need (pass with_device=False).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

from fashionlab import __version__

PACKAGES = ("keras", "jax", "jaxlib", "numpy", "tensorflow", "torch", "scikit-learn")


def library_versions() -> dict[str, str]:
    """Python, fashionlab, the Keras backend in use, and the installed versions of the packages that matter."""
    backend = sys.modules["keras"].backend.backend() if "keras" in sys.modules else os.environ.get("KERAS_BACKEND")
    versions = {"python": platform.python_version(), "fashionlab": __version__, "keras_backend": backend or "jax"}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info(with_device: bool = True) -> dict[str, Any]:
    """CPU model and cores, and (with_device) the accelerator the Keras backend computes on."""
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count()}
    if with_device:
        import keras

        info["device"] = "default"
        if keras.backend.backend() == "jax":
            import jax

            info["device"] = f"{jax.default_backend()}: {jax.devices()[0].device_kind}"
    return info


def available_memory() -> int | None:
    """Bytes of memory free for a new process now (Linux' MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
