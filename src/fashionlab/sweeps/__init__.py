"""Hyper-parameter sweeps: a search space over a recipe, searched by Optuna; each trial an
ordinary run directory trained by the runner and judged on validation accuracy alone; the test
set evaluated once, for the chosen configuration, when the sweep is done.

    result = sweep("examples/sweep-best-mlp.toml", "runs/sweep", trials=30, jobs=2)
    # workers on several machines share one study:
    result = sweep(space, "runs/sweep", trials=30, storage="postgresql://sweeper@db-host/fashionlab")

The study (Optuna's record of every trial) lives in a journal file in the sweep's folder, or in
the database `storage` names. Calling again with the same space continues it: finished trials
are kept; a trial whose process was stopped or killed is taken over, and its run directory
resumed from its last finished epoch (or, complete already, recorded from its files). A journal
that is damaged is refused; moved away, the study starts again from the runs in the trial folders.
The space file:

    description = "best-mlp's learning rate, width and dropout"
    recipe = "best-mlp"                                           # optional: the starting point
    [train]                                                       # optional: fixed changes to it
    epochs = 20
    [search]
    learning_rate = { min = 0.0005, max = 0.01, log = true }
    width = { min = 256, max = 1536, step = 256 }                 # integers: an int field
    dropout = [0.0, 0.5]                                          # [min, max]
    optimizer = { choices = ["adamw", "nadam"] }

Its modules, each importing only those named after it: `sharing` (a comparison many machines train
through a study: `compare --storage`), `run` (the sweep itself), `claims` (which trial each worker
trains, for a sweep and a shared comparison alike), `recovery` (lost trials given back), `results`
(the table, the one test evaluation), `trials` (a trial's task and its outcome), `study` (its
settings, and what it records, checked), `storage` (a journal or a database, its URL never shown
whole), `space` (the space file).
"""

import importlib

# Each public name and the module that holds it, imported when first used: importing the package
# imports neither Optuna nor the training modules.
_HOMES = {
    "sweep": "run", "MAX_TRIALS": "run", "MAX_JOBS": "run", "compare_shared": "sharing",
    "SweepResult": "results", "load_sweep": "results",
    "Space": "space", "load_space": "space",
    "Sampler": "study", "Pruner": "study", "SAMPLERS": "study", "PRUNERS": "study",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"fashionlab.sweeps.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'fashionlab.sweeps' has no attribute {name!r}")


__all__ = sorted(_HOMES)

