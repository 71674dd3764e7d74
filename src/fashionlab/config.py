"""The one training configuration: its defaults are the tutorial's recipe.

    config = load_config("run.toml", overrides={"epochs": 3})

Each field's type annotation is its contract: `validate_field` checks a value against it (and
against the bounds in the field's metadata), and the CLI derives its options from the same
annotations. A new key is one line here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from fashionlab.datasets import dataset_problem
from fashionlab.errors import ConfigError, did_you_mean
from fashionlab.files import read_text
from fashionlab.records import shown

Activation = Literal["relu", "selu", "elu", "tanh", "sigmoid", "gelu", "swish"]
BatchNorm = Literal["after", "before", "none"]
Initializer = Literal["glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "lecun_normal"]
Optimizer = Literal["sgd", "adam", "rmsprop", "nadam", "adamw"]
Engine = Literal["auto", "compiled", "keras"]
Family = Literal["mlp", "cnn"]
Schedule = Literal["constant", "cosine", "one_cycle"]
TestTime = Literal["none", "mirror", "mirror-shift"]

# A name becomes part of file names, plot titles, CSV cells and terminal lines: letters (any
# script), digits, "_", "-" and "." only, so that none of them can read it as anything else.
NAME_PATTERN = re.compile(r"[^\W_][\w.-]{0,63}")
MAX_CONFIG_BYTES = 1024 * 1024
SEED_MAX = 2**32 - 1  # NumPy's and Keras' seeding take 32-bit seeds
MIN_MAX_NORM = 0.01


def opt(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
        above: float | None = None, check: Callable[[Any], str | None] | None = None) -> Any:
    """A config field with its one-line help (the CLI shows it) and its bounds: `minimum` and
    `maximum` (inclusive), `above` (exclusive) and `check`, which returns what is wrong or None."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "maximum": maximum, "above": above,
                                            "check": check})


def max_norm_problem(value: float) -> str | None:
    if 0 < value < MIN_MAX_NORM:
        return (f"max_norm {value:g} would leave every hidden unit almost no weight; use 0 (off) or at least "
                f"{MIN_MAX_NORM:g} (1 to 4 is usual)")
    return None


