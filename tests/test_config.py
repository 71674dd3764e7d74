import json
import re
from typing import Literal

import pytest

from fashionlab.config import (
    FIELDS,
    TYPES,
    FieldType,
    TrainConfig,
    check_runnable,
    conv_channels,
    describe_network,
    field_type,
    from_dict,
    load_config,
    parameter_estimate,
    training_bytes,
    with_changes,
)
from fashionlab.errors import ConfigError


def test_defaults_are_the_tutorial_recipe():
    c = TrainConfig()
    assert (c.depth, c.width, c.activation, c.batch_norm) == (20, 100, "relu", "after")
    assert (c.optimizer, c.learning_rate, c.batch_size, c.epochs) == ("sgd", 0.01, 32, 10)
    assert (c.validation_size, c.scale_inputs) == (5000, True)


def test_toml_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('epochs = 3\nbatch_norm = "before"\nlearning_rate = 1\n')
    config = load_config(path, {"epochs": 5})
    assert (config.epochs, config.batch_norm) == (5, "before")
    assert config.learning_rate == 1.0 and type(config.learning_rate) is float


def test_an_int_for_a_float_field_is_stored_as_a_float():
    config = TrainConfig(learning_rate=1)
    assert type(config.learning_rate) is float
    assert json.loads(json.dumps(config.to_dict()))["learning_rate"] == 1.0


def test_train_table_and_run_config_json_are_accepted(tmp_path):
    (tmp_path / "a.toml").write_text("[train]\ndepth = 3\n")
    assert load_config(tmp_path / "a.toml").depth == 3
    (tmp_path / "config.json").write_text(json.dumps(TrainConfig(width=7).to_dict()))
    assert load_config(tmp_path / "config.json") == TrainConfig(width=7)


@pytest.mark.parametrize("values, message", [
    ({"epoch": 3}, "unknown config key(s): epoch"),
    ({"depth": -1}, "depth must be at least 0, got -1"),
    ({"dropout": 0.2, "alpha_dropout": 0.1}, "choose dropout or alpha_dropout, not both"),
    ({"optimizer": "adam", "momentum": 0.9}, "momentum is for optimizer sgd"),
    ({"epochs": 3, "warmup_epochs": 3}, "warmup_epochs (3) must be fewer than epochs (3)"),
    ({"depth": 0, "dropout": 0.5}, "depth 0 has no hidden layer"),
    ({"dropout": 0.95}, "dropout must be at most 0.9"),
    ({"augment_shift": 9}, "augment_shift must be at most 8"),
    ({"model": "resnet"}, "model must be one of mlp, cnn"),
    ({"batch_size": -32}, "batch_size must be at least 1"),
    ({"seed": -1}, "seed must be at least 0"),
    ({"train_samples": -1}, "train_samples must be at least 0"),
    ({"epochs": 2.5}, "epochs must be int"),
    ({"depth": True}, "depth must be int"),
    ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
    ({"learning_rate": float("inf")}, "learning_rate must be a finite number"),
    ({"learning_rate": 0}, "learning_rate must be greater than 0"),
    ({"learning_rate": 10**400}, "learning_rate must be a finite number"),
    ({"learning_rate": "fast"}, "learning_rate must be float"),
    ({"learning_rate": True}, "learning_rate must be float"),
    ({"batch_norm": "middle"}, "batch_norm must be one of after, before, none"),
    ({"batch_norm": 1}, "batch_norm must be str"),
    ({"scale_inputs": "yes"}, "scale_inputs must be bool"),
    ({"scale_inputs": 1}, "scale_inputs must be bool"),
    ({"name": "../x"}, "name '../x' cannot be used"),
    ({"name": ""}, "name '' cannot be used"),
    ({"name": "$x^2$"}, "cannot be used"),  # matplotlib math text
    ({"name": "a\x00b"}, "cannot be used"),
    ({"name": "a\nb"}, "cannot be used"),
    ({"name": "\x1b[31mred"}, "cannot be used"),
    ({"name": "=cmd"}, "cannot be used"),  # a spreadsheet formula in results.csv
    ({"name": "x" * 65}, "cannot be used"),
    ({"name": "\U0001D400" * 17}, "be at most 64 bytes long in UTF-8"),  # 68 bytes: too long a file name
    ({"name": "-rf"}, "cannot be used"),
    ({"seed": 2**32}, "seed must be at most 4,294,967,295"),
    ({"depth": 251}, "depth must be at most 250"),
    ({"epochs": 10**5000}, "epochs must be at most 100,000, got a number too large to print"),
])
def test_bad_values_are_rejected_with_the_reason(values, message):
    with pytest.raises(ConfigError) as info:
        from_dict(values)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["tutorial", "bn-after.v2", "实验_1", "9"])
