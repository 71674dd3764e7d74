
import numpy as np
import pytest
from helpers import left_right_model, right_facing_boot, synthetic_arrays
from PIL import Image

from fashionlab import CLASS_NAMES
from fashionlab.datasets import FASHION_MNIST, MNIST, Dataset
from fashionlab.errors import ConfigError, RunError
from fashionlab.images import (
    TRIM_LEVEL,
    load_image,
)
from fashionlab.prediction import (
    BLANK_HINT,
    LOW_CONFIDENCE,
    LOW_CONFIDENCE_HINT,
    MIRRORED_SHARE,
    facing_right,
    predict,
    predict_arrays,
    read_probabilities,
    results_of,
    top_k,
)


def test_top_k_lists_the_most_probable_classes_first():
    proba = np.array([0.05, 0.4, 0.05, 0.3, 0.2, 0, 0, 0, 0, 0])
    assert [t["class_id"] for t in top_k(proba, 3, CLASS_NAMES)] == [1, 3, 4]
    assert [t["probability"] for t in top_k(proba, 3, CLASS_NAMES)] == [0.4, 0.3, 0.2]
    assert [t["class_name"] for t in top_k(proba, 2, CLASS_NAMES)] == ["Trouser", "Dress"]


def test_reloaded_model_predicts_exactly_what_training_left(tiny_run, synthetic):
    x_test = synthetic_arrays()["t10k-images-idx3-ubyte"]
    from_training = predict_arrays(tiny_run.model, x_test[:5], [f"test[{i}]" for i in range(5)], FASHION_MNIST, k=3)
    from_disk = predict(tiny_run.run.path, indices=range(5), data=synthetic)
    assert from_disk == from_training
    first = from_disk[0]
    assert list(first) == ["input", "class_id", "class_name", "probability", "top_k"]
    assert len(first["top_k"]) == 3 and first["top_k"][0]["class_id"] == first["class_id"]
    assert first["top_k"][0]["probability"] >= first["top_k"][1]["probability"]


def test_predict_argument_errors_name_the_python_arguments(tiny_run, synthetic):
    with pytest.raises(ConfigError, match="`indices` 100 is outside the test set"):
        predict(tiny_run.run.path, indices=[100], data=synthetic)
    with pytest.raises(ConfigError, match="nothing to predict"):
        predict(tiny_run.run.path)
    for bad in (True, 1.0, "3"):
        with pytest.raises(ConfigError, match="^`indices` item 1 must be int, got "):
            predict(tiny_run.run.path, indices=[0, bad], data=synthetic)
    with pytest.raises(ConfigError, match="^`top_k` must be between 1 and 10, got 11$"):
        predict(tiny_run.run.path, indices=[0], top_k=11)


def test_facing_right_flags_images_whose_left_half_holds_most_of_the_garment():
    shoe = np.zeros((28, 28), np.uint8)
    shoe[18:24, 2:26] = 200  # a sole...
    shoe[8:18, 16:26] = 200  # ...and a shaft on the right: pointing left, as the data set's shoes
    even = np.zeros((28, 28), np.uint8)
    even[4:24, 8:20] = 200
    assert facing_right(np.stack([shoe, shoe[:, ::-1], even])).tolist() == [False, True, False]


def test_low_confidence_results_carry_a_hint_and_confident_ones_do_not():
    proba = np.array([[0.3, 0.25, 0.2, 0.25, 0, 0, 0, 0, 0, 0], [0.05, 0.9, 0.05, 0, 0, 0, 0, 0, 0, 0]])
    unsure, sure = results_of(proba, ["a", "b"], FASHION_MNIST, 2)
    assert unsure["hint"] == LOW_CONFIDENCE_HINT and "hint" not in sure
    assert sure["class_name"] == "Trouser" and "mirrored" not in sure


