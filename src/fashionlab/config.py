"""The one training configuration: its defaults are the tutorial's recipe.

    config = load_config("run.toml", overrides={"epochs": 3})
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fashionlab import FashionlabError

BATCH_NORM_CHOICES = ("after", "before", "none")
ACTIVATION_CHOICES = ("relu", "selu", "elu", "tanh", "sigmoid", "gelu", "swish")
OPTIMIZER_CHOICES = ("sgd", "adam", "rmsprop", "nadam", "adamw")
ENGINE_CHOICES = ("auto", "compiled", "keras")
INITIALIZER_CHOICES = ("glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "lecun_normal")


class ConfigError(FashionlabError):
    """A configuration key or value is not acceptable."""


def opt(default: Any, help: str) -> Any:
    """A config field with its one-line help, which the CLI shows."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults reproduce the tutorial."""

    name: str = opt("tutorial", "label used in the run directory name and reports")
    depth: int = opt(20, "hidden Dense layers")
    width: int = opt(100, "units per hidden layer")
    activation: str = opt("relu", "hidden-layer activation")
    batch_norm: str = opt("after", "after: Dense(act)+BN (tutorial); before: Dense+BN+act; none")
    kernel_initializer: str = opt("glorot_uniform", "Dense kernel initializer; SELU wants lecun_normal")
    scale_inputs: bool = opt(True, "standardize pixels with the training set's mean and std")
    optimizer: str = opt("sgd", "the tutorial compiles with optimizer='sgd'")
    learning_rate: float = opt(0.01, "learning rate (Keras' SGD default)")
    batch_size: int = opt(32, "images per step (Keras' fit default)")
    epochs: int = opt(10, "passes over the training set")
    seed: int = opt(42, "same seed, same machine: same history")
    shuffle: bool = opt(True, "reshuffle the training set every epoch, as fit does")
    validation_size: int = opt(5000, "the first N training images are held out for validation")
    train_samples: int = opt(0, "use only the first N remaining training images; 0 = all")
    engine: str = opt("auto", "auto: compiled on JAX, else keras; compiled: on-device loop; keras: model.fit")

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        _check_choice("batch_norm", self.batch_norm, BATCH_NORM_CHOICES)
        _check_choice("activation", self.activation, ACTIVATION_CHOICES)
        _check_choice("optimizer", self.optimizer, OPTIMIZER_CHOICES)
        _check_choice("kernel_initializer", self.kernel_initializer, INITIALIZER_CHOICES)
        _check_choice("engine", self.engine, ENGINE_CHOICES)
        for key in ("depth", "width", "batch_size", "epochs", "validation_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.train_samples < 0:
            raise ConfigError(f"train_samples must be 0 (all) or positive, got {self.train_samples}")
        if self.seed < 0:
            raise ConfigError(f"seed must be 0 or positive, got {self.seed}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"learning_rate must be a positive finite number, got {self.learning_rate}")
        if not self.name or any(c in self.name for c in '/\\:*?"<>|') or self.name.startswith("."):
            raise ConfigError(f"name {self.name!r} cannot be part of a directory name; use letters, digits, - or _")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return from_dict({**self.to_dict(), **changes})


def _check_type(key: str, value: Any, type_name: str) -> None:
    expected = {"int": int, "float": (int, float), "str": str, "bool": bool}[type_name]
    # bool is a subclass of int in Python: True must not pass as a depth.
    if isinstance(value, bool) and type_name != "bool" or not isinstance(value, expected):
        raise ConfigError(f"{key} must be {type_name}, got {type(value).__name__} {value!r}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a config, rejecting unknown keys and wrong types with one clear message."""
    unknown = sorted(set(values) - set(field_names()))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; valid keys: {', '.join(field_names())}")
    values = {k: float(v) if k == "learning_rate" and type(v) is int else v for k, v in values.items()}
    return TrainConfig(**values)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the file at `path` (TOML, or a run's config.json), then `overrides`."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; check the path given to --config") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.').upper() or 'TOML'}: "
                              f"{exc}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a table of keys and values")
        if isinstance(values.get("train"), dict) and len(values) == 1:
            values = values["train"]  # a [train] table is accepted too
    values.update(overrides or {})
    return from_dict(values)
