"""The search space file: ranges, log scales, steps and choices checked against the config keys; a
file that is not a space refused with what is wrong."""


import optuna
import pytest
from sweeps_helpers import SEARCH, space_file

from fashionlab.errors import ConfigError
from fashionlab.sweeps.space import contains, describe, load_space


def test_a_space_reads_ranges_log_scales_steps_and_choices(tmp_path):
    space = load_space(space_file(tmp_path, SEARCH + 'optimizer = { choices = ["sgd", "adam"] }\n'
                                                     "augment_flip = { choices = [true, false] }\n"))
    lr, width, dropout = (space.search[k] for k in ("learning_rate", "width", "dropout"))
    assert (lr.low, lr.high, lr.log) == (0.001, 0.3, True)
    assert isinstance(width, optuna.distributions.IntDistribution) and (width.low, width.high, width.step) == (8, 32, 8)
    assert isinstance(dropout, optuna.distributions.FloatDistribution) and (dropout.low, dropout.high) == (0.0, 0.4)
    assert space.search["optimizer"].choices == ("sgd", "adam")
    assert space.search["augment_flip"].choices == (True, False)
    assert space.base.depth == 2 and space.base.epochs == 3 and space.name == "space"
    assert space.config({"width": 24, "dropout": 0.1}, "space-3").width == 24


def test_a_space_starts_from_a_recipe(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('recipe = "fast-mlp"\n[train]\nepochs = 5\n[search]\ndropout = [0.0, 0.5]\n')
    space = load_space(path)
    assert (space.base.name, space.base.width, space.base.epochs) == ("fast-mlp", 256, 5)


def test_options_set_keys_for_every_trial_over_the_space_but_never_a_searched_key(tmp_path):
    path = space_file(tmp_path, SEARCH)
    space = load_space(path, {"epochs": 1, "train_samples": 100, "batch_size": 16})
    assert (space.base.epochs, space.base.train_samples, space.base.batch_size) == (1, 100, 16)
    assert (space.base.depth, space.base.seed) == (2, 7)  # the rest of [train] stays
    assert space.config({"width": 24}, "space-0").epochs == 1
    assert load_space(path).settings() != space.settings()  # a study started without them refuses to go on
    with pytest.raises(ConfigError, match=r"^`width` is searched by sweep space .*space.toml \(\[search\] width\): "
                                          r"change its range there, or leave `width` out$") as refused:
        load_space(path, {"epochs": 1, "width": 16})
    assert refused.value.terms == ("width",)
    with pytest.raises(ConfigError, match="epochs"):
        load_space(path, {"epochs": 0})


@pytest.mark.parametrize("search, message", [
    ("widht = [8, 32]\n", "unknown config key 'widht' \\(did you mean 'width'\\?\\)"),
    ("seed = [1, 9]\n", "seed cannot be searched"),
    ("width = [32, 8]\n", "width's min \\(32\\) must be below its max \\(8\\)"),
    ("width = [8.5, 32]\n", "width must be int, got float 8.5"),
    ("dropout = [0.0, 2.0]\n", "dropout must be at most 0.9"),
    ("learning_rate = { min = 0, max = 0.1, log = true }\n", "greater than 0|log scale needs a min above 0"),
    ("learning_rate = { min = 0.001, max = 0.1, log = true, step = 0.01 }\n", "choose log or step"),
    ("width = { min = 8, max = 32, step = 64 }\n", "step must be above 0 and at most max - min"),
    ("optimizer = [\"sgd\", \"adam\"]\n", "optimizer must be one of|takes one of a set of values"),
    ("optimizer = { choices = [\"sgd\", \"lion\"] }\n", "optimizer must be one of"),
    ("width = { choices = [] }\n", "choices must be at least two different values"),
    ("width = { choices = [8, 8] }\n", "choices must be at least two different values"),
    ("dropout = { choices = [0, 0.0] }\n", "choices must be at least two different values"),
    ("width = { choices = [8] }\n", "a single value belongs in \\[train\\]"),
    ("dropout = { choices = [1979-05-27, 0.1] }\n", "dropout must be float, got date"),
    ("dropout = { min = 0.0, max = 0.5, step = 0.3 }\n", "step \\(0.3\\) must divide max - min"),
    ("validation_size = [100, 200]\n", "validation_size cannot be searched; every trial must be judged on the same"),
    ("engine = { choices = [\"keras\", \"compiled\"] }\n", "engine cannot be searched"),
    ("dataset = { choices = [\"fashion-mnist\", \"./mine\"] }\n", "dataset cannot be searched; every trial must be"),
    ("width = { min = 8 }\n", "needs both min and max"),
    ("width = { min = 8, max = 16, scale = 2 }\n", "width must be \\[min, max\\]"),
    ("width = 16\n", "width must be \\[min, max\\]"),
    ("epochs = [1, 4]\n", "epochs is both fixed in \\[train\\] and searched"),
    ("", "needs a \\[search\\] table"),
])
def test_a_wrong_space_is_refused_with_what_is_wrong(tmp_path, search, message):
    with pytest.raises(ConfigError, match=message):
        load_space(space_file(tmp_path, search))


def test_a_space_file_that_is_not_a_space_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    for text, message in [("[search\n", "not valid TOML"), ("colour = 1\n[search]\nwidth = [8, 16]\n",
                                                             "unknown key\\(s\\) colour"),
                          ('recipe = "nope"\n[search]\nwidth = [8, 16]\n', "no recipe named 'nope'"),
                          ("[train]\ndepth = -1\n[search]\nwidth = [8, 16]\n",
                           "\\[train\\]: depth must be at least 0")]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_space(bad)
    with pytest.raises(ConfigError, match="cannot read|not found|no such|does not exist"):
        load_space(tmp_path / "missing.toml")


def test_a_space_file_nesting_too_deeply_is_refused_as_a_config_file_is(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("[search]\nwidth = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=f"sweep space {deep} nests too deeply; it is not a sweep space"):
        load_space(deep)


def test_a_space_file_may_start_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff[search]\ndropout = [0.0, 0.5]\n".encode())
    assert list(load_space(path).search) == ["dropout"]


def test_a_value_is_in_the_space_as_optuna_judges_a_trials_values(tmp_path):
    space = load_space(space_file(tmp_path, SEARCH + 'optimizer = { choices = ["sgd", "adam"] }\n'))
    lr, width, dropout, optimizer = (space.search[k] for k in ("learning_rate", "width", "dropout", "optimizer"))
    assert contains(lr, 0.01) and contains(width, 16) and contains(width, 16.0) and contains(optimizer, "adam")
    assert contains(dropout, 0.0) and contains(dropout, 0.4)
    for distribution, value in [(lr, 1e9), (lr, 0.0), (width, 12), (width, 40), (dropout, -0.1), (optimizer, "lion"),
                                (lr, "fast"), (width, {}), (optimizer, [])]:
        assert not contains(distribution, value), (distribution, value)
    assert [describe(d) for d in (lr, width, dropout, optimizer)] == [
        ("0.001 to 0.3, log scale", "log"), ("8 to 32, step 8", "linear"), ("0 to 0.4", "linear"),
        ("one of sgd, adam", "choice")]