def test_a_photo_is_read_mirrored_only_when_it_looks_turned_and_the_mirror_reads_better():
    """A real Keras model that says class 0 for the garment's left half and, more strongly, class 1
    for its right half: a flipped reading of a left-heavy image is always more confident."""
    import keras

    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, "softmax")])
    weights = np.zeros((28, 28, 10), np.float32)
    weights[:, :14, 0], weights[:, 14:, 1] = 0.0001, 0.0003
    model.layers[-1].set_weights([weights.reshape(784, 10), np.zeros(10, np.float32)])
    turned, leaning, upright = (np.zeros((28, 28), np.uint8) for _ in range(3))
    turned[10:20, 2:12] = 200  # all on the left: looks turned
    leaning[10:20, 4:14], leaning[10:20, 14:22] = 200, 200  # 44 % on the right: not turned enough
    pixels = np.stack([turned, leaning, upright, turned])
    proba, mirrored = read_probabilities(model, pixels, mirror=[True, True, True, False])
    assert mirrored.tolist() == [True, False, False, False]  # the last one is not a photo
    assert proba[0].argmax() == 1 and proba[1].argmax() == 1 and proba[3].argmax() == 0


def test_a_model_giving_nan_is_refused_not_reported(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, "softmax")])
    model.layers[-1].set_weights([np.full((784, 10), np.nan, np.float32), np.zeros(10, np.float32)])
    with pytest.raises(RunError, match="not numbers \\(NaN or infinite\\); it is damaged"):
        predict_arrays(model, np.ones((2, 28, 28), np.uint8), ["a", "b"], FASHION_MNIST)


def test_an_image_with_nothing_in_it_says_so(tmp_path):
    Image.new("RGB", (60, 40), (255, 255, 255)).save(tmp_path / "white.png")
    pixels = load_image(tmp_path / "white.png")
    assert pixels.max() == 0
    proba = np.full((1, 10), 0.1)
    proba[0, 5] = 0.9
    assert results_of(proba, ["white.png"], FASHION_MNIST, 3, pixels=pixels[None])[0]["hint"] == BLANK_HINT
    assert "hint" not in results_of(proba, ["x"], FASHION_MNIST, 3, pixels=np.full((1, 28, 28), 200, np.uint8))[0]


def test_facing_right_at_the_mirrored_share_boundary():
    def split(left: int, right: int) -> np.ndarray:
        pixels = np.zeros((28, 28), np.uint8)
        pixels[5, 13], pixels[5, 14] = left, right  # on either side of the middle
        return pixels

    assert MIRRORED_SHARE == 0.42
    shares = [split(59, 41), split(58, 42), split(57, 43), split(55, 45)]
    assert facing_right(np.stack(shares)).tolist() == [True, False, False, False]


class RightEdgeModel:
    """A deterministic model computed from the pixels: class 1, the more confidently the more of
    the garment lies in the four rightmost columns."""

    def predict(self, x, batch_size=None, verbose=0):
        x = np.asarray(x, dtype=np.float64)
        share = x[:, :, 24:].sum(axis=(1, 2)) / np.maximum(x.sum(axis=(1, 2)), 1)
        logits = np.zeros((len(x), 10))
        logits[:, 1] = 8 * share
        exp = np.exp(logits)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def test_an_image_is_read_mirrored_only_when_flagged_turned_and_more_confident_so():
    model = RightEdgeModel()
    turned = np.zeros((28, 28), np.uint8)
    turned[8:20, 0:10] = 200  # all on the left, reaching the left edge: mirrored, reads better
    facing_left = np.zeros((28, 28), np.uint8)
    facing_left[8:20, 0:4], facing_left[4:24, 14:24] = 200, 200  # mostly on the right
    worse_mirrored = np.zeros((28, 28), np.uint8)
    worse_mirrored[4:24, 4:14], worse_mirrored[8:20, 24:28] = 200, 200  # on the left, but touching the right edge
    images = np.stack([worse_mirrored, facing_left, turned, turned])
    assert facing_right(images).tolist() == [True, False, True, True]
    upright, flipped = model.predict(images), model.predict(images[:, :, ::-1])
    assert (flipped.max(axis=1) > upright.max(axis=1)).tolist() == [False, True, True, True]
    proba, mirrored = read_probabilities(model, images, mirror=[True, True, True, False])
    assert mirrored.tolist() == [False, False, True, False]
    np.testing.assert_allclose(proba[[0, 1, 3]], upright[[0, 1, 3]], rtol=1e-6)
    np.testing.assert_allclose(proba[2], flipped[2], rtol=1e-6)
    unflagged, none_mirrored = read_probabilities(model, images)
    assert not none_mirrored.any()
    np.testing.assert_allclose(unflagged, upright, rtol=1e-6)


