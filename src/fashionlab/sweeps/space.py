"""A sweep's search space: the file, read and checked, and each searched range as Optuna's distribution.

    space = load_space("examples/sweep-best-mlp.toml")
    config = space.config({"width": 512, "dropout": 0.2}, "best-mlp-3")
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashionlab import recipes
from fashionlab.config import FIELDS, TYPES, TrainConfig, field_type, validate_field
from fashionlab.errors import ConfigError, did_you_mean
from fashionlab.files import read_text
from fashionlab.records import shown

if TYPE_CHECKING:
    import optuna

MAX_SPACE_BYTES = 64 * 1024
INSTALL_HINT = "pip install 'fashionlab[sweep]'"
SPACE_KEYS = ("description", "recipe", "train", "search")


def require_optuna() -> None:
    """Optuna, of the sweep extra, or a ConfigError saying how to install it."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError(f"a sweep needs the optuna package: {INSTALL_HINT}") from None


# Keys a sweep must not search, and why.
UNSEARCHABLE = {
    "name": "the sweep names its trials",
    "seed": "trials share the base config's seed (compare the winner over seeds afterwards)",
    "validation_size": "every trial must be judged on the same validation images",
    "train_samples": "every trial must be judged on the same data",
    "engine": "it changes only the speed, not the result",
    "dataset": "every trial must be judged on the same data",
}
RANGE_KEYS = ("min", "max", "log", "step")


@dataclass(frozen=True)
class Space:
    """A space file read and checked: the config trials start from, and what they search."""

    name: str
    description: str
    base: TrainConfig
    search: dict[str, optuna.distributions.BaseDistribution]
    path: Path
    recipe: str | None = None  # the named recipe `base` starts from

    def settings(self) -> dict[str, Any]:
        """What defines the trials, as JSON: a study refuses to go on with anything else."""
        from optuna.distributions import distribution_to_json

        return {"base": self.base.to_dict(), "search": {k: json.loads(distribution_to_json(d))
                                                        for k, d in self.search.items()}}

    def config(self, params: dict[str, Any], name: str) -> TrainConfig:
        """A trial's config: the base with the trial's values (a ConfigError if they do not go together)."""
        return self.base.replace(**params, name=name)


def load_space(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Space:
    """A space file, every part checked before any training; `overrides`: config keys set for every
    trial over the file's [train] (as `sweep --epochs 5` does), never a key the file searches."""
    path = Path(path)
    text = read_text(path, what="sweep space", error=ConfigError, limit=MAX_SPACE_BYTES).removeprefix("\ufeff")
    try:
        table = tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"sweep space {path} nests too deeply; it is not a sweep space") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sweep space {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(table) - set(SPACE_KEYS))
    if unknown:
        raise ConfigError(f"sweep space {path}: unknown key(s) {', '.join(unknown)}; a space holds "
                          f"{', '.join(SPACE_KEYS[:-1])} and a [search] table")
    description, recipe = table.get("description", ""), table.get("recipe")
    fixed, search = table.get("train", {}), table.get("search")
    if not isinstance(description, str):
        raise ConfigError(f"sweep space {path}: description must be text")
    if recipe is not None and not isinstance(recipe, str):
        raise ConfigError(f"sweep space {path}: recipe must be a recipe's name (`fashionlab recipes` lists them)")
    if not isinstance(fixed, dict):
        raise ConfigError(f"sweep space {path}: [train] must be a table of config keys")
    if not isinstance(search, dict) or not search:
        raise ConfigError(f"sweep space {path} needs a [search] table with at least one key, e.g. "
                          f"dropout = [0.0, 0.5]")
    start = recipes.get(recipe).config() if recipe is not None else TrainConfig()
    try:
        base = start.replace(**fixed)
    except ConfigError as exc:
        raise ConfigError(f"sweep space {path} [train]: {exc}") from None
    overrides = dict(overrides or {})
    searched = sorted(set(overrides) & set(search))
    if searched:
        raise ConfigError(f"`{searched[0]}` is searched by sweep space {path} ([search] {searched[0]}): change its "
                          f"range there, or leave `{searched[0]}` out", terms=[searched[0]])
    base = base.replace(**overrides)
    distributions = {key: _distribution(key, spec, f"sweep space {path} [search]") for key, spec in search.items()}
    both = sorted(set(fixed) & set(search))
    if both:
        raise ConfigError(f"sweep space {path}: {both[0]} is both fixed in [train] and searched in [search]; "
                          f"keep one")
    return Space(path.stem, description.strip(), base, distributions, path, recipe)


