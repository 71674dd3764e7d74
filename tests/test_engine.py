import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from helpers import TINY, synthetic_arrays

from fashionlab import engine
from fashionlab.config import TrainConfig
from fashionlab.model import build_model
from fashionlab.preprocessing import fit_scaler


def twin_models(config: TrainConfig, x_train: np.ndarray, steps_per_epoch: int = 1, classes: int = 10):
    """Two freshly built models with identical initial weights."""
    models = []
    for _ in range(2):
        keras.utils.set_random_seed(config.seed)
        models.append(build_model(config, fit_scaler(x_train), steps_per_epoch=steps_per_epoch, classes=classes))
    return models


def synthetic_split(n_train: int = 300):
    arrays = synthetic_arrays()
    x, y = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"].astype(np.int64)
    return x[60:60 + n_train], y[60:60 + n_train], x[:60], y[:60]


def assert_same_state(a: keras.Model, b: keras.Model, rtol=1e-5, atol=1e-6) -> None:
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_allclose(np.asarray(va.value), np.asarray(vb.value), rtol=rtol, atol=atol, err_msg=va.path)
    assert int(a.optimizer.iterations.value) == int(b.optimizer.iterations.value)


def fit_both(config, x_train, y_train, x_valid, y_valid):
    with_keras, compiled = twin_models(config, x_train)
    keras_history = with_keras.fit(x_train.astype("float32"), y_train, batch_size=config.batch_size, epochs=1,
                                   shuffle=False, validation_data=(x_valid.astype("float32"), y_valid), verbose=0)
    compiled_history = engine.fit_compiled(compiled, x_train, y_train, x_valid, y_valid,
                                           batch_size=config.batch_size, epochs=1, shuffle=False, verbose=0)
    return with_keras, compiled, keras_history.history, compiled_history.history


@pytest.mark.parametrize("batch_norm", ["after", "before", "none"])
def test_one_epoch_equals_keras_fit(batch_norm):
    x_train, y_train, x_valid, y_valid = synthetic_split(300)  # 9 full batches and a tail of 12
    with_keras, compiled, kh, ch = fit_both(TINY.replace(batch_norm=batch_norm), x_train, y_train, x_valid, y_valid)
    assert_same_state(with_keras, compiled)
    bn = [layer for layer in compiled.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bn) == (0 if batch_norm == "none" else TINY.depth)
    if bn:  # the moving statistics moved, and moved alike
        assert not np.allclose(np.asarray(bn[0].moving_mean.value), 0)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert ch[key][0] == pytest.approx(kh[key][0], rel=1e-5), key


@pytest.mark.realdata
def test_one_epoch_of_the_tutorial_network_equals_keras_fit(real_data):
    splits = real_data.splits(train_samples=4000)
    with_keras, compiled, kh, ch = fit_both(TrainConfig(), splits.x_train, splits.y_train.astype(np.int64),
                                            splits.x_valid, splits.y_valid.astype(np.int64))
    assert_same_state(with_keras, compiled, rtol=1e-4, atol=1e-5)
    assert ch["loss"][0] == pytest.approx(kh["loss"][0], rel=1e-5)
    assert ch["val_loss"][0] == pytest.approx(kh["val_loss"][0], rel=1e-4)


def run_compiled(config, seed, epochs=2, callbacks=()):
    x_train, y_train, x_valid, y_valid = synthetic_split(200)
    keras.utils.set_random_seed(config.seed)
    model = build_model(config, fit_scaler(x_train))
    history = engine.fit_compiled(model, x_train, y_train, x_valid, y_valid, batch_size=32, epochs=epochs,
                                  seed=seed, shuffle=True, callbacks=callbacks, verbose=0)
    return model, history.history


def test_each_epoch_has_its_own_shuffle_drawn_from_seed_and_epoch_alone():
    key = jax.random.key(5)
    orders = [np.asarray(engine.epoch_order(key, epoch, 50, True)) for epoch in range(3)]
    for order in orders:
        assert sorted(order) == list(range(50))  # a permutation: every image once
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    np.testing.assert_array_equal(orders[2], engine.epoch_order(jax.random.key(5), 2, 50, True))
    assert not np.array_equal(orders[0], engine.epoch_order(jax.random.key(6), 0, 50, True))
    np.testing.assert_array_equal(engine.epoch_order(key, 1, 50, False), np.arange(50))