def test_names_of_letters_digits_and_separators_are_kept(name):
    assert TrainConfig(name=name).name == name


@pytest.mark.parametrize("values, train_images, message", [
    ({"validation_size": 360}, 360, "validation_size 360 leaves no training images out of the 360"),
    ({"validation_size": 60, "train_samples": 301}, 360, "train_samples 301 is more than the 300 training images"),
    ({"validation_size": 60, "batch_size": 301}, 360, "batch_size 301 is larger than the 300 training images"),
    ({"validation_size": 60, "train_samples": 50, "batch_size": 51}, 360, "larger than the 50 training images"),
])
def test_configs_the_data_cannot_run_are_refused(values, train_images, message):
    with pytest.raises(ConfigError, match=message):
        check_runnable(TrainConfig(**values), train_images=train_images, free_memory=None)


def test_the_largest_runnable_batch_and_sample_counts_pass():
    check_runnable(TrainConfig(validation_size=60, train_samples=300, batch_size=300), train_images=360,
                   free_memory=None)
    check_runnable(TrainConfig(validation_size=359, batch_size=1), train_images=360, free_memory=None)


def test_networks_larger_than_free_memory_are_refused():
    config = TrainConfig(width=20000, depth=30)
    need = training_bytes(config, 55000)
    with pytest.raises(ConfigError, match=r"depth 30 x width 20000 \(11,\d{3},\d{3},\d{3} weights\) needs about"):
        check_runnable(config, train_images=60000, free_memory=need)
    check_runnable(config, train_images=60000, free_memory=2 * need)
    check_runnable(config, train_images=60000, free_memory=None)  # unknown: not judged


@pytest.mark.parametrize("values", [
    {}, {"batch_norm": "none"}, {"batch_norm": "before", "depth": 3, "width": 7},
    {"model": "cnn", "filters": 4, "conv_blocks": 3, "convs_per_block": 2, "depth": 1, "width": 16},
    {"model": "cnn", "filters": 4, "conv_blocks": 1, "convs_per_block": 1, "depth": 1, "width": 16},
    {"model": "cnn", "filters": 4, "conv_blocks": 3, "depth": 1, "width": 16, "whiten": True},  # 27 -> 13 -> 6 -> 3
])
def test_the_parameter_estimate_is_the_built_networks_count(values):
    from fashionlab.model import build_model, parameter_counts
    from fashionlab.preprocessing import Scaler

    config = TrainConfig(**values)
    assert parameter_estimate(config) == parameter_counts(build_model(config, Scaler(0.0, 1.0)))["total"]


def test_each_convolution_block_doubles_the_channels_of_the_one_before():
    config = TrainConfig(model="cnn", filters=4, conv_blocks=3, convs_per_block=2)
    assert conv_channels(config) == [4, 4, 8, 8, 16, 16]  # the model is built from this list too


def test_unreadable_config_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("epochs = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a table"):
        load_config(tmp_path / "list.json")


def test_replace_validates_too():
    assert TrainConfig().replace(epochs=1).epochs == 1
    with pytest.raises(ConfigError):
        TrainConfig().replace(epochs=0)


def test_field_types_come_from_the_annotations_not_their_spelling():
    assert field_type(int) == FieldType(int)
    assert field_type(int | None) == FieldType(int, None, optional=True)
    assert field_type(Literal["a", "b"] | None) == FieldType(str, ("a", "b"), optional=True)
    assert field_type(TYPES["batch_norm"]) == FieldType(str, ("after", "before", "none"))
    assert field_type(TYPES["learning_rate"]) == FieldType(float)
    with pytest.raises(TypeError, match="unsupported config annotation"):
        field_type(int | str)
    with pytest.raises(TypeError, match="choices of one type only"):
        field_type(Literal["auto", 0])


