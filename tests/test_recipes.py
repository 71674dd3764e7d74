import json
import re

import pytest
from helpers import write_seven_class_dataset

from fashionlab import recipes
from fashionlab.cli import _config_from, build_parser, main
from fashionlab.config import TrainConfig
from fashionlab.errors import ConfigError


def test_every_shipped_recipe_loads_and_the_tutorial_is_the_default_config():
    found = recipes.all_recipes()
    assert [r.name for r in found] == recipes.names() and "tutorial" in recipes.names()
    for recipe in found:
        config = recipe.config()
        assert config.name == recipe.name and recipe.description and "\n" not in recipe.description
    assert recipes.get("tutorial").config() == TrainConfig()


def test_measured_figures_are_checked_and_listed(tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "FOLDER", tmp_path)
    (tmp_path / "quick.toml").write_text(
        'description = "a quick one"\n[train]\nepochs = 2\n[measured]\ntest_accuracy_mean = 0.861\n'
        'test_accuracy_std = 0.002\ntest_accuracy_worst = 0.858\nseconds = 4.2\nseconds_cold = 9.6\nseeds = 3\n'
        'dataset = "mnist"\n'
        'machine = "2-core test CPU"\ncommand = "fashionlab compare --variants quick"\n')
    (tmp_path / "fresh.toml").write_text('description = "not yet run"\n[train]\ndepth = 3\n')
    gpu = ('test_accuracy_mean = 0.95\ntest_accuracy_std = 0.001\ntest_accuracy_worst = 0.949\nseconds = 31\n'
           'seeds = 3\ndataset = "fashion-mnist"\nmachine = "one test GPU"\ncommand = "benchmarks/gpu.sh"\n')
    (tmp_path / "big.toml").write_text(f'description = "for a GPU"\n[train]\ndepth = 2\n[measured_gpu]\n{gpu}')
    text = recipes.listing()
    assert re.search(r"\nquick +0.8610 ± 0.0020 \(worst 0.8580, 3 seeds\) +4.2 s \(10 s cold\) +a quick one\n", text)
    assert re.search(r"\nfresh +not measured yet +not yet run\n", text)
    assert re.search(r"\nbig +not measured on the CPU +0.9500 in 31 s +for a GPU\n", text)
    assert text.index("\nquick") < text.index("\nbig") < text.index("\nfresh")  # measured ones first
    assert "measured on: MNIST, 2-core test CPU\non a GPU: Fashion-MNIST, one test GPU\n" in text
    assert recipes.get("big").measured_gpu["seconds"] == 31 and recipes.get("big").measured is None
    (tmp_path / "big.toml").write_text(f'description = "x"\n[train]\n[measured_gpu]\n{gpu}'.replace("31", "-1"))
    with pytest.raises(ConfigError, match=r"big.toml: \[measured_gpu\] .*seconds"):
        recipes.get("big")
    (tmp_path / "big.toml").write_text(f'description = "x"\n[train]\n[measured_gpu]\n{gpu}'.replace('"fashion-mnist"',
                                                                                                    '"emnist"'))
    with pytest.raises(ConfigError, match=r"big.toml: \[measured_gpu\] .*dataset"):
        recipes.get("big")
    (tmp_path / "big.toml").unlink()
    assert recipes.get("quick").config(overrides={"seed": 3}) == TrainConfig(name="quick", epochs=2, seed=3)

    (tmp_path / "bad.toml").write_text('description = "x"\n[train]\n[measured]\ntest_accuracy_mean = 1.5\n')
    with pytest.raises(ConfigError, match=r"bad.toml: \[measured\] the file lacks"):
        recipes.get("bad")
    (tmp_path / "bad.toml").write_text('description = "x"\n[train]\ndepht = 3\n')
    with pytest.raises(ConfigError, match="unknown config key.*depht"):
        recipes.get("bad")
    (tmp_path / "bad.toml").write_text('description = "x"\n[train]\nname = "other"\n')
    with pytest.raises(ConfigError, match="its \\[train\\] name must be 'bad'"):
        recipes.get("bad")
    (tmp_path / "bad.toml").write_text('[train]\ndepth = 3\n')
    with pytest.raises(ConfigError, match="needs a one-line `description`"):
        recipes.get("bad")
    with pytest.raises(ConfigError, match="no recipe named 'nope'; choose from bad, fresh, quick"):
        recipes.get("nope")  # nothing close: no guess
    with pytest.raises(ConfigError, match=r"no recipe named 'frsh' \(did you mean 'fresh'\?\); choose from bad, "):
        recipes.get("frsh")