def test_device_shuffle_is_repeatable_by_seed():
    _, first = run_compiled(TINY, seed=1)
    _, again = run_compiled(TINY, seed=1)
    _, other = run_compiled(TINY, seed=2)
    assert first == again
    assert first["loss"] != other["loss"]


def test_chunk_size_changes_nothing_but_granularity(monkeypatch):
    _, whole = run_compiled(TINY, seed=3)
    monkeypatch.setattr(engine, "CHUNK_STEPS", 2)
    seen = []

    class Batches(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    _, chunked = run_compiled(TINY, seed=3, callbacks=[Batches()])
    assert chunked == whole
    assert seen[:4] == [1, 3, 5, 6]  # 200 images: 6 full batches in chunks of 2, then the tail of 8


def test_chunks_shrink_to_a_few_seconds_of_steps_on_a_slow_machine_and_change_nothing(monkeypatch):
    assert engine.next_chunk(256, 156.0) == 8  # a CNN at 1.6 steps/s: a chunk of about 5 s
    assert engine.next_chunk(256, 0.5) == engine.CHUNK_STEPS and engine.next_chunk(4, 100.0) == 1
    _, whole = run_compiled(TINY, seed=3, epochs=2)
    monkeypatch.setattr(engine, "CHUNK_SECONDS", 0.0)  # every chunk "slow": one step at a time after the first
    seen = []

    class Batches(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    _, chunked = run_compiled(TINY, seed=3, epochs=2, callbacks=[Batches()])
    assert chunked == whole
    assert seen == [5, 6, 0, 1, 2, 3, 4, 5, 6]  # 6 full batches, the first chunk whole, then the tail


def test_a_stop_request_takes_effect_after_the_current_chunk_and_skips_the_epoch(monkeypatch):
    monkeypatch.setattr(engine, "CHUNK_STEPS", 2)  # 200 images: 6 full batches = 3 chunks, then the tail
    events = []

    class StopInSecondEpoch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            events.append(("batch", batch))
            if len([e for e in events if e[0] == "epoch end"]) == 1:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            events.append(("epoch end", epoch))

    _, history = run_compiled(TINY, seed=0, epochs=5, callbacks=[StopInSecondEpoch()])
    first_epoch = [("batch", 1), ("batch", 3), ("batch", 5), ("batch", 6), ("epoch end", 0)]
    assert events == first_epoch + [("batch", 1)]  # one chunk of epoch 2, then nothing: no tail, no epoch end
    assert len(history["loss"]) == 1


def test_the_compilation_cache_follows_its_environment_setting(monkeypatch, tmp_path):
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("FASHIONLAB_COMPILE_CACHE", "off")
    assert engine.enable_compilation_cache() is None
    monkeypatch.setenv("FASHIONLAB_COMPILE_CACHE", str(tmp_path))
    try:
        assert engine.enable_compilation_cache() == str(tmp_path)
        assert jax.config.jax_compilation_cache_dir == str(tmp_path)
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_augment_shifts_within_bounds_and_flips_exactly():
    images = jnp.zeros((64, 28, 28)).at[:, 10:18, 5:9].set(1.0)  # an 8 x 4 block, off-centre
    key = jax.random.key(0)
    shifted = np.asarray(engine.augment(key, images, engine.Augmentation(shift=3)))
    assert shifted.shape == images.shape and np.all(shifted.sum(axis=(1, 2)) == 32)  # nothing lost at 3 px
    rows = [np.flatnonzero(s.any(axis=1))[0] - 10 for s in shifted]
    cols = [np.flatnonzero(s.any(axis=0))[0] - 5 for s in shifted]
    assert set(rows) == set(cols) == set(range(-3, 4))  # every offset in -3..3 drawn, none beyond
    assert np.array_equal(shifted, np.asarray(engine.augment(key, images, engine.Augmentation(shift=3))))
    other = np.asarray(engine.augment(jax.random.key(1), images, engine.Augmentation(shift=3)))
    assert not np.array_equal(shifted, other)

    flipped = np.asarray(engine.augment(key, images, engine.Augmentation(flip=True)))
    mirrored = np.array([np.array_equal(f, np.asarray(images[0])[:, ::-1]) for f in flipped])
    unchanged = np.array([np.array_equal(f, np.asarray(images[0])) for f in flipped])
    assert np.all(mirrored ^ unchanged) and 16 < mirrored.sum() < 48


@pytest.mark.parametrize("changes", [
    {"optimizer": "adamw", "weight_decay": 0.01, "schedule": "one_cycle", "learning_rate": 0.003},
    {"momentum": 0.9, "schedule": "cosine", "warmup_epochs": 0.5, "epochs": 2},
    {"label_smoothing": 0.1, "batch_norm": "none"},
    {"model": "cnn", "filters": 4, "conv_blocks": 2, "depth": 1, "width": 8, "batch_norm": "before"},
])
def test_training_options_give_what_keras_fit_gives(changes):
    config = TINY.replace(**changes)
    x_train, y_train, x_valid, y_valid = synthetic_split(300)
    with_keras, compiled = twin_models(config, x_train, steps_per_epoch=10)
    targets = (lambda y: np.eye(10, dtype="float32")[y]) if config.label_smoothing else (lambda y: y)
    kh = with_keras.fit(x_train.astype("float32"), targets(y_train), batch_size=config.batch_size, epochs=1,
                        shuffle=False, validation_data=(x_valid.astype("float32"), targets(y_valid)), verbose=0)
    ch = engine.fit_compiled(compiled, x_train, y_train, x_valid, y_valid, batch_size=config.batch_size, epochs=1,
                             shuffle=False, verbose=0)
    assert_same_state(with_keras, compiled, rtol=1e-4, atol=1e-5)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert ch.history[key][0] == pytest.approx(kh.history[key][0], rel=1e-4), key
    assert ch.history["learning_rate"][0] == pytest.approx(float(with_keras.optimizer.learning_rate), rel=1e-6)


def unit_norms(layer: keras.layers.Layer) -> np.ndarray:
    """The L2 norm of each unit's incoming weights: a Dense kernel's columns, a conv kernel's filters."""
    kernel = np.asarray(layer.kernel.value)
    return np.sqrt((kernel.reshape(-1, kernel.shape[-1]) ** 2).sum(axis=0))


@pytest.mark.parametrize("family", [{}, {"model": "cnn", "filters": 4, "conv_blocks": 1, "depth": 1, "width": 8}])
def test_max_norm_bounds_every_units_weights_in_both_engines_alike(family):
    config = TINY.replace(max_norm=0.4, learning_rate=0.5, batch_norm="none", **family)
    x_train, y_train, x_valid, y_valid = synthetic_split(300)
    with_keras, compiled, kh, ch = fit_both(config, x_train, y_train, x_valid, y_valid)
    assert_same_state(with_keras, compiled, rtol=1e-4, atol=1e-5)
    hidden = [layer for layer in compiled.layers if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))
              and layer.name != "classes"]
    assert hidden and all(layer.kernel.constraint is not None for layer in hidden)
    for layer in hidden:  # every unit within the bound, and the bound reached: it did constrain
        norms = unit_norms(layer)
        assert norms.max() <= 0.4 * (1 + 1e-5) and np.isclose(norms, 0.4, rtol=1e-4).any(), layer.name
    unconstrained, _, _, _ = fit_both(config.replace(max_norm=0.0), x_train, y_train, x_valid, y_valid)
    assert max(unit_norms(layer).max() for layer in unconstrained.layers if isinstance(
        layer, (keras.layers.Dense, keras.layers.Conv2D)) and layer.name != "classes") > 0.4


