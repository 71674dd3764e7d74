"""The tutorial series as an experiment: variants x seeds, in parallel, resumable, reported.

    result = compare("runs/compare", variants=["raw", "scaled", "bn-after", "bn-before"], seeds=3)
"""

from __future__ import annotations

import multiprocessing
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashionlab import FashionlabError
from fashionlab.config import TrainConfig
from fashionlab.interrupts import Interrupted, stop_requests
from fashionlab.runs import Run

# Each variant changes only what the tutorial series changes between its parts.
VARIANTS: dict[str, dict[str, Any]] = {
    "raw": {"scale_inputs": False, "batch_norm": "none"},  # part 1: raw 0..255 pixels
    "scaled": {"batch_norm": "none"},  # part 2: standardized input
    "bn-after": {"batch_norm": "after"},  # part 3: Dense(relu) then BN (the tutorial)
    "bn-before": {"batch_norm": "before"},  # part 3's second choice: Dense, BN, ReLU
    "selu": {"batch_norm": "none", "activation": "selu", "kernel_initializer": "lecun_normal"},
}
DEFAULT_VARIANTS = ("raw", "scaled", "bn-after", "bn-before")
VARIANT_KEYS = ("name", "seed", "scale_inputs", "batch_norm", "activation", "kernel_initializer")


class CompareError(FashionlabError):
    """A comparison cannot be planned or resumed as asked."""


@dataclass(frozen=True)
class Task:
    variant: str
    seed: int
    config: TrainConfig
    run_dir: Path


def plan(out: Path, variants: Sequence[str], seeds: int, base: TrainConfig) -> list[Task]:
    """One task per variant x seed; seeds count up from the base config's seed."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise CompareError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if len(set(variants)) != len(variants) or not variants:
        raise CompareError("give each variant once, and at least one")
    if seeds < 1:
        raise CompareError(f"--seeds must be at least 1, got {seeds}")
    return [Task(v, base.seed + i, base.replace(name=v, seed=base.seed + i, **VARIANTS[v]),
                 out / v / f"seed-{base.seed + i}")
            for v in variants for i in range(seeds)]


def is_finished(task: Task) -> bool:
    """A finished run is complete; one made with other settings is refused."""
    run = Run(task.run_dir)
    if not run.file("config.json").is_file() or run.status()["status"] != "complete":
        return False
    done = run.read_json("config.json")
    if done != task.config.to_dict():
        changed = sorted(k for k in set(done) | set(task.config.to_dict())
                         if done.get(k) != task.config.to_dict().get(k))
        raise CompareError(f"{task.run_dir} was trained with different settings ({', '.join(changed)}); "
                           f"use another --out, or the original options")
    return True


def _ignore_sigint() -> None:
    # Ctrl-C goes to the whole process group; the parent alone decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _train_task(args: tuple[Task, str | None, bool]) -> tuple[Task, float]:
    import keras

    from fashionlab.training import train

    task, data_dir, verify = args
    keras.backend.clear_session()
    started = time.perf_counter()
    train(task.config, task.run_dir, data_dir, verify, verbose=0)
    return task, time.perf_counter() - started


def run_tasks(tasks: Sequence[Task], jobs: int, data_dir: str | Path | None, verify: bool,
              on_done: Callable[[Task, float], None]) -> None:
    """Train `tasks`, `jobs` at a time in separate processes (in this one when jobs == 1)."""
    for task in tasks:
        if task.run_dir.is_dir():
            Run.acquire(task.run_dir).release()  # refuses while another process trains it
            shutil.rmtree(task.run_dir)  # an unfinished run is redone from scratch
    work = [(task, None if data_dir is None else str(data_dir), verify) for task in tasks]
    if jobs == 1 or len(tasks) <= 1:
        with stop_requests() as stop:
            for args in work:
                on_done(*_train_task(args))
                if stop.requested:
                    raise Interrupted("comparison stopped")
        return
    # spawn, not fork: JAX's runtime is multithreaded and must not be forked.
    pool = multiprocessing.get_context("spawn").Pool(min(jobs, len(tasks)), initializer=_ignore_sigint)
    try:
        with stop_requests() as stop:
            results = pool.imap_unordered(_train_task, work)
            for _ in tasks:
                while True:
                    if stop.requested:
                        raise Interrupted("comparison stopped")
                    try:
                        on_done(*results.next(timeout=0.2))
                        break
                    except multiprocessing.TimeoutError:
                        continue
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def collect(tasks: Sequence[Task]) -> pd.DataFrame:
    """One row per run, read back from the run directories."""
    rows = []
    for task in tasks:
        run = Run(task.run_dir)
        metrics = run.read_json("metrics.json")
        first_epoch = pd.read_csv(run.file("history.csv")).iloc[0]
        rows.append({
            "variant": task.variant, "seed": task.seed,
            "test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"],
            "first_epoch_val_accuracy": float(first_epoch["val_accuracy"]),
            "best_val_accuracy": metrics["best_val_accuracy"], "best_epoch": metrics["best_epoch"],
            "final_val_accuracy": metrics["final_val_accuracy"],
            "seconds_per_epoch": metrics["median_seconds_per_epoch"],
            "parameters": metrics["parameters"]["total"], "run_dir": str(task.run_dir),
        })
    return pd.DataFrame(rows)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One row per variant, in the order given: mean, spread and worst seed."""
    grouped = results.groupby("variant", sort=False)
    return pd.DataFrame({
        "seeds": grouped.size(),
        "test_accuracy_mean": grouped["test_accuracy"].mean(),
        "test_accuracy_std": grouped["test_accuracy"].std(ddof=1).fillna(0.0),
        "test_accuracy_worst": grouped["test_accuracy"].min(),
        "test_accuracy_best": grouped["test_accuracy"].max(),
        "first_epoch_val_accuracy": grouped["first_epoch_val_accuracy"].mean(),
        "best_val_accuracy": grouped["best_val_accuracy"].mean(),
        "best_epoch": grouped["best_epoch"].mean(),
        "seconds_per_epoch": grouped["seconds_per_epoch"].mean(),
        "parameters": grouped["parameters"].first(),
    })