def name_problem(name: str) -> str | None:
    if not NAME_PATTERN.fullmatch(name) or len(name.encode("utf-8", "surrogatepass")) > 64:
        return (f"name {shown(name)} cannot be used: it must start with a letter or digit, hold only letters, "
                f"digits, '_', '-' or '.', and be at most 64 bytes long in UTF-8")
    return None


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults reproduce the tutorial."""

    name: str = opt("tutorial", "label used in the run directory name and reports", check=name_problem)
    model: Family = opt("mlp", "mlp: depth x Dense (the tutorial); cnn: conv blocks, then depth x Dense")
    # Keras builds and reloads a network layer by layer recursively: 300 blocks of Dense, BN and
    # activation pass Python's recursion limit; 250 leaves a margin.
    depth: int = opt(20, "hidden Dense layers (cnn: after the convolutions; 0 = none)", minimum=0, maximum=250)
    width: int = opt(100, "units per hidden Dense layer", minimum=1, maximum=65536)
    activation: Activation = opt("relu", "hidden-layer activation")
    batch_norm: BatchNorm = opt("after", "after: Dense(act)+BN (tutorial); before: Dense+BN+act; none")
    kernel_initializer: Initializer = opt("glorot_uniform", "Dense kernel initializer; SELU wants lecun_normal")
    dropout: float = opt(0.0, "dropout rate after each hidden Dense block (and each cnn block)", minimum=0,
                         maximum=0.9)
    alpha_dropout: float = opt(0.0, "AlphaDropout rate after each hidden Dense block, for selu networks",
                               minimum=0, maximum=0.9)
    max_norm: float = opt(0.0, "max-norm regularization: after each step, scale every hidden unit's incoming "
                               "weights (Dense: a kernel column; conv: a filter) back to this L2 norm when above "
                               "it; 0 = off", minimum=0, maximum=1000, check=max_norm_problem)
    filters: int = opt(32, "cnn: filters of the first conv block, doubled in each next block", minimum=1,
                       maximum=1024)
    conv_blocks: int = opt(2, "cnn: conv blocks, each halving the image with 2x2 max pooling", minimum=1,
                           maximum=4)
    convs_per_block: int = opt(1, "cnn: 3x3 convolutions (each with BN and activation) per block", minimum=1,
                               maximum=4)
    whiten: bool = opt(False, "cnn: a frozen first layer whitening 2x2 patches (8 filters, computed from the "
                              "training images), then the activation")
    scale_inputs: bool = opt(True, "standardize pixels with the training set's mean and std")
    optimizer: Optimizer = opt("sgd", "the tutorial compiles with optimizer='sgd'")
    learning_rate: float = opt(0.01, "learning rate (Keras' SGD default); the peak of a schedule", above=0)
    momentum: float = opt(0.0, "sgd: momentum (Nesterov)", minimum=0, maximum=0.999)
    weight_decay: float = opt(0.0, "decoupled weight decay, per step and unit of learning rate", minimum=0,
                              maximum=1)
    schedule: Schedule = opt("constant", "learning rate over training: constant, cosine (to 0), one_cycle "
                                         "(up from lr/25, then cosine to 0)")
    warmup_epochs: float = opt(0.0, "linear warm-up from 0 (one_cycle: lr/25) over this many epochs; "
                                    "one_cycle's default is 30% of training", minimum=0, maximum=100_000)
    label_smoothing: float = opt(0.0, "train on targets (1 - s) one-hot + s/10", minimum=0, maximum=0.5)
    augment_shift: int = opt(0, "shift each training image by up to N pixels, a new draw every step", minimum=0,
                             maximum=8)
    augment_flip: bool = opt(False, "flip half the training images left-right, a new draw every step")
    augment_flip_alternate: bool = opt(False, "with augment_flip: mirror each image in every other epoch (a random "
                                              "half in the first) instead of by a new draw every step")
    ema: float = opt(0.0, "keep an exponential moving average of the weights (this momentum per step, e.g. 0.999); "
                          "validate, test and save it instead of the last weights; 0 = off", minimum=0,
                     maximum=0.99999)
    tta: TestTime = opt("none", "test-time augmentation: average the probabilities of each image and its mirror "
                                "image (mirror), and of both shifted 1 pixel down-right and up-left (mirror-shift)")
    temperature_scale: bool = opt(False, "after training, fit one temperature on the validation split (minimizing "
                                         "its cross-entropy) and fold it into the last layer, so the saved and "
                                         "exported model give calibrated probabilities (the same classes)")
    bn_lr_scale: float = opt(1.0, "sgd: BatchNormalization's scale and offset learn at this multiple of the "
                                  "learning rate", above=0, maximum=1000)
    batch_size: int = opt(32, "images per step (Keras' fit default)", minimum=1, maximum=10**7)
    epochs: int = opt(10, "passes over the training set", minimum=1, maximum=100_000)
    early_stopping: int = opt(0, "stop after N epochs without a better validation accuracy and keep the best "
                                 "epoch's weights; 0 = off", minimum=0, maximum=100_000)
    seed: int = opt(42, "same seed, same machine: same history", minimum=0, maximum=SEED_MAX)
    shuffle: bool = opt(True, "reshuffle the training set every epoch, as fit does")
    validation_size: int = opt(5000, "the first N training images are held out for validation", minimum=1,
                               maximum=10**7)
    train_samples: int = opt(0, "use only the first N remaining training images; 0 = all", minimum=0, maximum=10**7)
    engine: Engine = opt("auto", "auto: compiled on JAX, else keras; compiled: on-device loop; keras: model.fit")
    dataset: str = opt("fashion-mnist", "fashion-mnist, or a folder (a path with a /) holding the four IDX files "
                       "and classes.txt, one class name a line", check=dataset_problem)

    def __post_init__(self) -> None:
        for f in fields(self):
            # frozen: the validated value (an int given for a float becomes a float) goes in directly
            object.__setattr__(self, f.name, validate_field(f, getattr(self, f.name)))
        problem = combination_problem(self)
        if problem:
            raise ConfigError(problem)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return from_dict({**self.to_dict(), **changes})


def compiled_only(config: TrainConfig) -> str | None:
    """What `config` asks that only the compiled engine does, as a refusal for Keras' fit, or None."""
    asked = [key for key, off in (("augment_shift", 0), ("augment_flip", False), ("bn_lr_scale", 1.0), ("ema", 0.0))
             if getattr(config, key) != off]
    if not asked:
        return None
    return (f"{' and '.join(asked)} run{'s' if len(asked) == 1 else ''} inside the compiled engine, which Keras' "
            f"fit does not; use engine 'compiled' or 'auto' on the JAX backend, or turn "
            f"{'it' if len(asked) == 1 else 'them'} off")