def confident(n: int) -> np.ndarray:
    proba = np.full((n, 10), 0.01)
    proba[:, 3] = 0.91
    return proba


def test_results_say_mirrored_only_for_the_images_read_mirrored():
    results = results_of(confident(3), ["a", "b", "c"], FASHION_MNIST, 1, mirrored=[False, True])
    assert ["mirrored" in r for r in results] == [False, True, False]
    assert results[1]["mirrored"] is True and all("hint" not in r for r in results)


def test_hints_blank_at_trim_level_before_low_confidence_at_one_half():
    pixels = np.zeros((4, 28, 28), np.uint8)
    pixels[0, 5, 5] = TRIM_LEVEL  # nothing brighter than TRIM_LEVEL: blank
    pixels[1, 5, 5] = TRIM_LEVEL + 1
    pixels[2:, 5, 5] = 200
    proba = confident(4)
    proba[2] = [LOW_CONFIDENCE, 0.3, 0.2, 0, 0, 0, 0, 0, 0, 0]  # exactly one half: confident enough
    proba[3] = [0.49, 0.31, 0.2, 0, 0, 0, 0, 0, 0, 0]
    hints = [r.get("hint") for r in results_of(proba, list("abcd"), FASHION_MNIST, 3, pixels=pixels)]
    assert hints == [BLANK_HINT, None, None, LOW_CONFIDENCE_HINT]
    unsure_and_blank = results_of(proba[3:], ["e"], FASHION_MNIST, 3, pixels=pixels[:1])[0]
    assert unsure_and_blank["hint"] == BLANK_HINT  # blank says more than unsure


def test_results_name_the_models_own_classes_and_hint_in_their_words():
    animals = Dataset(name="animals", title="animals", class_names=("cat", "dog", "bird"), subject="animal")
    proba = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.4, 0.3, 0.3]])
    pixels = np.zeros((3, 28, 28), np.uint8)
    pixels[:2] = 200
    results = results_of(proba, ["a.png", "b.png", "c.png"], animals, 2, pixels=pixels)
    assert [r["class_name"] for r in results] == ["bird", "cat", "cat"]
    assert [t["class_name"] for t in results[1]["top_k"]] == ["cat", "dog"]
    assert results[2]["hint"] == "no animal found: the image is blank or of one colour"
    unsure = results_of(proba[2:], ["c.png"], animals, 2)[0]["hint"]
    assert unsure == ("low confidence: the model knows one animal, upright, centred on a plain background; crop to "
                      "the animal and try again")  # no shoes: they face one way only in Fashion-MNIST


def test_photos_are_tried_mirrored_only_for_a_data_set_whose_shoes_face_one_way(tiny_run, tmp_path):
    """The same run, model and photos: read as Fashion-MNIST (its shoes face left) a photo that
    faces right is also read mirrored; read as MNIST (digits have no facing) it never is."""
    import json
    import shutil


    model, photo = left_right_model(), right_facing_boot()
    Image.fromarray(photo).save(tmp_path / "boot.png")
    readings = {}
    for name, dataset in (("fashion-mnist", FASHION_MNIST), ("mnist", MNIST)):
        run = shutil.copytree(tiny_run.run.path, tmp_path / name)
        model.save(run / "model.keras")
        status = json.loads((run / "run.json").read_text())
        status["dataset"] = {"name": name, "class_names": list(dataset.class_names)}
        (run / "run.json").write_text(json.dumps(status))
        readings[name] = predict(run, images=[tmp_path / "boot.png"])[0]
    assert readings["fashion-mnist"].get("mirrored") is True
    assert "mirrored" not in readings["mnist"] and readings["mnist"]["class_name"] == "0"