def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """The per-variant table as people read it, for summary.md and report.html alike."""
    return pd.DataFrame({
        "seeds": summary["seeds"].map(str),
        "test accuracy (mean ± std)": [f"{m:.4f} ± {s:.4f}" for m, s in
                                       zip(summary["test_accuracy_mean"], summary["test_accuracy_std"])],
        "worst seed": summary["test_accuracy_worst"].map("{:.4f}".format),
        "val accuracy after epoch 1": summary["first_epoch_val_accuracy"].map("{:.4f}".format),
        "best val accuracy": summary["best_val_accuracy"].map("{:.4f}".format),
        "epoch of best val": summary["best_epoch"].map("{:.1f}".format),
        "s/epoch": summary["seconds_per_epoch"].map("{:.2f}".format),
        "parameters": summary["parameters"].map("{:,}".format),
    }, index=summary.index.rename("variant"))


def summary_markdown(summary: pd.DataFrame) -> str:
    table = summary_display(summary)
    lines = ["| variant | " + " | ".join(table.columns) + " |", "|---" * (len(table.columns) + 1) + "|"]
    lines += [f"| {variant} | " + " | ".join(row) + " |" for variant, row in table.iterrows()]
    return "\n".join(lines) + "\n"


def conclusion(summary: pd.DataFrame) -> list[str]:
    """Plain statements that follow from the numbers, and no more."""
    ranked = summary.sort_values("test_accuracy_mean", ascending=False)
    best, top = ranked.index[0], ranked.iloc[0]
    seeds = int(ranked["seeds"].min())
    lines = [f"{best} has the highest mean test accuracy: {top.test_accuracy_mean:.4f} "
             f"± {top.test_accuracy_std:.4f} over {int(top.seeds)} seed(s)."]
    if len(ranked) == 1:
        return lines
    if seeds < 2:
        lines.append("With one seed per variant there is no spread to judge the differences against; "
                     "run more seeds before drawing conclusions.")
    for variant, other in ranked.iloc[1:].iterrows():
        gap = (top.test_accuracy_mean - other.test_accuracy_mean) * 100
        if seeds < 2:
            lines.append(f"{variant}: {other.test_accuracy_mean:.4f} ({gap:.2f} points lower).")
        elif top.test_accuracy_worst > other.test_accuracy_best:
            lines.append(f"{best} beats {variant} on every seed: its worst seed ({top.test_accuracy_worst:.4f}) "
                         f"is above {variant}'s best ({other.test_accuracy_best:.4f}); mean gap {gap:.2f} points.")
        elif gap / 100 > top.test_accuracy_std + other.test_accuracy_std:
            lines.append(f"{best} leads {variant} by {gap:.2f} points, more than the two seed spreads together "
                         f"(std {top.test_accuracy_std:.4f} + {other.test_accuracy_std:.4f}), though their "
                         f"seed ranges overlap.")
        else:
            lines.append(f"{best} and {variant} differ by {gap:.2f} points, within the seed spread "
                         f"(std {top.test_accuracy_std:.4f} and {other.test_accuracy_std:.4f}): these runs do "
                         f"not establish a difference.")
    early, late = summary["first_epoch_val_accuracy"].idxmax(), summary["first_epoch_val_accuracy"].idxmin()
    lines.append(f"After the first epoch, mean validation accuracy ranged from "
                 f"{summary.loc[late, 'first_epoch_val_accuracy']:.4f} ({late}) to "
                 f"{summary.loc[early, 'first_epoch_val_accuracy']:.4f} ({early}).")
    fastest, slowest = summary["seconds_per_epoch"].idxmin(), summary["seconds_per_epoch"].idxmax()
    lines.append(f"Training speed ranged from {summary.loc[fastest, 'seconds_per_epoch']:.2f} s/epoch ({fastest}) "
                 f"to {summary.loc[slowest, 'seconds_per_epoch']:.2f} s/epoch ({slowest}).")
    return lines