def combination_problem(config: TrainConfig) -> str | None:
    """What is wrong with the keys together (each alone is valid), or None."""
    if config.engine == "keras" and (problem := compiled_only(config)):
        return problem
    if config.dropout and config.alpha_dropout:
        return "choose dropout or alpha_dropout, not both"
    if config.momentum and config.optimizer != "sgd":
        return f"momentum is for optimizer sgd; {config.optimizer} keeps its own moments (set momentum to 0)"
    if config.warmup_epochs >= config.epochs:
        return f"warmup_epochs ({config.warmup_epochs:g}) must be fewer than epochs ({config.epochs})"
    if config.whiten and config.model != "cnn":
        return "whiten is a cnn's first layer; set model = \"cnn\" or whiten = false"
    if config.augment_flip_alternate and not config.augment_flip:
        return "augment_flip_alternate says how augment_flip mirrors; set augment_flip = true too"
    if config.bn_lr_scale != 1 and config.optimizer != "sgd":
        return (f"bn_lr_scale is for optimizer sgd: {config.optimizer} divides each step by the gradient's size, "
                f"which a scale does not change (set bn_lr_scale to 1)")
    if config.bn_lr_scale != 1 and (config.batch_norm == "none" or config.model == "mlp" and config.depth == 0):
        return "bn_lr_scale scales BatchNormalization's learning rate, and this network has no BatchNormalization"
    if config.model == "mlp" and config.depth == 0 and (config.dropout or config.alpha_dropout):
        return "a network of depth 0 has no hidden layer to apply dropout to"
    return None


FIELDS = {f.name: f for f in fields(TrainConfig)}
TYPES = typing.get_type_hints(TrainConfig)


@dataclass(frozen=True)
class FieldType:
    """What a field's annotation allows: a base type, optionally a fixed set of choices, optionally None."""

    base: type
    choices: tuple[Any, ...] | None = None
    optional: bool = False


def field_type(annotation: Any) -> FieldType:
    """bool, int, float, str, a Literal of one of them, or either of those `| None`."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(rest) < len(typing.get_args(annotation))
        if len(rest) != 1:
            raise TypeError(f"unsupported config annotation {annotation}")
        annotation = rest[0]
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        if len({type(c) for c in choices}) != 1:
            raise TypeError(f"unsupported config annotation {annotation}: choices of one type only")
        return FieldType(type(choices[0]), choices, optional)
    if annotation not in (bool, int, float, str):
        raise TypeError(f"unsupported config annotation {annotation}")
    return FieldType(annotation, None, optional)


def validate_field(f: dataclasses.Field, value: Any) -> Any:
    """The value, checked against the field's type and bounds; an int given for a float becomes a float."""
    kind = field_type(TYPES[f.name])
    if value is None and kind.optional:
        return None
    # bool is a subclass of int in Python: True must not pass as a depth.
    wrong_type = isinstance(value, bool) and kind.base is not bool
    if kind.base is float:
        wrong_type = wrong_type or not isinstance(value, (int, float))
    else:
        wrong_type = wrong_type or not isinstance(value, kind.base)
    if wrong_type:
        raise ConfigError(f"{f.name} must be {kind.base.__name__}, got {type(value).__name__} {shown(value)}")
    if kind.base is float:
        try:
            value = float(value)
        except OverflowError:  # an int too large for any float
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value}")
    if kind.choices is not None and value not in kind.choices:
        raise ConfigError(f"{f.name} must be one of {', '.join(map(str, kind.choices))}; got {shown(value)}")
    meta = f.metadata
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise ConfigError(f"{f.name} must be at least {meta['minimum']}, got {shown(value)}")
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise ConfigError(f"{f.name} must be at most {meta['maximum']:,}, got {shown(value)}")
    if meta.get("above") is not None and value <= meta["above"]:
        raise ConfigError(f"{f.name} must be greater than {meta['above']}, got {shown(value)}")
    problem = meta["check"](value) if meta.get("check") else None
    if problem:
        raise ConfigError(problem)
    return value


