"""Model files read back safely: bounded before Keras builds them, safe mode on, and only models
that take 28 x 28 images and give class probabilities."""

import json
import os
import pickle
import tempfile
import zipfile

import keras
import numpy as np
import pytest

from fashionlab.errors import RunError
from fashionlab.modelfiles import MAX_MODEL_UNCOMPRESSED_BYTES, load_model_file
from fashionlab.rundir import Run


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax", name="dense")])
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    path = tmp_path_factory.mktemp("models") / "good.keras"
    model.save(path)
    return path


def rewrite_config(source, target, change):
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    change(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return target


def test_a_genuine_model_loads(saved_model):
    assert load_model_file(saved_model).count_params() == 28 * 28 * 10 + 10


@pytest.mark.parametrize("layers, classes, message", [
    ([keras.Input((4,)), keras.layers.Dense(10)], None, r"takes inputs of shape \(None, 4\), not 28 x 28 images"),
    ([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(7)], 10,
     r"gives outputs of shape \(None, 7\), not 10 class probabilities"),
    ([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(1)], None,
     r"gives outputs of shape \(None, 1\), not class probabilities \(N, classes\)"),
    ([keras.Input((28, 28)), keras.layers.Dense(3)], None,
     r"gives outputs of shape \(None, 28, 3\), not class probabilities"),
])
def test_models_of_other_shapes_are_refused(tmp_path, layers, classes, message):
    keras.Sequential(layers).save(tmp_path / "other.keras")
    with pytest.raises(RunError, match=message):
        load_model_file(tmp_path / "other.keras", classes=classes)


def test_a_model_of_seven_classes_loads_where_seven_are_expected_or_any(tmp_path):
    keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(7)]).save(tmp_path / "s.keras")
    assert load_model_file(tmp_path / "s.keras", classes=7).output_shape == (None, 7)
    assert load_model_file(tmp_path / "s.keras").output_shape == (None, 7)


@pytest.mark.parametrize("units, message", [
    (10**6, "declares more than 100,000,000 weights"),
    (10**9, "declares a layer of 1000000000 units"),
    ("10", "declares a layer of '10' units"),
])
def test_declared_sizes_are_bounded_before_anything_is_built(saved_model, tmp_path, units, message):
    def huge(config):  # a Dense of 10**6 units after 784 inputs: 3 GB of weights if built
        config["config"]["layers"][-1]["config"]["units"] = units

    path = rewrite_config(saved_model, tmp_path / "huge.keras", huge)
    with pytest.raises(RunError, match=message):
        load_model_file(path)


def test_a_failed_load_leaves_nothing_in_the_temporary_folder(saved_model, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    damaged = tmp_path / "damaged.keras"
    with zipfile.ZipFile(saved_model) as source, zipfile.ZipFile(damaged, "w") as archive:
        for name in source.namelist():
            archive.writestr(name, source.read(name))
        # A fourth member makes Keras unpack the archive into a folder of its own, and a name too long
        # for the file system makes that fail halfway, after the folder exists.
        archive.writestr("assets/" + "x" * 300, b"")
    with pytest.raises(RunError, match="cannot be loaded safely"):
        load_model_file(damaged)
    assert list(scratch.iterdir()) == []


def test_a_linked_model_file_in_a_run_is_refused(saved_model, tmp_path):
    (tmp_path / "model.keras").symlink_to(saved_model)
    with pytest.raises(RunError, match="is a symbolic link"):
        load_model_file(tmp_path / "model.keras")


def test_lambda_layer_is_refused_by_safe_mode(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)])
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(RunError, match="cannot be loaded safely"):
        load_model_file(tmp_path / "lambda.keras")