def test_every_field_has_help_and_a_supported_type():
    for name, f in FIELDS.items():
        assert f.metadata["help"], name
        kind = field_type(TYPES[name])
        assert isinstance(f.default, kind.base) and (kind.choices is None or f.default in kind.choices), name

def test_bounds_are_inclusive_and_a_refusal_shows_the_value():
    TrainConfig(dropout=0.9, augment_shift=8)  # each key's maximum itself is allowed
    TrainConfig(name="a" * 64)
    for values, message in [({"name": "é" + "a" * 63}, "be at most 64 bytes long in UTF-8"),  # 64 characters
                            ({"depth": None}, "depth must be int, got NoneType None"),
                            ({"optimizer": "adagrad"}, "optimizer must be one of sgd, adam, rmsprop, nadam, adamw; "
                                                       "got 'adagrad'"),
                            ({"learning_rate": 0.0}, "learning_rate must be greater than 0, got 0.0")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            TrainConfig(**values)


def test_keys_that_conflict_are_refused_with_exactly_their_message():
    TrainConfig(momentum=0.9)  # sgd's own option
    for values, message in [({"dropout": 0.2, "alpha_dropout": 0.1}, "choose dropout or alpha_dropout, not both"),
                            ({"momentum": 0.9, "optimizer": "adam"},
                             "momentum is for optimizer sgd; adam keeps its own moments (set momentum to 0)"),
                            ({"depth": 0, "dropout": 0.5},
                             "a network of depth 0 has no hidden layer to apply dropout to")]:
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            TrainConfig(**values)
    with pytest.raises(ConfigError, match=r"^unknown config key\(s\): deep \(did you mean depth\?\), wide \(did you "
                                          r"mean width\?\), zzz; valid keys: name, model, depth, "):
        from_dict({"wide": 2, "deep": 1, "zzz": 0})


def test_config_files_say_what_is_wrong_in_their_own_format(tmp_path):
    for name, text, message in [("deep.json", "[" * 100_000,
                                 "config file {} nests too deeply; it is not a fashionlab config"),
                                ("bad.json", "{", "config file {} is not valid JSON: "),
                                ("bad", "= =", "config file {} is not valid TOML: "),
                                ("missing.toml", None, "config file {} does not exist"),
                                ("desc.toml", 'description = "x"\n', "unknown config key(s): description;")]:
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message.format(tmp_path / name))):
            load_config(tmp_path / name)
    (tmp_path / "recipe.toml").write_text('description = "x"\n[train]\ndepth = 3\n[measured]\na = 1\n'
                                          '[measured_gpu]\nb = 2\n')
    assert load_config(tmp_path / "recipe.toml") == TrainConfig(depth=3)  # every table a recipe may hold
    assert load_config(overrides={"depth": 4}) == TrainConfig(depth=4)  # no file: defaults and overrides


def test_the_network_is_described_in_a_few_words():
    assert describe_network(TrainConfig()) == "depth 20 x width 100"
    assert describe_network(TrainConfig(model="cnn", filters=8, conv_blocks=3, convs_per_block=2, depth=1,
                                        width=32)) == "cnn 8-16-32 (x2), depth 1 x width 32"


def test_the_memory_estimate_counts_weights_with_their_optimizer_state_activations_and_images():
    config = TrainConfig(depth=2, width=64, batch_size=32)
    weights = 4 * parameter_estimate(config)  # float32
    base = training_bytes(config, 1000)
    assert base == 3 * weights + 4 * 4 * 1000 * 128 + 2 * 28 * 28 * 1000  # weights, gradients, a compiled copy
    assert training_bytes(config, 1001) - base == 2 * 28 * 28  # each image on the device
    assert training_bytes(config.replace(momentum=0.9), 1000) - base == weights  # one slot per weight
    assert training_bytes(config.replace(optimizer="adam"), 1000) - base == 2 * weights
    assert training_bytes(config.replace(batch_size=2000), 1000) - base == 4 * 4 * 1000 * 128  # past 1000 a batch
    cnn = TrainConfig(model="cnn", filters=4, conv_blocks=2, convs_per_block=1, depth=2, width=64, batch_size=32)
    conv_units = 28 * 28 * 4 + 14 * 14 * 8  # each convolution's output per image
    assert training_bytes(cnn, 1000) == 3 * 4 * parameter_estimate(cnn) + 4 * 4 * 1000 * (128 + conv_units) \
        + 2 * 28 * 28 * 1000