def field_names() -> list[str]:
    return list(FIELDS)


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a config, rejecting unknown keys and wrong types with one clear message."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        said = ", ".join(f"{key}{did_you_mean(key, FIELDS, quote=False)}" for key in unknown)
        raise ConfigError(f"unknown config key(s): {said}; valid keys: {', '.join(FIELDS)}")
    return TrainConfig(**values)


# What a recipe file holds (recipes.py): its config is the [train] table.
RECIPE_TABLES = ("train", "description", "measured", "measured_gpu")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file's table: TOML (plain keys, a [train] table, or a recipe file) or a run's
    config.json."""
    path = Path(path)
    text = read_text(path, what="config file", error=ConfigError, limit=MAX_CONFIG_BYTES)
    try:
        values = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deeply; it is not a fashionlab config") from None
    except (tomllib.TOMLDecodeError, ValueError) as exc:  # ValueError: JSON, or an int too long
        raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.').upper() or 'TOML'}: "
                          f"{exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a table of keys and values")
    if isinstance(values.get("train"), dict) and set(values) <= set(RECIPE_TABLES):
        values = values["train"]  # a [train] table, alone or in a recipe
    return values


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the file at `path` (TOML, or a run's config.json), then `overrides`."""
    values = read_config_file(path) if path is not None else {}
    values.update(overrides or {})
    return from_dict(values)