def test_train_recipe_options_override_and_rename(capsys):
    config = _config_from(build_parser().parse_args(["train", "--recipe", "tutorial", "--batch-norm", "before"]))
    assert config == TrainConfig(name="tutorial-batch_norm-before", batch_norm="before")
    config = _config_from(build_parser().parse_args(["train", "--recipe", "tutorial", "--epochs", "3",
                                                     "--learning-rate", "1e-20", "--name", "mine"]))
    assert (config.name, config.epochs, config.learning_rate) == ("mine", 3, 1e-20)
    assert _config_from(build_parser().parse_args(["train", "--learning-rate", "1e+20"])).name == \
        "tutorial-learning_rate-1e20"  # "+" is no name character, and 1e-20 would say another number


def test_a_name_given_is_kept_even_the_recipes_own():
    config = _config_from(build_parser().parse_args(["train", "--recipe", "fast-mlp", "--width", "64",
                                                     "--name", "fast-mlp"]))
    assert (config.name, config.width) == ("fast-mlp", 64)


@pytest.mark.parametrize("argv", [["train", "--recipe", ""], ["compare", "--recipe", " "], ["summary", "--recipe", ""],
                                  ["recipes", ""]])
def test_an_empty_recipe_name_is_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2 and "an empty recipe name" in capsys.readouterr().err


def test_recipe_and_config_cannot_both_be_given(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "--recipe", "tutorial", "--config", "x.toml"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_recipes_command_lists_and_shows(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in recipes.names()) and "fashionlab train --recipe NAME" in out
    assert main(["recipes", "tutorial"]) == 0
    assert capsys.readouterr().out == recipes.get("tutorial").path.read_text()
    assert main(["recipes", "nope"]) == 1
    assert "no recipe named 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("name", recipes.names())
def test_a_recipe_file_printed_by_the_recipes_command_is_a_config_file(name, tmp_path, capsys):
    assert main(["recipes", name]) == 0
    (tmp_path / "mine.toml").write_text(capsys.readouterr().out)
    config = _config_from(build_parser().parse_args(["train", "--config", str(tmp_path / "mine.toml")]))
    assert config == recipes.get(name).config() and config.name == name


def test_a_run_records_the_recipe_it_came_from(tmp_path, synthetic):
    data = ["--data-dir", str(synthetic.data_dir), "--no-verify", "--validation-size", "60"]
    assert main(["train", "--recipe", "fast-mlp", "--epochs", "1", "--quiet", "--run-dir", str(tmp_path / "r"),
                 *data]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert metrics["recipe"] == "fast-mlp" and config["width"] == 256
    assert config["name"] == "fast-mlp-epochs-1-validation_size-60"
    assert main(["train", "--epochs", "1", "--quiet", "--run-dir", str(tmp_path / "plain"), "--depth", "1",
                 "--width", "4", *data]) == 0
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["recipe"] is None


@pytest.mark.parametrize("name", recipes.names())
def test_every_recipe_trains(name, tmp_path, synthetic):
    """One epoch of each shipped recipe, as it is, on the small synthetic data."""
    run = tmp_path / name
    assert main(["train", "--recipe", name, "--epochs", "1", "--quiet", "--run-dir", str(run),
                 "--data-dir", str(synthetic.data_dir), "--no-verify", "--validation-size", "60"]) == 0
    config = json.loads((run / "config.json").read_text())
    expected = {**recipes.get(name).values, "epochs": 1, "name": f"{name}-epochs-1-validation_size-60"}
    assert {key: config[key] for key in expected} == expected
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert json.loads((run / "metrics.json").read_text())["recipe"] == name


def test_a_recipe_trains_on_any_data_set(tmp_path):
    folder = write_seven_class_dataset(tmp_path / "seven", tuple(f"kind {i}" for i in range(7)))
    run = tmp_path / "run"
    assert main(["train", "--recipe", "fast-mlp", "--dataset", str(folder), "--epochs", "1", "--quiet",
                 "--run-dir", str(run), "--validation-size", "60"]) == 0
    kept = json.loads((run / "run.json").read_text())["dataset"]
    assert kept["class_names"] == [f"kind {i}" for i in range(7)]
    assert json.loads((run / "metrics.json").read_text())["recipe"] == "fast-mlp"


def test_changes_from_a_recipe_leave_out_the_name_and_the_seed():
    base = recipes.get("fast-mlp").config()
    changed = base.replace(name="mine", seed=base.seed + 1, epochs=base.epochs + 3, train_samples=500)
    assert recipes.changes_from(changed, "fast-mlp") == {"epochs": (base.epochs, base.epochs + 3),
                                                         "train_samples": (0, 500)}
    assert recipes.changes_text(recipes.changes_from(changed, "fast-mlp")) == \
        f"epochs {base.epochs} → {base.epochs + 3}, train_samples all → 500"
    assert recipes.changes_from(TrainConfig(seed=1), None) == {}  # against the tutorial's
    assert recipes.changes_from(TrainConfig(depth=3), "<b>no such recipe</b>") == {"depth": (20, 3)}
    assert recipes.known("<b>no such recipe</b>") is None and recipes.known("fast-cnn") == "fast-cnn"
