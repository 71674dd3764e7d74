"""fashionlab in a notebook: the library's calls, returning objects that show themselves.

    import fashionlab as fl
    run = fl.train(epochs=1)                 # a live progress bar, then a card with the curves
    run.history, run.metrics, run.plot(), run.confusion(), run.reliability(), run.mistakes(12),
    run.predict([0, 1, 2], mc_dropout=30)
    run = fl.Run.open("runs/20260101-120000-tutorial")   # or fl.Run.open("latest")
    fl.runs()                                # every run under runs/, newest first, as a table
    cmp = fl.compare(["bn-after", "bn-before"], seeds=2, epochs=3)
    cmp.table, cmp.plot()

In Jupyter each object is a card (`_repr_html_`: the key figures and the curves); elsewhere its
repr is one line. These are thin: `train` is `training.train`, `compare` is `comparison.compare`,
`sweep` is `sweep.sweep`, and every figure comes from `plots.py`, as the CLI's do. Every public call
checks its arguments at entry (`arguments.checked`): a wrong one is a ConfigError naming it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fashionlab.arguments import checked
from fashionlab.catalog import RUNS_ROOT, listing, locate
from fashionlab.config import FIELDS, TrainConfig, with_changes
from fashionlab.data import DataSource
from fashionlab.datasets import MAX_CLASSES
from fashionlab.errors import ConfigError
from fashionlab.rundir import Run as RunDirectory
from fashionlab.rundir import default_run_dir
from fashionlab.uncertainty import MAX_PASSES

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

CARD_STYLE = ("font-family: system-ui, sans-serif; border: 1px solid #d9dde4; border-radius: 8px; padding: 10px 14px; "
              "max-width: 760px; background: #fff; color: #1d2330")


def _card(title: str, facts: dict[str, str], figure: Figure | None = None, extra: str = "") -> str:
    """A notebook card: a title, a line of key figures, a figure as an inline PNG, anything else."""
    from fashionlab.plots import png_bytes
    from fashionlab.reports import png_tag

    line = " · ".join(f"{html.escape(key)} <b>{html.escape(value)}</b>" for key, value in facts.items())
    picture = png_tag(png_bytes(figure), title).replace("<img ", '<img style="max-width: 100%; height: auto" ', 1) \
        if figure is not None else ""
    return (f'<div style="{CARD_STYLE}"><div style="font-size: 15px; font-weight: 600">{html.escape(title)}</div>'
            f'<div style="font-size: 13px; margin: 4px 0 8px">{line}</div>'
            f'<div>{picture}</div><div style="max-width: 100%; overflow-x: auto">{extra}</div></div>')


def _percent(value: Any) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, (int, float)) else "–"


class Run:
    """A run directory, read: its config, history, metrics, curves, mistakes and predictions."""

    @checked
    def __init__(self, path: str | Path, *, allow_incomplete: bool = True):
        self._run = RunDirectory.open(locate(path), allow_incomplete=allow_incomplete)
        self.path = self._run.path

    @classmethod
    @checked
    def open(cls, path: str | Path, *, allow_incomplete: bool = False) -> Run:
        """A finished run directory (or, with `allow_incomplete`, one still running or stopped): a path,
        "latest" (the newest complete run under runs/), or the start of a run's name under runs/."""
        return cls(path, allow_incomplete=allow_incomplete)

    @property
    def config(self) -> TrainConfig:
        return self._run.config()

    @property
    def name(self) -> str:
        return self._run.name()

    @property
    def members(self) -> pd.DataFrame | None:
        """An ensemble's runs, a row each (run, name, recipe, seed, test accuracy); None for a trained run."""
        from fashionlab.reports import members_table

        return members_table(self._run.ensemble()["members"]) if self._run.is_ensemble() else None

    @property
    def status(self) -> str:
        return self._run.status()["status"]

    @property
    def history(self) -> pd.DataFrame:
        """One row per finished epoch: loss, accuracy, val_loss, val_accuracy, seconds, ..."""
        return self._run.history()

    @property
    def metrics(self) -> dict[str, Any]:
        """metrics.json: test accuracy and loss, the best epoch, times, parameters, versions ({} until finished)."""
        return self._run.metrics() if self._run.file("metrics.json").is_file() else {}

    def plot(self) -> Figure:
        """The learning curves: loss and accuracy per epoch, training and validation."""
        from fashionlab.plots import learning_curves_figure

        return learning_curves_figure(self.history, title=f"{self.name}: learning curves")

    @checked
    def confusion(self, normalize: bool = False) -> pd.DataFrame:
        """The test set's confusion matrix (rows: true class, columns: predicted), counts or row fractions."""
        import pandas as pd

        matrix, names = self._run.confusion().astype(float if normalize else int), self._run.dataset().class_names
        if normalize:
            matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        return pd.DataFrame(matrix, index=pd.Index(names, name="true"), columns=pd.Index(names, name="predicted"))

    @checked(n=(1, 100))
    def mistakes(self, n: int = 12, data: DataSource = DataSource()) -> Figure:
        """The `n` test images the model gets wrong most confidently, with what it said and the truth."""
        from fashionlab.evaluation import predict_proba
        from fashionlab.plots import new_figure

        dataset = self._run.dataset()
        (x_test, y_test), names = data.of(dataset).test_set(), dataset.class_names
        proba = predict_proba(self._run.load_model(), x_test)
        predicted = proba.argmax(axis=1)
        wrong = np.flatnonzero(predicted != y_test)
        worst = wrong[np.argsort(-proba[wrong, predicted[wrong]], kind="stable")][:n]
        columns = min(6, max(1, len(worst)))
        rows = max(1, -(-len(worst) // columns))
        # constrained: each row's titles get room above its images (tight_layout let them overlap the row above)
        figure = new_figure(figsize=(1.9 * columns, 2.3 * rows), layout="constrained")
        axes = figure.subplots(rows, columns, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, index in zip(axes.flat, worst):
            ax.imshow(x_test[index], cmap="gray")
            ax.set_title(f"{names[predicted[index]]} {proba[index, predicted[index]]:.0%}\n"
                         f"true: {names[y_test[index]]}", fontsize=8)
        figure.suptitle(f"{self.name}: the {len(worst)} most confident mistakes of {len(wrong)}", fontsize=10)
        return figure

    @checked(top_k=(1, MAX_CLASSES), mc_dropout=(2, MAX_PASSES))  # top_k: at most the run's classes (`predict`)
    def predict(self, inputs: Sequence[int | str | Path], top_k: int = 3,
                data: DataSource = DataSource(), mc_dropout: int | None = None) -> pd.DataFrame:
        """Test images (indices) and image files, one row each: the class, its probability, the next ones;
        `mc_dropout` N: the mean of N passes with dropout on, and a `spread` column (their standard deviation)."""
        import pandas as pd

        from fashionlab.prediction import predict

        indices = [i for i in inputs if isinstance(i, (int, np.integer))]
        files = [p for p in inputs if not isinstance(p, (int, np.integer))]
        results = predict(self.path, indices=indices, images=files, top_k=top_k, data=data,
                          allow_incomplete=self.status != "complete", mc_dropout=mc_dropout)
        spread = ({"spread": r.get("spread")} if mc_dropout else {} for r in results)
        return pd.DataFrame([{"input": r["input"], "class": r["class_name"], "probability": r["probability"],
                              **extra,
                              "next": ", ".join(f"{t['class_name']} {t['probability']:.3f}"
                                                + (f" ± {t['spread']:.3f}" if "spread" in t else "")
                                                for t in r["top_k"][1:]),
                              "note": r.get("hint") or ", ".join(
                                  ["mirrored"] * bool(r.get("mirrored")) + [f"turned {r.get('turned')}°"] * bool(
                                      r.get("turned")))}
                             for r, extra in zip(results, spread)]).set_index("input")

    def reliability(self) -> Figure:
        """The reliability diagram of the run's test predictions: accuracy per confidence bin."""
        from fashionlab.plots import reliability_figure

        calibration = self.metrics.get("calibration")
        if calibration is None:
            raise ConfigError(f"{self.path} has no calibration figures (a run kept from the test set, or made before "
                              f"they were measured); `fashionlab evaluate` shows them")
        temperature = self.metrics.get("temperature")
        return reliability_figure(calibration["bins"], calibration["ece"], self.name,
                                  temperature["temperature"] if temperature else None)

    def _facts(self) -> dict[str, str]:
        if self._run.is_ensemble():
            metrics, members = self.metrics, self.members
            return {"status": self.status, "members": str(len(members)),
                    "test accuracy": _percent(metrics.get("test_accuracy")),
                    "members' mean": _percent(members["test accuracy"].mean()),
                    "parameters": f"{metrics.get('parameters', {}).get('total', 0):,}"}
        metrics, history = self.metrics, self.history
        facts = {"status": self.status, "epochs": str(len(history))}
        if metrics:
            facts["test accuracy"] = _percent(metrics.get("test_accuracy"))
            facts["best val accuracy"] = _percent(metrics.get("best_val_accuracy"))
            if "test_ece" in metrics:
                facts["ECE"] = _percent(metrics["test_ece"]) + (
                    f" (T {metrics['temperature']['temperature']:.2f})" if "temperature" in metrics else "")
            facts["training"] = f"{metrics['train_seconds']:.1f} s"
            facts["parameters"] = f"{metrics['parameters']['total']:,}"
        elif len(history):
            facts["val accuracy"] = _percent(float(history["val_accuracy"].iloc[-1]))
        return facts

    def _repr_html_(self) -> str:
        if self._run.is_ensemble():
            from fashionlab.reports import table_html

            return _card(f"{self.name} — {self.path}", self._facts(), None, table_html(self.members, index=False))
        figure = self.plot() if len(self.history) else None
        extra = ""
        if "calibration" in self.metrics:
            from fashionlab.plots import png_bytes
            from fashionlab.reports import png_tag

            extra = png_tag(png_bytes(self.reliability()), "reliability diagram").replace(
                "<img ", '<img style="max-width: 50%; height: auto" ', 1)
        return _card(f"{self.name} — {self.path}", self._facts(), figure, extra)

    def __repr__(self) -> str:
        facts = self._facts()
        said = f", test accuracy {facts['test accuracy']}" if "test accuracy" in facts else ""
        size = f"{facts['members']} members" if "members" in facts else f"{facts['epochs']} epochs"
        return f"Run({str(self.path)!r}, {self.name}, {facts['status']}, {size}{said})"


@checked(keywords=FIELDS, verbose=(0, 2))
def train(recipe: str | None = None, *, run_dir: str | Path | None = None, data: DataSource = DataSource(),
          verbose: int | None = None, mlflow: str | bool | None = None, **changes: Any) -> Run:
    """Train a recipe (default: the tutorial's), changed by any config keys, into a new run
    directory: `fl.train("fast-cnn", epochs=3)`. In a notebook the progress is a live bar. `mlflow`:
    an MLflow tracking server's URI that gets the run too (True: MLFLOW_TRACKING_URI)."""
    from fashionlab import recipes, training

    base = recipes.get(recipe).config() if recipe is not None else TrainConfig()
    config = with_changes(base, changes)
    said = call_text("train", [recipe] if recipe is not None else [],
                     {"run_dir": run_dir, "mlflow": _shown_uri(mlflow), **changes})
    result = training.train(config, run_dir, data=data, verbose=verbose, recipe=recipe, command=said, mlflow=mlflow)
    return Run(result.run.path)


@checked
def ensemble(runs: Sequence[str | Path | Run], *, out: str | Path | None = None,
             data: DataSource = DataSource()) -> Run:
    """Average the class probabilities of runs already trained (`Run`s, paths, "latest", the start of a
    name under runs/, or a folder of runs such as a comparison's variant) into one model that evaluate,
    predict, serve and export take like a run: `fl.ensemble(cmp.runs())`,
    `fl.ensemble(["runs/compare-speed-90/speed-90"])`."""
    from fashionlab.ensembles import ensemble as make_ensemble

    paths = [run.path if isinstance(run, Run) else locate(run) for run in runs]
    result = make_ensemble(paths, out, data=data,
                           command=call_text("ensemble", [[str(path) for path in paths]], {"out": out}))
    return Run(result.run.path)


class LrFind:
    """A learning-rate search (`fl.lr_find`): its suggestion, every step as a table, the figure."""

    def __init__(self, found):
        self._found = found
        self.folder, self.suggestion, self.minimum, self.steepest = (found.folder, found.suggestion, found.minimum,
                                                                     found.steepest)
        self.config = found.config  # the config with the suggested learning rate: fl.train(**lr.config.to_dict())

    @property
    def table(self) -> pd.DataFrame:
        import pandas as pd

        return pd.read_csv(self.folder / "lr_find.csv")

    def plot(self) -> Figure:
        from fashionlab.plots import lr_find_figure

        f = self._found
        return lr_find_figure(f.learning_rates, f.losses, f.smoothed, suggestion=f.suggestion, minimum=f.minimum,
                              steepest=f.steepest, title=f.config.name)

    def _repr_html_(self) -> str:
        facts = {"suggested learning rate": f"{self.suggestion:g}", "lowest loss at": f"{self.minimum:.3g}",
                 "steps": str(len(self._found.losses)), "seconds": f"{self._found.seconds:.1f}"}
        if self.steepest is not None:
            facts["steepest descent at"] = f"{self.steepest:.3g}"
        notes = "".join(f"<p>{html.escape(note)}</p>" for note in [
            *self._found.notes(), f"Train with it: fl.train(..., learning_rate={self.suggestion:g})"])
        return _card(f"learning-rate search — {self.folder}", facts, self.plot(), notes)

    def __repr__(self) -> str:
        return f"LrFind({str(self.folder)!r}, suggestion {self.suggestion:.3g})"


@checked(keywords=FIELDS, steps=(10, 10_000))
def lr_find(recipe: str | None = None, *, out: str | Path | None = None, data: DataSource = DataSource(),
            start: float = 1e-7, end: float = 10.0, steps: int = 200, **changes: Any) -> LrFind:
    """Search a learning rate for a recipe (default: the tutorial's) with any config keys changed but
    `learning_rate`: train its initial network `steps` batches while the rate grows from `start` to
    `end`, stopping when the loss diverges. Returns an `LrFind`: `.suggestion` (the rate at the lowest
    smoothed loss / 10, to 2 digits), `.minimum`, `.steepest`, `.table` (each step), `.plot()`,
    `.folder` (lr_find.png, .csv, .json, config.json), `.config` (the config at the suggestion):
    `fl.train("fast-mlp", learning_rate=fl.lr_find("fast-mlp").suggestion)`."""
    from fashionlab import recipes
    from fashionlab.lrfind import lr_find as search

    if "learning_rate" in changes:
        raise ConfigError("lr_find searches the learning rate: drop `learning_rate`", terms=["learning_rate"])

    base = recipes.get(recipe).config() if recipe is not None else TrainConfig()
    return LrFind(search(with_changes(base, changes), out, data=data, start=start, end=end, steps=steps))


def call_text(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """A notebook call as run.json and the pages record it: `fl.train('fast-cnn', epochs=2)`; the
    arguments left at their defaults (None) and `data` (a folder on this machine) left out."""
    def shown(value: Any) -> str:
        return repr(str(value) if isinstance(value, Path) else value)

    said = [shown(a) for a in args] + [f"{k}={shown(v)}" for k, v in kwargs.items() if v is not None]
    return f"fl.{name}({', '.join(said)})"


@checked
def runs(folder: str | Path = RUNS_ROOT, *, status: str | None = None, recipe: str | None = None,
         dataset: str | None = None) -> pd.DataFrame:
    """The runs in `folder` and its folders, newest first, one row each (as `fashionlab runs` lists
    them): `fl.runs(status="complete")`; `fl.Run.open(row.path)` opens one."""
    import pandas as pd

    from fashionlab.catalog import Entry

    columns = list(Entry.__dataclass_fields__)
    return pd.DataFrame([e.as_dict() for e in listing(folder, status=status, recipe=recipe, dataset=dataset)],
                        columns=columns)


class Comparison:
    """A comparison's folder, read: the table of variants over seeds, the conclusion, the curves."""

    @checked
    def __init__(self, out: str | Path):
        from fashionlab.comparison import load_comparison

        self.out = Path(out)
        self.results, self.table, self.conclusion = load_comparison(self.out)

    def runs(self) -> list[Run]:
        """Each run of the comparison, in the order of `results` (variant, seed)."""
        return [Run(path) for path in self.results["run_dir"]]

    def plot(self) -> Figure:
        """Validation accuracy and loss per epoch for each variant (mean over seeds, band = min..max)."""
        from fashionlab.plots import comparison_curves_figure

        histories: dict[str, list[pd.DataFrame]] = {}
        for variant, run in zip(self.results["variant"], self.runs()):
            histories.setdefault(variant, []).append(run.history)
        return comparison_curves_figure(histories)

    def _repr_html_(self) -> str:
        from fashionlab.reports import summary_display

        table = summary_display(self.table).to_html(index=False, border=0)
        notes = "".join(f"<li>{html.escape(line)}</li>" for line in self.conclusion)
        facts = {"variants": str(self.table.shape[0]), "runs": str(len(self.results))}
        return _card(f"comparison — {self.out}", facts, self.plot(), f"{table}<ul style='font-size: 13px'>{notes}</ul>")

    def __repr__(self) -> str:
        best = self.table["test_accuracy_mean"].idxmax()
        return (f"Comparison({str(self.out)!r}, {len(self.table)} variants, {len(self.results)} runs, best {best} "
                f"{_percent(self.table.loc[best, 'test_accuracy_mean'])})")


@checked(keywords=FIELDS)
def compare(variants: Sequence[str] | None = None, *, seeds: int = 3, out: str | Path | None = None, jobs: int = 1,
            data: DataSource = DataSource(), runs: Sequence[str | Path] | None = None, force: bool = False,
            mlflow: str | bool | None = None, storage: str | None = None, study: str | None = None,
            **changes: Any) -> Comparison | None:
    """Train each variant (a series variant such as "bn-before", a recipe, or "recipe:key=value")
    over `seeds` seeds, every one changed by `changes`, and compare them on the test set. With `runs`
    (paths, "latest", or the start of a name under runs/), compare those runs, already trained, grouped
    by their settings: `fl.compare(runs=["20261207-1423", "latest"])`. `mlflow`: as `train`'s; the
    comparison is a parent run there, its runs its children. `storage` (a database URL) and `study`:
    share the runs with the other machines running the same call (`compare --storage`); None when they
    still train the last runs (the one that finishes them writes the comparison)."""
    from fashionlab.comparison import DEFAULT_VARIANTS, compare_runs
    from fashionlab.comparison import compare as run_comparison

    if runs is not None:
        given = [name for name, value in (("variants", variants), ("seeds", seeds != 3), ("jobs", jobs != 1))
                 if value] + list(changes)
        if given:
            raise ConfigError(f"`runs` compares runs already trained; drop {', '.join(f'`{g}`' for g in given)} "
                              f"(they say what to train)", terms=given)
        out = Path(out) if out is not None else default_run_dir("comparison")
        compare_runs(out, [locate(run) for run in runs], force=force, mlflow=mlflow,
                     command=call_text("compare", [], {"runs": list(runs), "mlflow": _shown_uri(mlflow)}))
        return Comparison(out)

    if storage is None and study is not None:
        raise ConfigError("`study` names a study in `storage`; give `storage` too", terms=["study", "storage"])
    if storage is not None and (runs is not None or mlflow is not None):
        raise ConfigError("`storage` shares the training of variants; drop `runs` and `mlflow`", terms=["storage"])
    variants = list(variants) if variants is not None else list(DEFAULT_VARIANTS)
    out = Path(out) if out is not None else Path("runs") / ("compare-" + "-".join(variants))[:80]
    said = call_text("compare", [variants], {"seeds": seeds, "out": out, "jobs": jobs, "mlflow": _shown_uri(mlflow),
                                             "storage": _shown_uri(storage), "study": study, **changes})
    options = {"variants": variants, "seeds": seeds, "base": TrainConfig(), "overrides": changes, "jobs": jobs,
               "data": data, "command": said, "force": force}
    if storage is not None:
        from fashionlab.sweeps import compare_shared

        shared = compare_shared(out, storage=storage, study=study, progress=print, **options)
        return None if shared is None else Comparison(out)
    run_comparison(out, **options, mlflow=mlflow)
    return Comparison(out)


class Sweep:
    """A sweep's folder, read: every trial (`trials`), the chosen one (`best`), the history of the search."""

    @checked
    def __init__(self, out: str | Path):
        from fashionlab.sweeps import load_sweep

        result = load_sweep(out)
        self.out, self.trials, self.best, self.ended = result.out, result.trials, result.best, result.ended
        self.summary = result.summary

    def plot(self) -> Figure:
        """Validation accuracy of each trial in order, and the best so far."""
        from fashionlab.plots import sweep_history_figure

        return sweep_history_figure(self.trials)

    def _facts(self) -> dict[str, str]:
        facts = {"trials": str(len(self.trials)), "ended": "yes" if self.ended else "no"}
        if self.best is not None:
            facts["best trial"] = str(self.best["trial"])
            facts["its val accuracy"] = _percent(self.best.get("val_accuracy"))
        return facts

    def _repr_html_(self) -> str:
        summary = f"<pre style='font-size: 12px; white-space: pre-wrap'>{html.escape(self.summary)}</pre>"
        return _card(f"sweep — {self.out}", self._facts(), self.plot() if len(self.trials) else None, summary)

    def __repr__(self) -> str:
        return f"Sweep({str(self.out)!r}, " + ", ".join(f"{k} {v}" for k, v in self._facts().items()) + ")"


def _shown_uri(uri: str | bool | None) -> str | bool | None:
    """A storage's or tracking server's URI as a recorded call shows it: without its secrets."""
    from fashionlab.urls import url_label

    return url_label(uri) if isinstance(uri, str) else uri


@checked(keywords=FIELDS)
def sweep(space: str | Path, *, trials: int = 20, out: str | Path | None = None, jobs: int = 1,
          data: DataSource = DataSource(), storage: str | None = None, study: str | None = None,
          sampler: str = "tpe", sampler_seed: int = 0, pruner: str = "median", force: bool = False,
          mlflow: str | bool | None = None, **changes: Any) -> Sweep:
    """Run (or continue) the sweep of a search-space file until its study has `trials` trials:
    `fl.sweep("examples/sweep-best-mlp.toml", trials=30)`, `changes` (`epochs=5`) set for every trial
    over the space's [train]; the other arguments as `sweep.sweep` takes them (which checks them)."""
    from fashionlab.sweeps import sweep as run_sweep

    out = Path(out) if out is not None else Path("runs") / f"sweep-{Path(space).stem}"
    said = call_text("sweep", [space], {"trials": trials, "out": out, "jobs": jobs, "study": study,
                                        "storage": _shown_uri(storage), "mlflow": _shown_uri(mlflow)})
    result = run_sweep(space, out, trials=trials, jobs=jobs, data=data, storage=storage, study=study, sampler=sampler,
                       sampler_seed=sampler_seed, pruner=pruner, force=force, overrides=changes, command=said,
                       mlflow=mlflow)
    return Sweep(result.out)