def comparison_report_html(summary: pd.DataFrame, results: pd.DataFrame, histories: dict[str, list[pd.DataFrame]],
                           confusions: dict[str, np.ndarray], statements: list[str]) -> str:
    from fashionlab import plots
    from fashionlab.reports import figure_tag, page, table_tag

    conclusion_html = '<div class="conclusion">' + "".join(f"<p>{s}</p>" for s in statements) + "</div>"
    matrices = '<div class="pairs">' + "".join(
        figure_tag(plots.confusion_figure(m, f"{v}: test set, all seeds summed"), f"confusion matrix {v}")
        for v, m in confusions.items()) + "</div>"
    return page("fashionlab comparison", [
        ("Conclusion", conclusion_html),
        ("Summary per variant", table_tag(summary_display(summary))),
        ("Validation curves", figure_tag(plots.comparison_curves_figure(histories), "validation curves")),
        ("Confusion matrices", matrices),
        ("Every run", table_tag(results.drop(columns=["run_dir"]), index=False)),
    ])


@dataclass(frozen=True)
class CompareResult:
    out: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    conclusion: list[str]
    trained: int
    reused: int


def compare(out: str | Path, variants: Sequence[str] = DEFAULT_VARIANTS, seeds: int = 3,
            base: TrainConfig | None = None, jobs: int = 1, data_dir: str | Path | None = None,
            verify: bool = True, progress: Callable[[str], None] = lambda line: None) -> CompareResult:
    """Train every variant x seed not yet finished under `out`, then write the comparison files."""
    from fashionlab import plots
    from fashionlab.data import find_data_dir

    if jobs < 1:
        raise CompareError(f"--jobs must be at least 1, got {jobs}")
    out = Path(out)
    tasks = plan(out, list(variants), seeds, base or TrainConfig())
    data_dir = find_data_dir(data_dir)  # fail before any work if the data is missing
    pending = [task for task in tasks if not is_finished(task)]
    progress(f"{len(tasks)} runs: {len(tasks) - len(pending)} finished already, {len(pending)} to train "
             f"with {min(jobs, max(len(pending), 1))} job(s)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompareError(f"cannot use {out} as the comparison folder ({exc.strerror or exc}); "
                           f"give --out a folder") from None
    comparison = Run(out)  # the comparison's own files get the same atomic writes as a run's
    comparison.write_json("compare.json", {"variants": list(variants), "seeds": seeds, "jobs": jobs,
                                           "base": (base or TrainConfig()).to_dict()})
    done = len(tasks) - len(pending)

    def report(task: Task, seconds: float) -> None:
        nonlocal done
        done += 1
        accuracy = Run(task.run_dir).read_json("metrics.json")["test_accuracy"]
        progress(f"[{done}/{len(tasks)}] {task.variant} seed {task.seed}: test accuracy {accuracy:.4f} "
                 f"({seconds:.0f} s)")

    started = time.perf_counter()
    run_tasks(pending, jobs, data_dir, verify, report)
    wall = time.perf_counter() - started

    results = collect(tasks)
    summary = summarize(results)
    statements = conclusion(summary)
    histories = {v: [pd.read_csv(t.run_dir / "history.csv") for t in tasks if t.variant == v] for v in variants}
    confusions = {v: sum(pd.read_csv(t.run_dir / "confusion_matrix.csv", index_col=0).to_numpy()
                         for t in tasks if t.variant == v) for v in variants}
    comparison.write_with("results.csv", lambda tmp: results.to_csv(tmp, index=False))
    comparison.write_text("summary.md", summary_markdown(summary) + "\n" + "\n\n".join(statements) + "\n")
    comparison.write_with("curves.png", lambda tmp: plots.save_png(plots.comparison_curves_figure(histories), tmp))
    comparison.write_text("report.html", comparison_report_html(summary, results, histories, confusions, statements))
    if pending:
        progress(f"trained {len(pending)} run(s) in {wall:.0f} s wall time")
    return CompareResult(out, results, summary, statements, len(pending), len(tasks) - len(pending))