def _distribution(key: str, spec: Any, where: str) -> optuna.distributions.BaseDistribution:
    """[min, max], {min, max, log, step} or {choices = [...]}, checked against the config key."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if key not in FIELDS:
        raise ConfigError(f"{where}: unknown config key {shown(key)}{did_you_mean(key, FIELDS)}; "
                          f"`fashionlab train --help` lists them")
    if key in UNSEARCHABLE:
        raise ConfigError(f"{where}: {key} cannot be searched; {UNSEARCHABLE[key]}")
    kind = field_type(TYPES[key])
    if isinstance(spec, list) and len(spec) == 2:
        spec = {"min": spec[0], "max": spec[1]}
    if not isinstance(spec, dict) or not spec or not (set(spec) <= set(RANGE_KEYS) or set(spec) == {"choices"}):
        raise ConfigError(f"{where}: {key} must be [min, max], {{min = ..., max = ..., log = true, step = ...}} "
                          f"or {{choices = [...]}}")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list):
            raise ConfigError(f"{where}: {key}'s choices must be a list of values")
        try:
            choices = [validate_field(FIELDS[key], c) for c in choices]
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if len(choices) < 2 or len(set(choices)) != len(choices):
            raise ConfigError(f"{where}: {key}'s choices must be at least two different values (a single value "
                              f"belongs in [train])")
        return CategoricalDistribution(choices)
    if kind.choices is not None or kind.base not in (int, float):
        raise ConfigError(f"{where}: {key} takes one of a set of values; write {key} = {{choices = [...]}}")
    if "min" not in spec or "max" not in spec:
        raise ConfigError(f"{where}: {key} needs both min and max")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: {key}'s log must be true or false")
    try:
        low, high = (validate_field(FIELDS[key], spec[end]) for end in ("min", "max"))
        if step is not None:
            step = validate_field(FIELDS[key], step)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not low < high:
        raise ConfigError(f"{where}: {key}'s min ({low}) must be below its max ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: {key} on a log scale needs a min above 0, got {low}")
    if log and step is not None:
        raise ConfigError(f"{where}: {key}: choose log or step, not both")
    if step is not None and not 0 < step <= high - low:
        raise ConfigError(f"{where}: {key}'s step must be above 0 and at most max - min")
    if step is not None and not math.isclose(round((high - low) / step) * step, high - low, abs_tol=1e-9 * high):
        raise ConfigError(f"{where}: {key}'s step ({step}) must divide max - min ({high} - {low}) into whole steps")
    if kind.base is int:
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(low, high, log=log, step=step)


def contains(distribution: optuna.distributions.BaseDistribution, value: Any) -> bool:
    """Whether `value` is one of the distribution's values, as Optuna judges a trial's: Optuna's one public
    check of it is the one `create_trial` makes of the trial it builds (the distribution's own test,
    `_contains`, is private)."""
    from optuna.trial import TrialState, create_trial

    try:
        create_trial(state=TrialState.RUNNING, params={"value": value}, distributions={"value": distribution})
    except (ValueError, TypeError):
        return False
    return True


def describe(distribution: optuna.distributions.BaseDistribution) -> tuple[str, str]:
    """A searched range in words ("0.0005 to 0.01, log scale"), and its scale: log, linear or choice."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return "one of " + ", ".join(map(str, distribution.choices)), "choice"
    d: Any = distribution
    text = f"{d.low:g} to {d.high:g}"
    if d.log:
        return text + ", log scale", "log"
    if d.step is not None and d.step != 1:
        text += f", step {d.step:g}"
    return text, "linear"