def test_augmentation_changes_training_but_not_validation():
    config = TINY.replace(batch_norm="none")
    x_train, y_train, x_valid, y_valid = synthetic_split(300)
    plain, augmented = twin_models(config, x_train)
    engine.fit_compiled(plain, x_train, y_train, batch_size=32, epochs=1, verbose=0)
    history = engine.fit_compiled(augmented, x_train, y_train, x_valid, y_valid, batch_size=32, epochs=1, verbose=0,
                                  augmentation=engine.Augmentation(shift=2, flip=True))
    assert not np.allclose(np.asarray(plain.weights[0].value), np.asarray(augmented.weights[0].value))
    proba = np.asarray(augmented.predict(x_valid.astype("float32"), verbose=0))
    assert history.history["val_accuracy"][0] == pytest.approx(np.mean(proba.argmax(axis=1) == y_valid))


def test_dropout_draws_follow_the_seed():
    """The compiled engine sets dropout's random state from the seed, epoch and step: another
    seed (same initial weights, no shuffle) drops other units; the same seed the same ones."""
    config = TINY.replace(batch_norm="none", dropout=0.5)
    x_train, y_train, _, _ = synthetic_split(300)
    trained = []
    for seed in (1, 2, 1):
        (model, _) = twin_models(config, x_train)
        engine.fit_compiled(model, x_train, y_train, batch_size=32, epochs=1, seed=seed, shuffle=False, verbose=0)
        trained.append(np.asarray(model.weights[0].value))
    assert not np.allclose(trained[0], trained[1]) and np.array_equal(trained[0], trained[2])


