"""Named recipes: TOML files shipped with fashionlab, each a config with a one-line description
and the figures measured for it on the reference machine.

    config = get("fast-mlp").config(overrides={"epochs": 3})

A recipe file is what `train --config` reads too: a `description`, a [train] table of config
keys and, once measured, a [measured] table written from a `compare` run on the reference CPU
(see its `command`) and a [measured_gpu] table from one on a GPU machine, each naming the data set it
was measured on. A recipe trains on any data set: `dataset` is not one of its keys.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired, TypedDict

from fashionlab.config import RECIPE_TABLES, TrainConfig, from_dict
from fashionlab.datasets import BUILT_IN
from fashionlab.errors import ConfigError, did_you_mean
from fashionlab.records import Fraction, Range, Seconds, first_problem

FOLDER = Path(__file__).with_name("recipes")


class Measured(TypedDict):  # (no `from __future__ import annotations` here: it hides NotRequired)
    """A recipe's [measured] table: test accuracy over seeds and the time of the whole train call."""

    test_accuracy_mean: Fraction
    test_accuracy_std: Fraction
    test_accuracy_worst: Fraction
    seconds: Seconds  # mean wall time of one `train` call, compilation included
    seconds_cold: NotRequired[Seconds]  # one `train` call with the compile cache empty
    seeds: Annotated[int, Range(1, 1000)]
    dataset: Literal[tuple(BUILT_IN)]  # the data set measured on; a recipe trains on any (`--dataset`)
    machine: str
    command: str


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    values: dict[str, Any]  # the [train] table
    measured: Measured | None  # on the reference machine, a 2-core CPU
    measured_gpu: Measured | None
    path: Path

    def config(self, overrides: dict[str, Any] | None = None) -> TrainConfig:
        return from_dict({"name": self.name, **self.values, **(overrides or {})})


MEASURED_TABLES = RECIPE_TABLES[2:]  # ("measured", "measured_gpu")


def names() -> list[str]:
    return sorted(path.stem for path in FOLDER.glob("*.toml"))


def get(name: str) -> Recipe:
    """The shipped recipe `name`; a ConfigError naming the recipes there are otherwise."""
    if name not in names():
        raise ConfigError(f"no recipe named {name!r}{did_you_mean(name, names())}; choose from {', '.join(names())} "
                          f"(`fashionlab recipes` lists them)")
    return load(FOLDER / f"{name}.toml")


def load(path: Path) -> Recipe:
    """A recipe file, every part checked: its config keys, its description, its measured figures."""
    import tomllib

    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc}") from None
    values, description = table.get("train"), table.get("description")
    if not isinstance(values, dict) or set(table) - set(RECIPE_TABLES):
        raise ConfigError(f"recipe {path} must hold `description`, a [train] table and optionally "
                          f"[measured] and [measured_gpu]")
    if not isinstance(description, str) or not description.strip():
        raise ConfigError(f"recipe {path} needs a one-line `description`")
    if values.get("name", path.stem) != path.stem:  # the name a copy trained with --config keeps
        raise ConfigError(f"recipe {path}: its [train] name must be {path.stem!r}, the file's name")
    for key in MEASURED_TABLES:
        problem = None if key not in table else first_problem(table[key], Measured)
        if problem:
            raise ConfigError(f"recipe {path}: [{key}] {problem}")
    recipe = Recipe(path.stem, description.strip(), values, table.get("measured"), table.get("measured_gpu"),
                    path)
    recipe.config()  # its keys are valid
    return recipe


UNCOMPARED = ("name", "seed")  # a label, and the draw: not what a recipe is


def known(recipe: str | None) -> str | None:
    """`recipe` if it names a shipped recipe, else None (a run file may name anything)."""
    return recipe if isinstance(recipe, str) and recipe in names() else None


def reference(recipe: str | None) -> TrainConfig:
    """What a run's settings are measured against: its recipe's, or the tutorial's (the defaults)."""
    return get(recipe).config() if known(recipe) else TrainConfig()


def changes_from(config: TrainConfig, recipe: str | None) -> dict[str, tuple[Any, Any]]:
    """The settings of `config` that differ from its recipe's (or the tutorial's), as
    {key: (the recipe's value, this value)}, in the config's order; the name and seed aside."""
    base = reference(recipe)
    return {key: (getattr(base, key), value) for key, value in config.to_dict().items()
            if key not in UNCOMPARED and value != getattr(base, key)}


def shown_value(key: str, value: Any) -> str:
    """A setting as people read it: 0 training samples is all of them, 0 patience is no early stopping."""
    if key == "train_samples" and value == 0:
        return "all"
    if key == "early_stopping" and value == 0:
        return "off"
    return str(value).lower() if isinstance(value, bool) else str(value)


def changes_text(changes: dict[str, tuple[Any, Any]]) -> str:
    """{key: (before, after)} as "epochs 10 → 2, train_samples all → 10000"."""
    return ", ".join(f"{k} {shown_value(k, a)} → {shown_value(k, b)}" for k, (a, b) in changes.items())


def all_recipes() -> list[Recipe]:
    return [get(name) for name in names()]


def listing() -> str:
    """Every recipe, one line each: name, measured test accuracy and time, the same on a GPU,
    description; the tutorial first, then the fastest first (those not measured yet last)."""
    rows = []
    ordered = sorted(all_recipes(), key=lambda r: (r.name != "tutorial", r.measured is None,
                                                   r.measured["seconds"] if r.measured else 0, r.name))
    for recipe in ordered:
        m = recipe.measured
        if m is None:
            accuracy, seconds = "not measured on the CPU" if recipe.measured_gpu else "not measured yet", ""
        else:
            accuracy = (f"{m['test_accuracy_mean']:.4f} ± {m['test_accuracy_std']:.4f} "
                        f"(worst {m['test_accuracy_worst']:.4f}, {m['seeds']} seeds)")
            seconds = f"{m['seconds']:.0f} s" if m["seconds"] >= 10 else f"{m['seconds']:.1f} s"
            if "seconds_cold" in m:
                seconds += f" ({m['seconds_cold']:.0f} s cold)"
        gpu = recipe.measured_gpu
        on_gpu = f"{gpu['test_accuracy_mean']:.4f} in {gpu['seconds']:.0f} s" if gpu else ""
        rows.append((recipe.name, accuracy, seconds, on_gpu, recipe.description))
    header = ("recipe", "test accuracy", "time", "on a GPU", "description")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4]
             for row in [header, *rows]]
    machines = [f"{label}: " + "; ".join(sorted({f"{BUILT_IN[m['dataset']].title}, {m['machine']}"
                                                  for m in figures if m}))
                for label, figures in (("measured on", [r.measured for r in ordered]),
                                       ("on a GPU", [r.measured_gpu for r in ordered])) if any(figures)]
    if machines:
        lines += ["", *machines,
                  "time: the whole train call (data, compilation, training, test report), mean over the seeds"]
    return "\n".join(lines)