def test_config_naming_an_arbitrary_function_is_refused(saved_model, tmp_path):
    marker = tmp_path / "pwned"

    def hostile(config):
        config["config"]["layers"][-1]["config"]["activation"] = {
            "module": "os", "class_name": "function", "config": "system", "registered_name": "function"}

    path = rewrite_config(saved_model, tmp_path / "hostile.keras", hostile)
    with pytest.raises(RunError, match="cannot be loaded safely"):
        load_model_file(path).predict(keras.ops.ones((1, 28, 28)), verbose=0)
    assert not marker.exists()


def test_other_formats_are_refused(tmp_path):
    (tmp_path / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(RunError, match="only .keras model files"):
        load_model_file(tmp_path / "model.h5")
    (tmp_path / "model.keras").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(RunError, match="not a valid .keras archive"):
        load_model_file(tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:
        archive.writestr("weights.bin", b"\0")
    with pytest.raises(RunError, match="no config.json inside"):
        load_model_file(tmp_path / "other.keras")


def test_zip_bomb_is_refused_before_inflating(tmp_path, saved_model):
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(saved_model) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in source.namelist():
            archive.writestr(name, source.read(name))
        with archive.open("padding.bin", "w", force_zip64=True) as member:
            chunk = b"\0" * (1 << 20)
            for _ in range(MAX_MODEL_UNCOMPRESSED_BYTES // len(chunk) + 1):
                member.write(chunk)
    assert bomb.stat().st_size < 2_000_000  # small on disk, huge inflated
    with pytest.raises(RunError, match="would inflate to .* bytes"):
        load_model_file(bomb)


@pytest.mark.parametrize("name, content, message", [
    ("run.json", '{"status": "done"}', r"run.json: `status` must be one of 'running', 'complete'"),
    ("run.json", '{"status": "running", "epochs_done": "3"}', r"run.json: `epochs_done` must be a whole number"),
    ("run.json", '{"status": "running", "epochs_done": -1}', r"run.json: `epochs_done` must be at least 0"),
    ("run.json", "[1, 2]", r"run.json: the file must be a table of keys and values"),
    ("run.json", "{" * 100_000, r"run.json: not valid JSON"),
    ("run.json", "", r"run.json: not valid JSON"),
    ("metrics.json", '{"test_accuracy": 2}', r"metrics.json: the file lacks `best_epoch`"),
    ("config.json", '{"epochs": "ten"}', r"config.json: epochs must be int, got str 'ten'"),
    ("config.json", '{"colour": 1}', r"config.json: unknown config key\(s\): colour"),
    ("history.csv", "epoch,loss\n1,2\n", r"history.csv: `row 1` lacks `accuracy`"),
    ("history.csv", "epoch,loss,accuracy,val_loss,val_accuracy,seconds\n2,1,0.5,1,0.5,1\n",
     r"history.csv: its epochs must be numbered 1, 2, 3"),
    ("history.csv", "epoch,loss,accuracy,val_loss,val_accuracy,seconds\n1,nan,0.5,1,0.5,1\n",
     r"history.csv: `row 1.loss` must be a finite number"),
    ("history.csv", '"', r"history.csv: not a readable CSV table"),
    ("confusion_matrix.csv", "a,b\n1,2\n", r"confusion_matrix.csv: it must hold a 10 x 10 table of counts"),
])
def test_each_run_file_is_checked_and_named_when_damaged(tmp_path, name, content, message):
    run = Run(tmp_path)
    (tmp_path / name).write_text(content)
    read = {"run.json": run.status, "metrics.json": run.metrics, "config.json": run.config,
            "history.csv": run.history, "confusion_matrix.csv": run.confusion}[name]
    with pytest.raises(RunError, match=message) as info:
        read()
    assert "\n" not in str(info.value) and "the run directory is damaged" in str(info.value)


def test_only_well_formed_checkpoint_names_count(tmp_path):
    for name in ("checkpoint-epoch3.keras", "checkpoint-epoch\u00b2.keras", "checkpoint-epoch0.keras",
                 "checkpoint-epoch\u0663.keras", "checkpoint-epoch" + "9" * 30 + ".keras", "checkpoint-epoch-1.keras"):
        (tmp_path / name).write_bytes(b"")
    assert Run(tmp_path).checkpoints() == {3: tmp_path / "checkpoint-epoch3.keras"}


def test_a_linked_lock_file_is_refused_and_nothing_is_written_through_it(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunError, match=r"cannot lock run directory .*\(.lock: it is a symbolic link\)"):
        Run.acquire(tmp_path / "run")
    assert not (tmp_path / "elsewhere").exists()
    os.mkfifo(tmp_path / "fifo-lock")
    (tmp_path / "run" / ".lock").unlink()
    os.rename(tmp_path / "fifo-lock", tmp_path / "run" / ".lock")
    with pytest.raises(RunError, match=r".lock is a FIFO \(named pipe\); remove it"):
        Run.acquire(tmp_path / "run")


def test_writes_replace_a_link_in_the_run_directory_never_its_target(tmp_path):
    outside = tmp_path / "outside.html"
    outside.write_text("not fashionlab's")
    with Run.create(tmp_path / "run") as run:
        (run.path / "report.html").symlink_to(outside)
        run.write_text("report.html", "the report")
    assert outside.read_text() == "not fashionlab's"
    assert not (tmp_path / "run" / "report.html").is_symlink()
    assert (tmp_path / "run" / "report.html").read_text() == "the report"


def test_run_files_behind_links_are_not_read(tmp_path):
    (tmp_path / "elsewhere.json").write_text('{"status": "complete"}')
    (tmp_path / "run.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(RunError, match="run.json is a symbolic link"):
        Run(tmp_path).status()


def test_a_refused_run_directory_is_left_as_it_was(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("hi")
    with pytest.raises(RunError, match="already exists and is not empty"):
        Run.create(tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["precious.txt"]  # no lock file left
    too_long = tmp_path / "a" / "b" / ("x" * 300)
    with pytest.raises(RunError, match="cannot create run directory .*File name too long"):
        Run.create(too_long)
    assert not (tmp_path / "a").exists()  # nor the folders made on the way


@pytest.fixture(scope="module")
def viewed_model(tmp_path_factory):
    """A model with test-time views, as fashionlab builds it: views first, their mean last."""
    from fashionlab.layers import TestTimeMean, TestTimeViews

    model = keras.Sequential([keras.Input((28, 28)), TestTimeViews("mirror"), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax"), TestTimeMean("mirror")])
    path = tmp_path_factory.mktemp("models") / "viewed.keras"
    model.save(path)
    return path


def layers_of(config):
    return config["config"]["layers"]


@pytest.mark.parametrize("change", [
    lambda c: layers_of(c)[-1]["config"].update(views="mirror-shift"),  # views and mean disagree
    lambda c: layers_of(c).pop(),  # views without their mean: two rows for each image
    lambda c: layers_of(c).pop(1),  # a mean without views: it mixes the batch's images
    lambda c: layers_of(c).insert(1, json.loads(json.dumps(layers_of(c)[1]))),  # views of views
    lambda c: layers_of(c).insert(2, layers_of(c).pop(1)),  # views after another layer
    lambda c: layers_of(c).extend(json.loads(json.dumps(layers_of(c)[1:]))),  # stacked pairs: 4 x the rows
    lambda c: (layers_of(c).pop(), layers_of(c)[1].update(class_name="Identity")),  # views named as another class
    lambda c: layers_of(c)[-1].update(class_name="Identity", registered_name="fashionlab>TestTimeViews"),
])
def test_test_time_views_are_loaded_only_as_one_pair_of_the_same_views_around_the_network(viewed_model, tmp_path,
                                                                                           change):
    model = load_model_file(viewed_model)
    assert [type(layer).__name__ for layer in model.layers][::3] == ["TestTimeViews", "TestTimeMean"]
    crafted = rewrite_config(viewed_model, tmp_path / "crafted.keras", change)
    with pytest.raises(RunError, match="declares test-time views other than one TestTimeViews first"):
        load_model_file(crafted)


@pytest.fixture(scope="module")
def viewed_ensemble(viewed_model, tmp_path_factory):
    """Two models with test-time views averaged, as `fashionlab ensemble` builds them."""
    from fashionlab.ensembles import averaged

    path = tmp_path_factory.mktemp("models") / "ensemble.keras"
    averaged([load_model_file(viewed_model), load_model_file(viewed_model)]).save(path)
    return path


def member_layers(config, member=1):
    return layers_of(layers_of(config)[member])  # the Functional's layers: the input, member_1, member_2, average


@pytest.mark.parametrize("change", [
    lambda c: member_layers(c).pop(),  # a member's views without their mean
    lambda c: layers_of(c).insert(3, member_layers(c)[1]),  # a member's views taken out, into the ensemble
    lambda c: member_layers(c, 2).insert(2, member_layers(c, 2)[1]),  # views twice in a member
    lambda c: member_layers(c).insert(-1, member_layers(c).pop()),  # a member's mean before its last layer
])
def test_each_member_of_an_ensemble_may_hold_one_pair_of_views_and_nothing_else_may(viewed_ensemble, tmp_path, change):
    model = load_model_file(viewed_ensemble)
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.float32)
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    np.testing.assert_allclose(model.predict(x, verbose=0), np.mean([m.predict(x, verbose=0) for m in members], 0),
                               atol=1e-6)
    crafted = rewrite_config(viewed_ensemble, tmp_path / "crafted.keras", change)
    with pytest.raises(RunError, match="declares test-time views other than one TestTimeViews first"):
        load_model_file(crafted)


def test_a_layer_is_known_by_the_class_keras_builds_for_it(viewed_model, tmp_path):
    from fashionlab.modelfiles import _archive_config, _test_time_problem

    def disguised(c):  # a mean without views, named as a layer that is not one
        layers_of(c).pop(1)
        layers_of(c)[-1]["class_name"] = "Identity"

    crafted = rewrite_config(viewed_model, tmp_path / "crafted.keras", disguised)
    with open(crafted, "rb") as handle:
        assert "declares test-time views other than" in _test_time_problem(_archive_config(crafted, handle))


def test_views_are_checked_on_the_model_keras_built_too(viewed_model):
    from fashionlab.ensembles import averaged
    from fashionlab.layers import TestTimeMean, TestTimeViews
    from fashionlab.modelfiles import _built_test_time_problem

    viewed = load_model_file(viewed_model)
    assert _built_test_time_problem(viewed) is None and _built_test_time_problem(averaged([viewed, viewed])) is None
    network = [keras.layers.Flatten(), keras.layers.Dense(10)]
    for layers in ([TestTimeViews("mirror"), *network],  # no mean
                   [*network, TestTimeMean("mirror")],  # no views
                   [TestTimeViews("mirror"), *network, TestTimeMean("mirror-shift")]):  # the mean of other views
        model = keras.Sequential([keras.Input((28, 28)), *layers])
        assert "declares test-time views other than" in _built_test_time_problem(model)
        assert "declares test-time views other than" in _built_test_time_problem(averaged([viewed, model]))
    pixels = keras.Input((28, 28))  # views and their mean around a model that is not a Sequential one
    functional = keras.Model(pixels, TestTimeMean("mirror")(keras.layers.Dense(10)(keras.layers.Flatten()(
        TestTimeViews("mirror")(pixels)))))
    assert "declares test-time views other than" in _built_test_time_problem(functional)


def test_a_config_nested_too_deep_to_look_through_is_refused(viewed_model, tmp_path):
    deep: dict = {}
    for _ in range(70):
        deep = {"inner": deep}
    crafted = rewrite_config(viewed_model, tmp_path / "deep.keras", lambda c: layers_of(c)[2]["config"].update(x=deep))
    with pytest.raises(RunError, match="declares layers nested more than 64 levels deep; it is not a fashionlab"):
        load_model_file(crafted)
