"""A learning-rate finder: train from a recipe's initial weights while the learning rate grows
exponentially, step by step, and watch the loss (Smith, 2017, "Cyclical Learning Rates"; fastai's
`lr_find`).

    found = lr_find(recipes.get("fast-mlp").config(), "runs/lr-find")
    found.suggestion        # the learning rate where the smoothed loss is lowest, divided by 10

Each step trains one batch at the next learning rate of a geometric series from `start` to `end`, in
the compiled engine (chunks of steps in one compiled call, as training runs); the step's loss is its
batch's, before the update. The losses are smoothed (an exponential moving average, debiased,
remembering about WINDOW of the steps) and the search stops once the smoothed loss passes DIVERGED
times its lowest, or is no number. The suggestion is the learning rate at the lowest smoothed loss
divided by 10: there the loss still falls fast, and training is well clear of diverging. The
steepest descent (the most negative slope of the smoothed loss against log learning rate, before its
lowest point) is given too. The config's optimizer, batch size, augmentation, dropout and label
smoothing are kept; its schedule is not (each step sets the rate), and nor is `ema`."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashionlab.arguments import checked
from fashionlab.config import TrainConfig, with_changes
from fashionlab.data import DataSource
from fashionlab.errors import ConfigError, Interrupted
from fashionlab.files import check_writable
from fashionlab.interrupts import stop_requests
from fashionlab.rundir import Run, default_run_dir, now

WINDOW = 0.05  # the smoothing's memory, as a share of the steps: a fixed one would lag more in a short search
DIVERGED = 4.0
CHUNK = 25  # steps per compiled call: the divergence check and a stop request are seen between calls
SKIP = 0.05  # the first steps' smoothed loss is mostly its first batches': the steepest slope ignores them
MAX_STEPS = 10_000
COARSE = 100  # a search that diverges sooner than this many steps says its curve is coarse
RATES = (1e-12, 1e6)  # the learning rates a search may span


@dataclass(frozen=True)
class Found:
    """A finished search: every step's learning rate and loss, and what they suggest."""

    folder: Path
    config: TrainConfig
    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    minimum: float
    suggestion: float
    steepest: float | None
    diverged_at: int | None  # the step (from 1) whose smoothed loss showed the divergence
    seconds: float
    asked: tuple[float, float, int]  # start, end, steps

    def notes(self) -> list[str]:
        """What makes the suggestion less sure: the range's ends, too few steps; and how a schedule uses it."""
        said = []
        if self.config.schedule == "one_cycle":
            said.append("this config's schedule (one_cycle) warms up to its learning_rate and decays from it, so "
                        "its peak is usually 3 to 10 times this suggestion (the one-cycle recipes' are 4 to 7 times "
                        "theirs): compare a few with `fashionlab compare`")
        if self.diverged_at is not None and self.diverged_at < COARSE:
            said.append(f"the loss diverged after {self.diverged_at} steps: a curve this short is coarse, and one "
                        f"noisy batch can make its lowest point; give more `steps`")
        if self.minimum == self.learning_rates[0]:
            said.append(f"the loss was lowest at the first learning rate ({self.minimum:.3g}): give a lower `start`")
        if self.diverged_at is None and len(self.losses) > 1:
            said.append(f"the loss had not diverged at the last learning rate ({self.learning_rates[-1]:.3g}): "
                        f"its lowest point may lie beyond; give a higher `end`")
        return said

    def record(self) -> dict[str, Any]:
        return {"suggestion": self.suggestion, "rule": "minimum / 10", "minimum": self.minimum,
                "steepest": self.steepest, "steps": len(self.losses), "diverged_at": self.diverged_at,
                "start": self.asked[0], "end": self.asked[1], "steps_asked": self.asked[2],
                "last_learning_rate": float(self.learning_rates[-1]),
                "seconds": self.seconds, "notes": self.notes()}


def smoothing(steps: int) -> float:
    """The moving average's factor for a search of `steps` steps: a memory of about WINDOW of them."""
    return 1 - 1 / max(WINDOW * steps, 2)


def smooth(losses: np.ndarray, beta: float) -> np.ndarray:
    """The debiased exponential moving average of `losses` (NaN stays NaN from where it appears)."""
    smoothed, average = np.empty(len(losses)), 0.0
    for i, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        smoothed[i] = average / (1 - beta ** (i + 1))
    return smoothed