def test_the_memory_refusal_says_both_sizes_in_gib():
    config = TrainConfig(width=20000, depth=30)
    need = training_bytes(config, 55000)
    with pytest.raises(ConfigError, match=re.escape(f"needs about {need / 2**30:.1f} GiB to train, more than the "
                                                    f"1.0 GiB of memory free here")):
        check_runnable(config, train_images=60000, free_memory=2**30)


def test_a_config_changed_by_a_large_number_is_named_after_it_exactly():
    assert with_changes(TrainConfig(), {"learning_rate": 1e16}).name == "tutorial-learning_rate-1e16"
    assert with_changes(TrainConfig(), {"learning_rate": 1e-05}).name == "tutorial-learning_rate-1e-05"


@pytest.mark.parametrize("config", [
    TrainConfig(),
    TrainConfig(model="cnn", filters=8, conv_blocks=2, convs_per_block=2, depth=1, width=64),
    TrainConfig(model="cnn", filters=5, conv_blocks=3, depth=0),
    TrainConfig(model="cnn", filters=6, conv_blocks=2, depth=1, width=32, whiten=True),
])
def test_forward_flops_are_the_products_the_network_computes(config):
    """The count from the config against every matrix product in the traced forward pass of the
    built network (its jaxpr's dot_general operations: 2 x the product of their dimensions)."""
    import math

    import jax

    from fashionlab.config import forward_flops
    from fashionlab.model import build_model
    from fashionlab.preprocessing import Scaler

    model = build_model(config, Scaler(72.9, 90.0))
    weights = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
    traced = jax.make_jaxpr(lambda w, x: model.stateless_call(*w, x, training=False)[0])(
        weights, jax.numpy.zeros((16, 28, 28)))

    def products(jaxpr):
        for eqn in jaxpr.eqns:
            for inner in eqn.params.values():  # jitted functions inside: their own jaxprs
                if hasattr(inner, "eqns") or hasattr(getattr(inner, "jaxpr", None), "eqns"):
                    yield from products(getattr(inner, "jaxpr", inner))
            if eqn.primitive.name == "dot_general":
                (contracting, _), _ = eqn.params["dimension_numbers"]
                left, right = (v.aval.shape for v in eqn.invars)
                yield 2 * math.prod(left) * math.prod(right) // math.prod(left[d] for d in contracting)

    counted = sum(products(traced.jaxpr)) // 16
    assert forward_flops(config) == counted


def test_what_only_the_compiled_engine_does_is_refused_with_keras_fit_naming_each_key():
    for changes, said in (({"augment_flip": True}, "augment_flip runs"),
                          ({"ema": 0.9, "augment_shift": 1}, "augment_shift and ema run"),
                          ({"bn_lr_scale": 2.0}, "bn_lr_scale runs")):
        with pytest.raises(ConfigError, match=f"^{said} inside the compiled engine"):
            TrainConfig(engine="keras", **changes)
        assert TrainConfig(engine="auto", **changes).engine == "auto"
    with pytest.raises(ConfigError, match="has no BatchNormalization"):
        TrainConfig(depth=0, bn_lr_scale=2.0)


@pytest.mark.parametrize("ema, epochs, refused", [(0.9, 1, False), (0.999, 1, True), (0.999, 2, False),
                                                  (0.99999, 10, True)])
def test_a_moving_average_longer_than_a_third_of_the_run_is_refused(ema, epochs, refused):
    """1,719 steps an epoch (55,000 images, batch 32): an average over 1,000 steps needs 3,000."""
    config = TrainConfig(ema=ema, epochs=epochs)
    if refused:
        with pytest.raises(ConfigError, match=rf"^ema {ema:g} averages over about the last [\d,]+ steps, and this run "
                                              rf"takes {epochs * 1719:,}: .*use at most"):
            check_runnable(config, train_images=60000, free_memory=None)
    else:
        check_runnable(config, train_images=60000, free_memory=None)
