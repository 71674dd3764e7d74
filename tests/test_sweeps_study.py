"""The study: started with settings and data that a later start must match, and what it holds checked
(anyone who can write to it can write anything there); another program's study left alone."""

import re

import optuna
import pytest
from sweeps_helpers import GOOD, SEARCH, space_file, started_sweep

from fashionlab.config import TrainConfig
from fashionlab.errors import ConfigError, RunError
from fashionlab.sweeps import sweep
from fashionlab.sweeps.storage import open_storage
from fashionlab.sweeps.study import _with_defaults, settings_differences


def test_settings_differences_name_the_changed_keys():
    assert settings_differences({"a": 1, "s": {"x": 1, "y": 2}}, {"a": 1, "s": {"x": 3, "y": 2}, "b": 0}) == \
        ["b", "s.x"]
    assert settings_differences({"s": {"t": {"u": {"v": 1}}}}, {"s": {"t": {"u": {"v": 2}}}}) == ["s.t.u"]


def test_a_study_started_before_a_config_key_existed_reads_it_as_its_default():
    settings = {"space": {"base": TrainConfig().to_dict(), "search": {}}, "sampler": "tpe", "sampler_seed": 0,
                "pruner": "median"}
    older = {**settings, "space": {**settings["space"], "base": {k: v for k, v in TrainConfig().to_dict().items()
                                                                 if k != "dataset"}}}
    assert older != settings and _with_defaults(older) == settings
    changed = {**settings, "space": {**settings["space"], "base": {**settings["space"]["base"], "width": 7}}}
    assert _with_defaults(changed) != settings


def test_a_changed_space_or_sampler_is_refused_with_the_keys_that_differ(tiny_sweep, synthetic):
    out, _, _ = tiny_sweep
    changed = space_file(out.parent, SEARCH.replace("max = 32", "max = 64"), epochs=4, name="space")
    try:
        with pytest.raises(ConfigError, match="changed since: space.search.width. "):
            sweep(changed, out, trials=8, sampler="random", data=synthetic)
    finally:
        space_file(out.parent, SEARCH, epochs=4, name="space")
    with pytest.raises(ConfigError, match="changed since: sampler, sampler_seed"):
        sweep(out.parent / "space.toml", out, trials=8, sampler="tpe", sampler_seed=1, data=synthetic)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def forged_trial(journal: str, params: dict, value: float | None = 0.5, **attrs) -> None:
    """A trial written into the study in `journal` by someone else: any values, any ranges."""
    from optuna.distributions import FloatDistribution, IntDistribution

    storage = open_storage(journal)
    trial_id = storage.create_new_trial(storage.get_study_id_from_name("space"))
    for key, v in params.items():
        distribution = IntDistribution(0, 10**9) if isinstance(v, int) else FloatDistribution(-1e12, 1e12)
        storage.set_trial_param(trial_id, key, distribution.to_internal_repr(v), distribution)
    for key, v in attrs.items():
        storage.set_trial_user_attr(trial_id, key, v)
    storage.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, None if value is None else [value])


@pytest.mark.parametrize("forge, said", [
    (lambda s, j: forged_trial(j, GOOD, 2.0), "trial 0: `value\\[0\\]` must be at least 0.0 and at most 1.0, not 2.0"),
    (lambda s, j: forged_trial(j, GOOD, float("inf")), "trial 0: `value\\[0\\]` must be a finite number, not inf"),
    (lambda s, j: forged_trial(j, GOOD, None), "trial 0: complete without a value"),
    (lambda s, j: forged_trial(j, {**GOOD, "learning_rate": 1e9}),
     "trial 0: its learning_rate 1000000000.0 is not in the space \\(0.001 to 0.3, log scale\\)"),
    (lambda s, j: forged_trial(j, {**GOOD, "width": 12}), "trial 0: its width 12 is not in the space"),
    (lambda s, j: forged_trial(j, {"width": 16}), "trial 0: it ended without a value for learning_rate, dropout"),
    (lambda s, j: forged_trial(j, {**GOOD, "depth": 3}), "trial 0: 'depth' is not searched by this sweep"),
    (lambda s, j: forged_trial(j, GOOD, epochs="two"), "trial 0: `epochs` must be a whole number, not 'two'"),
    (lambda s, j: forged_trial(j, GOOD, owner={"pid": "1"}), "trial 0: `owner` lacks `boot`, `host`, `token`"),
    (lambda s, j: s.set_user_attr("test:0", {"trial": "zero"}), "`test:0` lacks `run`, .*`when`"),
    (lambda s, j: s.set_user_attr("fashionlab", "not a dict"), "`fashionlab` must be a table of keys and values"),
    (lambda s, j: s.set_user_attr("deep", nested(600)), "an attribute nests too deeply"),
])
def test_what_the_study_holds_is_checked_and_a_forged_trial_never_chosen(tmp_path, synthetic, forge, said):
    """Anyone who can write to the journal (or the database) can write any trial or attribute: the sweep
    refuses, in one line with the way out, what it never writes itself."""
    space_path, out, space, study, journal = started_sweep(tmp_path)
    forge(study, journal)
    with pytest.raises(RunError) as refused:
        sweep(space_path, out, trials=1, sampler="random", pruner="none", data=synthetic)
    message = str(refused.value)
    assert re.search(f"^the study journal {re.escape(journal)} is damaged \\(.*{said}.*\\); move it away \\(mv ",
                     message), message
    assert "\n" not in message and not (out / "best.toml").exists() and not (out / "trials.csv").exists()


def test_a_study_made_by_something_else_is_not_touched(tmp_path, synthetic, postgres):
    url = postgres.replace("postgresql://", "postgresql+psycopg://")
    foreign = optuna.create_study(study_name="someone-elses", storage=url, direction="maximize")
    foreign.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(ConfigError, match="already has trials that fashionlab did not make"):
        sweep(space_file(tmp_path, SEARCH), tmp_path / "out", trials=2, storage=postgres, study="someone-elses",
              data=synthetic)
    assert len(optuna.load_study(study_name="someone-elses", storage=url).trials) == 1
    optuna.create_study(study_name="a-minimizer", storage=url)
    with pytest.raises(RunError, match="cannot open study a-minimizer in postgresql://.* \\(it minimizes\\)"):
        sweep(space_file(tmp_path, SEARCH), tmp_path / "out", trials=2, storage=postgres, study="a-minimizer",
              data=synthetic)
    assert not (tmp_path / "out").exists()