def diverged(smoothed: np.ndarray) -> int | None:
    """The first step (index) whose smoothed loss passes DIVERGED times the lowest before it, or is no
    number; None when none does."""
    lowest = math.inf
    for i, value in enumerate(smoothed):
        if not math.isfinite(value) or value > DIVERGED * lowest:
            return i
        lowest = min(lowest, value)
    return None


def suggestions(rates: np.ndarray, smoothed: np.ndarray) -> tuple[float, float, float | None]:
    """(the learning rate at the lowest smoothed loss, that / 10, the steepest descent's before it)."""
    lowest = int(np.argmin(smoothed))
    first = int(SKIP * len(smoothed))
    steepest = None
    if lowest - first >= 2:
        slope = np.gradient(smoothed[first:lowest + 1], np.log(rates[first:lowest + 1]))
        steepest = float(rates[first + int(np.argmin(slope))])
    return float(rates[lowest]), float(rates[lowest]) / 10, steepest


@checked(steps=(10, MAX_STEPS), start=RATES, end=RATES)
def lr_find(config: TrainConfig, out: str | Path | None = None, *, data: DataSource = DataSource(),
            start: float = 1e-7, end: float = 10.0, steps: int = 200, verbose: bool = False) -> Found:
    """Search learning rates from `start` to `end` over `steps` training steps of `config`, from its
    seed's initial weights; write lr_find.csv, lr_find.png, lr_find.json and config.json (`config`
    with the suggested learning rate, for `fashionlab train --config`) in `out` (default
    runs/<time>-<name>-lr-find)."""
    from fashionlab.datasets import resolve
    from fashionlab.training import checked_splits, resolve_engine

    if start >= end:
        raise ConfigError(f"`start` ({start:g}) must be below `end` ({end:g})", terms=["start", "end"])
    if resolve_engine("auto") != "compiled":
        raise ConfigError("lr-find runs in the compiled engine, on the JAX backend; set KERAS_BACKEND=jax")
    folder = Path(out) if out is not None else default_run_dir(f"{config.name}-lr-find")
    check_writable(folder, what="the learning-rate search", term="out")
    if folder.is_dir() and any(folder.iterdir()):
        raise ConfigError(f"{folder} already exists and is not empty; give another `out`", terms=["out"])
    finder = config.replace(schedule="constant", warmup_epochs=0.0, ema=0.0, engine="compiled")
    splits = checked_splits(finder, data.of(resolve(finder.dataset)))
    with stop_requests() as stop:
        began = time.perf_counter()
        rates = np.geomspace(start, end, steps)
        losses = _search(finder, splits, rates, stop, verbose)
        seconds = time.perf_counter() - began
        if stop.requested:
            raise Interrupted("the learning-rate search was interrupted; nothing was written")
        return _write(folder, config, rates[:len(losses)], losses, seconds, steps, end)


def _search(config: TrainConfig, splits, rates: np.ndarray, stop, verbose: bool) -> np.ndarray:
    """Each step's training loss at its learning rate, until the smoothed loss diverges (or a stop request)."""
    from fashionlab.datasets import resolve
    from fashionlab.engine import Augmentation, CompiledTrainer
    from fashionlab.training import new_model

    model = new_model(config, splits, resolve(config.dataset).classes)
    trainer = CompiledTrainer(model, config.batch_size,
                              Augmentation(config.augment_shift, config.augment_flip, config.augment_flip_alternate),
                              config.bn_lr_scale)
    program = StepProgram(trainer, splits, config, len(rates))
    losses = np.full(len(rates), np.nan)
    for first in range(0, len(rates), CHUNK):
        last = min(first + CHUNK, len(rates))
        losses[first:last] = program.run(rates, first, last)
        gone = diverged(smooth(losses[:last], smoothing(len(rates))))
        seen = last if gone is None else gone + 1
        if verbose:
            print(f"lr-find: step {seen} of {len(rates)}, learning rate {rates[seen - 1]:.3g}, loss "
                  f"{losses[seen - 1]:.4f}{'' if gone is None else ': diverged'}", flush=True)
        if gone is not None:
            return losses[:gone + 1]
        if stop.requested:
            break
    return losses[:last]