def test_each_step_draws_its_own_augmentation_from_seed_epoch_and_step():
    """The engine's draws are exactly augment(key(seed) -> augmentation stream -> epoch -> step):
    training on those images, pre-augmented, without augmentation gives the same model."""
    config = TINY.replace(batch_norm="none")
    x_train, y_train, _, _ = synthetic_split(64)  # two steps of 32
    augmented, replayed = twin_models(config, x_train)
    augmentation = engine.Augmentation(shift=2, flip=True)
    engine.fit_compiled(augmented, x_train, y_train, batch_size=32, epochs=1, seed=3, shuffle=False, verbose=0,
                        augmentation=augmentation)
    epoch_key = jax.random.fold_in(jax.random.split(jax.random.key(3))[1], 0)
    batches = [engine.augment(jax.random.fold_in(jax.random.fold_in(epoch_key, step), 0),
                              jnp.asarray(x_train[step * 32:(step + 1) * 32], jnp.float32), augmentation)
               for step in range(2)]
    engine.fit_compiled(replayed, np.concatenate(batches), y_train, batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert_same_state(augmented, replayed)


# --- every random draw used once and only once (issue 20) ---------------------------------------

def read_augmented(out: np.ndarray, top: int, left: int, height: int, width: int):
    """(row shift, column shift, flipped) of each image in `out`: a height x width block first at
    (top, left), after augment. A mirrored block lies right of the middle, and its column shift is
    measured on the mirrored axis."""
    found = []
    for image in out:
        rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
        assert (len(rows), len(cols)) == (height, width) and image.sum() == height * width  # moved, not cut
        flipped = cols[0] > 14
        found.append((rows[0] - top, (28 - width - left - cols[0]) if flipped else cols[0] - left, flipped))
    return np.array(found)


def test_augment_draws_each_shift_equally_often_rows_columns_and_flips_apart():
    """Over many images, every shift in -N..N comes up as often as the others, in rows and columns
    drawn apart (every pair), and the flip is a fair coin whatever the shift."""
    n, s = 5000, 2
    images = jnp.zeros((n, 28, 28)).at[:, 10:13, 6:8].set(1.0)  # a 3 x 2 block, left of the middle
    drawn = read_augmented(np.asarray(engine.augment(jax.random.key(11), images, engine.Augmentation(s, True))),
                           10, 6, 3, 2)
    rows, cols, flipped = drawn[:, 0], drawn[:, 1], drawn[:, 2].astype(bool)
    shifts = range(-s, s + 1)
    for axis in (rows, cols):
        counts = [int(np.sum(axis == k)) for k in shifts]
        assert sum(counts) == n and all(abs(c - n / len(shifts)) < 0.15 * n / len(shifts) for c in counts), counts
    pairs = [int(np.sum((rows == r) & (cols == c))) for r in shifts for c in shifts]
    assert all(abs(p - n / len(shifts) ** 2) < 0.4 * n / len(shifts) ** 2 for p in pairs), pairs  # not only diagonal
    assert 0.45 < flipped.mean() < 0.55
    for k in shifts:  # the flip does not follow the shift
        assert 0.4 < flipped[rows == k].mean() < 0.6 and 0.4 < flipped[cols == k].mean() < 0.6


def test_augment_leaves_the_uncovered_border_black():
    """A shift uncovers rows and columns on one side: black, as the images' background, not the
    image wrapped round or its edge repeated."""
    full = jnp.ones((400, 28, 28))  # content up to every edge
    out = np.asarray(engine.augment(jax.random.key(2), full, engine.Augmentation(shift=3)))
    uncovered = []
    for image in out:
        rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
        kept = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert kept.all() and image.sum() == kept.size  # one rectangle of the image, black around it
        assert (rows[0] == 0 or rows[-1] == 27) and (cols[0] == 0 or cols[-1] == 27)  # against an edge
        uncovered.append((28 - len(rows), 28 - len(cols)))
    assert {r for r, _ in uncovered} == {c for _, c in uncovered} == {0, 1, 2, 3}


class DrawSpy:
    """Records the key of every draw from jax.random's samplers (and of each augment call) made
    while it is installed: eagerly, so keys are concrete."""

    SAMPLERS = ("bits", "randint", "bernoulli", "uniform", "normal", "truncated_normal", "permutation", "choice")

    def __init__(self, monkeypatch):
        self.keys: list[tuple[str, tuple[int, ...]]] = []
        self.augmented: list[np.ndarray] = []
        for name in self.SAMPLERS:
            monkeypatch.setattr(jax.random, name, self._recording(name, getattr(jax.random, name)))
        real_augment = engine.augment

        def augment(key, images, augmentation, flipped=None):
            self.keys.append(("augment", self.data(key)))
            out = real_augment(key, images, augmentation, flipped)
            self.augmented.append(np.asarray(out))
            return out

        monkeypatch.setattr(engine, "augment", augment)

    @staticmethod
    def data(key) -> tuple[int, ...]:
        typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        return tuple(np.asarray(jax.random.key_data(key) if typed else key).ravel().tolist())

    def _recording(self, name, function):
        def draw(key, *args, **kwargs):
            self.keys.append((name, self.data(key)))
            return function(key, *args, **kwargs)
        return draw

    def assert_each_key_used_once(self):
        used = [k for _, k in self.keys]
        twice = {k for k in used if used.count(k) > 1}
        assert not twice, [(name, k) for name, k in self.keys if k in twice]


def test_each_draw_of_a_step_has_a_key_of_its_own(monkeypatch):
    """The shift, the flip and each dropout layer draw from keys of their own, none the key that
    augment is given, nor the step's; and a flip alone is applied too."""
    x_train, y_train, _, _ = synthetic_split(32)
    x, y = jnp.asarray(x_train, jnp.float32), jnp.asarray(y_train, jnp.int32)
    step_key = jax.random.fold_in(jax.random.key(5), 3)

    spy = DrawSpy(monkeypatch)
    engine.augment(jax.random.key(1), x, engine.Augmentation(shift=2, flip=True))
    assert [name for name, _ in spy.keys].count("augment") == 1 and len(spy.keys) >= 3  # augment, shift, flip
    spy.assert_each_key_used_once()

    config = TINY.replace(batch_norm="none", dropout=0.5)  # two Dropout layers, each with its own state
    for augmentation in (engine.Augmentation(shift=2, flip=True), engine.Augmentation(flip=True)):
        spy = DrawSpy(monkeypatch)
        keras.utils.set_random_seed(0)
        model = build_model(config, fit_scaler(x_train))
        trainer = engine.CompiledTrainer(model, 32, augmentation)
        spy.keys.clear()  # building drew the initial weights
        trainer.step(trainer.read_state(), x, y, step_key)  # eagerly: the keys are values
        spy.keys.append(("step", spy.data(step_key)))
        names = [name for name, _ in spy.keys]
        assert names.count("augment") == 1 and names.count("bits") >= 2, names
        spy.assert_each_key_used_once()
        if not augmentation.shift:  # the step trained on flipped images, some of them
            mirrored = [np.array_equal(a, np.asarray(x[i])[:, ::-1]) for i, a in enumerate(spy.augmented[0])]
            assert 0 < sum(mirrored) < 32


def test_two_shuffled_epochs_in_small_chunks_replay_as_seed_epoch_and_step_say(monkeypatch):
    """Each epoch's order is epoch_order(key(seed), epoch) and each step's augmentation, the tail's
    included, comes from key(seed) -> augmentation stream -> epoch -> step, however the steps are
    chunked: training without augmentation on those images, in that order, gives the same model."""
    monkeypatch.setattr(engine, "CHUNK_STEPS", 1)
    config = TINY.replace(batch_norm="none")
    x_train, y_train, _, _ = synthetic_split(80)  # two steps of 32 and a tail of 16
    augmented, replayed = twin_models(config, x_train)
    augmentation = engine.Augmentation(shift=2, flip=True)
    engine.fit_compiled(augmented, x_train, y_train, batch_size=32, epochs=2, seed=3, shuffle=True, verbose=0,
                        augmentation=augmentation)
    stream = jax.random.split(jax.random.key(3))[1]
    for epoch in range(2):
        order = np.asarray(engine.epoch_order(jax.random.key(3), epoch, 80, True))
        epoch_key = jax.random.fold_in(stream, epoch)
        batches = [np.asarray(engine.augment(jax.random.fold_in(jax.random.fold_in(epoch_key, step), 0),
                                             jnp.asarray(x_train[order][step * 32:(step + 1) * 32], jnp.float32),
                                             augmentation))
                   for step in range(3)]
        engine.fit_compiled(replayed, np.concatenate(batches), y_train[order], batch_size=32, epochs=1,
                            shuffle=False, verbose=0)
    assert_same_state(augmented, replayed)


def test_a_resumed_fit_draws_what_the_uninterrupted_one_drew():
    """Shuffle, augmentation and dropout of epochs 2 and 3 are the same whether the fit stopped
    after epoch 1 and resumed (initial_epoch=1) or ran through."""
    config = TINY.replace(batch_norm="none", dropout=0.3)
    x_train, y_train, _, _ = synthetic_split(80)
    whole, resumed = twin_models(config, x_train)
    augmentation = engine.Augmentation(shift=1, flip=True)
    through = engine.fit_compiled(whole, x_train, y_train, batch_size=32, epochs=3, seed=4, verbose=0,
                                  augmentation=augmentation).history
    engine.fit_compiled(resumed, x_train, y_train, batch_size=32, epochs=1, seed=4, verbose=0,
                        augmentation=augmentation)
    rest = engine.fit_compiled(resumed, x_train, y_train, batch_size=32, epochs=3, seed=4, initial_epoch=1,
                               verbose=0, augmentation=augmentation).history
    assert_same_state(whole, resumed)
    assert rest["loss"] == pytest.approx(through["loss"][1:], rel=1e-6)


def test_smoothed_targets_have_as_many_classes_as_the_model():
    """Label smoothing trains on one-hot targets: as wide as the model's last layer, here 7 classes."""
    config = TINY.replace(label_smoothing=0.1, batch_norm="none")
    x_train, y_train, x_valid, y_valid = synthetic_split(300)
    y_train, y_valid = y_train % 7, y_valid % 7
    with_keras, compiled = twin_models(config, x_train, steps_per_epoch=10, classes=7)
    kh = with_keras.fit(x_train.astype("float32"), np.eye(7, dtype="float32")[y_train], batch_size=config.batch_size,
                        epochs=1, shuffle=False, verbose=0)
    ch = engine.fit_compiled(compiled, x_train, y_train, x_valid, y_valid, batch_size=config.batch_size, epochs=1,
                             shuffle=False, verbose=0)
    assert_same_state(with_keras, compiled, rtol=1e-4, atol=1e-5)
    assert ch.history["loss"][0] == pytest.approx(kh.history["loss"][0], rel=1e-4)


def test_alternating_flips_mirror_each_image_in_every_other_epoch(monkeypatch):
    """With flip_alternate each image is mirrored by its own coin in epoch 0, the other way in
    epoch 1, as in epoch 0 again in epoch 2, wherever it falls in a batch; about half at a time."""
    x_train, y_train, _, _ = synthetic_split(64)
    x_all, y_all = jnp.asarray(x_train), jnp.asarray(y_train, jnp.int32)
    keras.utils.set_random_seed(0)
    model = build_model(TINY.replace(batch_norm="none"), fit_scaler(x_train))
    trainer = engine.CompiledTrainer(model, 64, engine.Augmentation(flip=True, flip_alternate=True))
    keys = engine.step_keys(jax.random.key(9))
    real_augment, seen_by_step = engine.augment, []

    def augment(*args):
        seen_by_step.append(np.asarray(real_augment(*args)))
        return seen_by_step[-1]

    monkeypatch.setattr(engine, "augment", augment)
    mirrored = {}
    for epoch, order in ((0, np.arange(64)), (1, np.arange(64)[::-1]), (2, np.roll(np.arange(64), 5))):
        trainer._indexed_step(trainer.read_state(), x_all, y_all, jnp.asarray(order), keys, epoch, 3)  # eagerly
        seen = seen_by_step[-1]
        mirrored[epoch] = np.zeros(64, bool)
        for position, index in enumerate(order):
            flipped = np.array_equal(seen[position], x_train[index][:, ::-1])
            assert flipped or np.array_equal(seen[position], x_train[index])
            mirrored[epoch][index] = flipped
    assert 16 < mirrored[0].sum() < 48
    assert np.array_equal(mirrored[1], ~mirrored[0]) and np.array_equal(mirrored[2], mirrored[0])


def test_bn_lr_scale_multiplies_the_steps_of_batch_norms_scale_and_offset_alone():
    """Plain SGD, one step: BN's gamma and beta move bn_lr_scale times as far; every other weight
    (and the BN statistics) as without it."""
    config = TINY.replace(batch_norm="before")
    x_train, y_train, _, _ = synthetic_split(32)
    x, y = jnp.asarray(x_train, jnp.float32), jnp.asarray(y_train, jnp.int32)
    plain_model, scaled_model = twin_models(config, x_train)
    start = [np.asarray(v.value) for v in plain_model.trainable_variables]
    moved = []
    for model, scale in ((plain_model, 1.0), (scaled_model, 4.0)):
        trainer = engine.CompiledTrainer(model, 32, bn_lr_scale=scale)
        state = trainer.step(trainer.read_state(), x, y, jax.random.key(0))
        moved.append([np.asarray(after) - before for after, before in zip(state.trainable, start)])
    paths = [v.path for v in plain_model.trainable_variables]
    assert sum("batch_normalization" in p for p in paths) == 4  # two BN layers: gamma and beta each
    for path, plain, scaled in zip(paths, *moved):
        factor = 4.0 if "batch_normalization" in path else 1.0
        assert np.abs(plain).max() > 0, path
        np.testing.assert_allclose(scaled, factor * plain, rtol=1e-3, atol=1e-6, err_msg=path)  # gamma ~ 1: ulps


def test_with_a_moving_average_validation_reads_the_average_and_training_is_unchanged():
    config = TINY.replace(batch_norm="none")
    x_train, y_train, x_valid, y_valid = synthetic_split(128)
    plain_model, = twin_models(config, x_train)[:1]
    keras.utils.set_random_seed(config.seed)
    averaged = build_model(config.replace(ema=0.9), fit_scaler(x_train), steps_per_epoch=4)
    averaged.set_weights(plain_model.get_weights())
    runs = [engine.fit_compiled(model, x_train, y_train, x_valid, y_valid, batch_size=32, epochs=2, seed=1,
                                verbose=0).history for model in (plain_model, averaged)]
    assert runs[1]["loss"] == pytest.approx(runs[0]["loss"], rel=1e-6)  # the average does not train
    for variable, raw in zip(averaged.trainable_variables, plain_model.trainable_variables):
        np.testing.assert_allclose(np.asarray(variable.value), np.asarray(raw.value), rtol=1e-6, atol=1e-7)
    averages = [np.asarray(averaged.optimizer.variables[i].value) for i in engine.average_slots(averaged)]
    assert not all(np.allclose(a, np.asarray(v.value)) for a, v in zip(averages, averaged.trainable_variables))
    averaged.set_weights(averages + [np.asarray(v.value) for v in averaged.non_trainable_variables])
    loss, accuracy = averaged.evaluate(x_valid.astype("float32"), y_valid, verbose=0)[:2]
    assert runs[1]["val_accuracy"][-1] == pytest.approx(accuracy, abs=1e-6)
    assert runs[1]["val_loss"][-1] == pytest.approx(loss, rel=1e-4)
    assert runs[1]["val_loss"][-1] != pytest.approx(runs[0]["val_loss"][-1], rel=1e-4)
