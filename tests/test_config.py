import json

import pytest

from fashionlab.config import ConfigError, TrainConfig, from_dict, load_config


def test_defaults_are_the_tutorial_recipe():
    c = TrainConfig()
    assert (c.depth, c.width, c.activation, c.batch_norm) == (20, 100, "relu", "after")
    assert (c.optimizer, c.learning_rate, c.batch_size, c.epochs) == ("sgd", 0.01, 32, 10)
    assert (c.validation_size, c.scale_inputs) == (5000, True)


def test_toml_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('epochs = 3\nbatch_norm = "before"\nlearning_rate = 1\n')
    config = load_config(path, {"epochs": 5})
    assert (config.epochs, config.batch_norm, config.learning_rate) == (5, "before", 1.0)


def test_train_table_and_run_config_json_are_accepted(tmp_path):
    (tmp_path / "a.toml").write_text("[train]\ndepth = 3\n")
    assert load_config(tmp_path / "a.toml").depth == 3
    (tmp_path / "config.json").write_text(json.dumps(TrainConfig(width=7).to_dict()))
    assert load_config(tmp_path / "config.json") == TrainConfig(width=7)


@pytest.mark.parametrize("values, message", [
    ({"epoch": 3}, "unknown config key(s): epoch"),
    ({"depth": 0}, "depth must be at least 1"),
    ({"batch_size": -32}, "batch_size must be at least 1"),
    ({"epochs": 2.5}, "epochs must be int"),
    ({"depth": True}, "depth must be int"),
    ({"learning_rate": float("nan")}, "learning_rate must be a positive finite number"),
    ({"learning_rate": "fast"}, "learning_rate must be float"),
    ({"batch_norm": "middle"}, "batch_norm must be one of after, before, none"),
    ({"scale_inputs": "yes"}, "scale_inputs must be bool"),
    ({"name": "../x"}, "cannot be part of a directory name"),
])
def test_bad_values_are_rejected_with_the_reason(values, message):
    with pytest.raises(ConfigError) as info:
        from_dict(values)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("epochs = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_replace_validates_too():
    assert TrainConfig().replace(epochs=1).epochs == 1
    with pytest.raises(ConfigError):
        TrainConfig().replace(epochs=0)