def with_changes(base: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    """`base` with `changes`, named by the `name` among them if any, else by base's name and what
    changed ("tutorial-batch_norm-before"), or "<name>-custom" when that would be too long."""
    changed = base.replace(**changes)
    differences = [(k, v) for k, v in changed.to_dict().items() if k != "name" and v != getattr(base, k)]
    if "name" in changes or not differences:
        return changed
    said = "-".join(f"{k}-{str(v).lower().replace('e+', 'e')}" for k, v in differences)  # 1e+16: 1e16, not 1e-16
    for name in (re.sub(r"[^\w.-]", "-", f"{base.name}-{said}"), f"{base.name}-custom"):
        if name_problem(name) is None:
            return changed.replace(name=name)
    return changed


# --- what a config costs ---------------------------------------------------------------------

# Optimizer state per weight (SGD without momentum keeps none), for the memory estimate.
OPTIMIZER_SLOTS = {"sgd": 0, "rmsprop": 1, "adam": 2, "nadam": 2, "adamw": 2}


def conv_channels(config: TrainConfig) -> list[int]:
    """Output channels of each convolution of a cnn, in order."""
    return [config.filters * 2**block for block in range(config.conv_blocks) for _ in range(config.convs_per_block)]


WHITENED = 8  # channels out of the whitening layer: 4 patch directions and their negatives


def _conv_sizes(config: TrainConfig) -> tuple[int, list[int]]:
    """A cnn's flattened feature count, and each convolution's output size per image (H x W x C)."""
    sizes, side = [], 27 if config.whiten else 28  # whitening's 2 x 2 'valid' patches: 27 x 27
    for block in range(config.conv_blocks):
        sizes += [side * side * config.filters * 2**block] * config.convs_per_block
        side //= 2
    return side * side * config.filters * 2 ** (config.conv_blocks - 1), sizes


def parameter_estimate(config: TrainConfig, classes: int = 10) -> int:
    """The network's weight count, from the config alone (build_model gives the same)."""
    norm = 4 if config.batch_norm != "none" else 0  # gamma, beta, moving mean and variance per unit
    features, total = 28 * 28, 0
    if config.model == "cnn":
        before = WHITENED if config.whiten else 1
        total += 4 * WHITENED if config.whiten else 0
        for channels in conv_channels(config):
            total += 9 * before * channels + channels + norm * channels
            before = channels
        features = _conv_sizes(config)[0]
    for _ in range(config.depth):
        total += features * config.width + config.width + norm * config.width
        features = config.width
    return total + features * classes + classes


TTA_VIEW_COUNT = {"none": 1, "mirror": 2, "mirror-shift": 6}  # len(layers.TTA_VIEWS[...]); test_layers checks
VALIDATION_BATCH = 500  # images per model call in the compiled engine's validation (each view a row)


def forward_flops(config: TrainConfig, classes: int = 10) -> int:
    """Floating-point operations (a multiply-add counts 2) of the network's weighted layers on one
    view of one image: each convolution's and each Dense layer's products. Biases, normalization,
    activations and pooling add well under 1 % and are left out, as FLOP counts usually do."""
    features, total = 28 * 28, 0
    if config.model == "cnn":
        before = WHITENED if config.whiten else 1
        total += 27 * 27 * WHITENED * 4 if config.whiten else 0  # 2 x 2 x 1 products per output value
        for channels, size in zip(conv_channels(config), _conv_sizes(config)[1]):
            total += size * 9 * before  # each output value: a 3 x 3 x channels-in product
            before = channels
        features = _conv_sizes(config)[0]
    for _ in range(config.depth):
        total += features * config.width
        features = config.width
    return 2 * (total + features * classes)


def run_flops(config: TrainConfig, train_images: int, valid_images: int, test_images: int, classes: int = 10) -> int:
    """A whole run's arithmetic: each epoch's training (a backward pass costs twice the forward
    one) and validation, then the test set, every prediction over the test-time views."""
    forward, views = forward_flops(config, classes), TTA_VIEW_COUNT[config.tta]
    per_epoch = 3 * forward * train_images + views * forward * valid_images
    return config.epochs * per_epoch + views * forward * test_images


def training_bytes(config: TrainConfig, train_images: int) -> int:
    """About how much memory training `config` on `train_images` images takes: weights, their
    gradients, optimizer state and a compiled copy, the activations of a batch (kept for the
    backward pass), and the images on the device. Within a factor of two or so; used to refuse
    networks that cannot fit before building them."""
    slots = OPTIMIZER_SLOTS[config.optimizer] + (1 if config.momentum else 0) + (1 if config.ema else 0)
    weights = 4 * parameter_estimate(config) * (3 + slots)
    units = config.width * config.depth + (sum(_conv_sizes(config)[1]) if config.model == "cnn" else 0)
    rows = max(config.batch_size, 1000, VALIDATION_BATCH * TTA_VIEW_COUNT[config.tta])
    activations = 4 * 4 * rows * units
    return weights + activations + 2 * 28 * 28 * train_images


def describe_network(config: TrainConfig) -> str:
    """The network in a few words: "depth 20 x width 100" or "cnn 32-64, depth 1 x width 128"."""
    dense = f"depth {config.depth} x width {config.width}"
    if config.model == "mlp":
        return dense
    blocks = "-".join(str(config.filters * 2**b) for b in range(config.conv_blocks))
    return f"cnn {blocks} (x{config.convs_per_block}), {dense}"


def check_runnable(config: TrainConfig, *, train_images: int, free_memory: int | None) -> None:
    """Refuse, before any work, a config that the data or this machine cannot run.

    `train_images`: how many images the training file holds, validation included;
    `free_memory`: bytes free now (None: unknown, not checked).
    """
    left = train_images - config.validation_size
    if left < 1:
        raise ConfigError(f"validation_size {config.validation_size:,} leaves no training images out of the "
                          f"{train_images:,} in the data; lower it")
    if config.train_samples > left:
        raise ConfigError(f"train_samples {config.train_samples:,} is more than the {left:,} training images left "
                          f"after validation_size {config.validation_size:,}; lower it, or use 0 for all of them")
    used = config.train_samples or left
    if config.batch_size > used:
        raise ConfigError(f"batch_size {config.batch_size:,} is larger than the {used:,} training images; "
                          f"use at most {used:,}")
    steps = config.epochs * -(-used // config.batch_size)
    horizon = 1 / (1 - config.ema)
    if config.ema and horizon > steps / 3:
        raise ConfigError(f"ema {config.ema:g} averages over about the last {horizon:,.0f} steps, and this run takes "
                          f"{steps:,}: its average would still lean on the initial weights; use at most "
                          f"{max(1 - 3 / steps, 0):.4g} (an average over a third of the run) or train longer")
    need, free = training_bytes(config, used), free_memory
    if free is not None and need > 0.8 * free:
        raise ConfigError(f"a network of {describe_network(config)} "
                          f"({parameter_estimate(config):,} weights) needs about {need / 2**30:.1f} GiB to train, more "
                          f"than the {free / 2**30:.1f} GiB of memory free here; make it smaller")