class StepProgram:
    """The search's training steps as one compiled program: steps [first, last) of the plan, each
    at its own learning rate (the optimizer's learning-rate variable, set in its state), each on its
    batch (shuffled per pass over the data, as the config says), returning each step's loss."""

    def __init__(self, trainer, splits, config: TrainConfig, steps: int):
        import jax
        import jax.numpy as jnp

        from fashionlab.engine import Totals, step_keys

        optimizer = trainer.model.optimizer
        self.slot = next(i for i, v in enumerate(optimizer.variables) if v.name == "learning_rate")
        self.trainer, self.totals = trainer, Totals
        self.state = trainer.read_state()
        self.x, self.y = jnp.asarray(splits.x_train), jnp.asarray(splits.y_train, dtype=jnp.int32)
        self.batches = jnp.asarray(batch_plan(len(splits.x_train), config.batch_size, steps, config.seed,
                                              config.shuffle))
        self.keys = step_keys(jax.random.key(config.seed))
        self._run = jax.jit(self._steps)

    def _steps(self, state, x, y, batches, rates, keys, first, last):
        import jax

        def body(i, carry):
            state, losses = carry
            optimizer = list(state.optimizer)
            optimizer[self.slot] = rates[i].astype(optimizer[self.slot].dtype)
            state = state._replace(optimizer=optimizer, totals=self.totals.zero())
            state = self.trainer.step(state, *self.trainer.batch(x, y, batches[i]),
                                       jax.random.fold_in(keys.steps, i))
            return state, losses.at[i].set(state.totals.loss_sum / state.totals.count)

        losses = jax.numpy.full(rates.shape, jax.numpy.nan, jax.numpy.float32)
        return jax.lax.fori_loop(first, last, body, (state, losses))

    def run(self, rates: np.ndarray, first: int, last: int) -> np.ndarray:
        self.state, losses = self._run(self.state, self.x, self.y, self.batches, np.asarray(rates, np.float32),
                                       self.keys, first, last)
        return np.asarray(losses, dtype=np.float64)[first:last]


def batch_plan(n: int, batch_size: int, steps: int, seed: int, shuffle: bool) -> np.ndarray:
    """(steps, batch) image indices: full batches of each pass over the n images, a new shuffle each pass."""
    size = min(batch_size, n)
    per_pass = n // size
    rng = np.random.default_rng(seed)
    passes = [rng.permutation(n) if shuffle else np.arange(n) for _ in range(-(-steps // per_pass))]
    return np.concatenate([order[:per_pass * size].reshape(per_pass, size) for order in passes])[:steps]


def _write(folder: Path, config: TrainConfig, rates: np.ndarray, losses: np.ndarray, seconds: float,
           steps: int, end: float) -> Found:
    """The search's files, and what it found (`steps` and `end`: those asked for)."""
    import pandas as pd

    from fashionlab import plots

    smoothed = smooth(losses, smoothing(steps))
    gone = diverged(smoothed)
    if gone is not None and gone < 3:
        raise ConfigError(f"the loss diverged within {gone + 1} step(s), at a learning rate of {rates[gone]:.3g}: "
                          f"give a lower `start`", terms=["start"])
    usable = slice(0, len(losses) if gone is None else gone)
    minimum, suggestion, steepest = suggestions(rates[usable], smoothed[usable])
    suggestion = float(f"{suggestion:.2g}")  # a rate to write down: 0.00055, not 0.000554266...
    found = Found(folder, with_changes(config, {"learning_rate": suggestion}), rates, losses, smoothed, minimum,
                  suggestion,
                  steepest, None if gone is None else gone + 1, seconds, (float(rates[0]), end, steps))
    table = pd.DataFrame({"step": np.arange(1, len(losses) + 1), "learning_rate": rates, "loss": losses,
                          "smoothed_loss": smoothed})
    figure = plots.png_bytes(plots.lr_find_figure(rates, losses, smoothed, suggestion=suggestion, minimum=minimum,
                                                  steepest=steepest, title=config.name))
    with Run.create(folder) as run:
        run.write_with("lr_find.csv", lambda tmp: table.to_csv(tmp, index=False))
        run.write_with("lr_find.png", lambda tmp: tmp.write_bytes(figure))
        run.write_json("config.json", found.config.to_dict())
        run.write_json("lr_find.json", {**found.record(), "config": config.to_dict(), "finished": now()})
    return found
