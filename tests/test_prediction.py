
import numpy as np
import pytest
from helpers import left_right_model, right_facing_boot, synthetic_arrays
from PIL import Image

from fashionlab import CLASS_NAMES
from fashionlab.datasets import FASHION_MNIST, MNIST, Dataset
from fashionlab.errors import ConfigError, RunError
from fashionlab.images import read_image_file
from fashionlab.prediction import (
    BLANK_HINT,
    DOUBT_MARGIN,
    LOW_CONFIDENCE,
    LOW_CONFIDENCE_HINT,
    MIRRORED_SHARE,
    NOTHING_HINT,
    TURN_MARGIN,
    Readings,
    doubt_hint,
    facing_ids,
    facing_right,
    orientation_of,
    predict,
    predict_arrays,
    read_probabilities,
    results_of,
    top_k,
    upright_turns,
)


def read(proba, mirrored=(), turned=(), doubtful=()) -> Readings:
    """Readings of `proba`, as read_probabilities gives them: mirrored, turned, doubtful where said."""
    n = len(proba)

    def spread(values, dtype):
        out = np.zeros(n, dtype)
        out[:len(values)] = values
        return out

    return Readings(np.asarray(proba), spread(mirrored, bool), spread(turned, int), spread(doubtful, bool))


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
    unsure, sure = results_of(read(proba), ["a", "b"], FASHION_MNIST, 2)
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
    readings = read_probabilities(model, pixels, mirror=[True, True, True, False])
    proba, mirrored = readings.proba, readings.mirrored
    assert mirrored.tolist() == [True, False, False, False]  # the last one is not a photo
    assert proba[0].argmax() == 1 and proba[1].argmax() == 1 and proba[3].argmax() == 0


def test_a_model_giving_nan_is_refused_not_reported(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, "softmax")])
    model.layers[-1].set_weights([np.full((784, 10), np.nan, np.float32), np.zeros(10, np.float32)])
    with pytest.raises(RunError, match="not numbers \\(NaN or infinite\\); it is damaged"):
        predict_arrays(model, np.ones((2, 28, 28), np.uint8), ["a", "b"], FASHION_MNIST)


def test_an_image_with_nothing_in_it_gets_no_class_and_says_why(tmp_path):
    Image.new("RGB", (60, 40), (255, 255, 255)).save(tmp_path / "white.png")
    prepared = read_image_file(tmp_path / "white.png")
    assert prepared.pixels.max() == 0 and prepared.missing == "blank"
    proba = np.full((1, 10), 0.1)
    proba[0, 5] = 0.9
    blank = results_of(read(proba), ["white.png"], FASHION_MNIST, 3, [prepared.missing])[0]
    assert blank == {"input": "white.png", "class_id": None, "class_name": None, "probability": None, "top_k": [],
                     "hint": BLANK_HINT}
    found = results_of(read(proba), ["x"], FASHION_MNIST, 3, [None])[0]
    assert "hint" not in found and found["class_id"] == 5


class WobblingModel:
    """MC dropout's passes of a Keras model, made by hand: each image's probabilities, plus and minus
    0.01 times the share of its ink in its right half (so `spread` says which way an image was read)."""

    def __init__(self, model):
        self.model = model

    def samples(self, x: np.ndarray, passes: int) -> np.ndarray:
        from fashionlab.evaluation import predict_proba

        proba, x = predict_proba(self.model, x), np.asarray(x, np.float64)
        right = x[:, :, 14:].sum(axis=(1, 2)) / np.maximum(x.sum(axis=(1, 2)), 1)
        return np.stack([proba + sign * 0.01 * right[:, None] for sign in (-1, 1)] * (passes // 2))


def test_a_photo_read_mirrored_keeps_the_mirrored_readings_spread():
    model = left_right_model()
    turned = np.zeros((28, 28), np.uint8)
    turned[10:20, 2:12] = 200  # all on the left: read mirrored, all on the right
    readings = read_probabilities(WobblingModel(model), np.stack([turned, turned]), mirror=[True, False], passes=4)
    assert readings.mirrored.tolist() == [True, False]
    assert readings.spread[0] == pytest.approx(np.full(10, 0.01)) and readings.spread[1] == pytest.approx(0)
    np.testing.assert_allclose(readings.proba[0], read_probabilities(model, turned[None, :, ::-1]).proba[0],
                               atol=1e-6)


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
    readings = read_probabilities(model, images, mirror=[True, True, True, False])
    proba, mirrored = readings.proba, readings.mirrored
    assert mirrored.tolist() == [False, False, True, False]
    np.testing.assert_allclose(proba[[0, 1, 3]], upright[[0, 1, 3]], rtol=1e-6)
    np.testing.assert_allclose(proba[2], flipped[2], rtol=1e-6)
    unflagged = read_probabilities(model, images)
    none_mirrored, unflagged = unflagged.mirrored, unflagged.proba
    assert not none_mirrored.any()
    np.testing.assert_allclose(unflagged, upright, rtol=1e-6)


def confident(n: int) -> np.ndarray:
    proba = np.full((n, 10), 0.01)
    proba[:, 3] = 0.91
    return proba


def test_results_say_mirrored_only_for_the_images_read_mirrored():
    results = results_of(read(confident(3), mirrored=[False, True]), ["a", "b", "c"], FASHION_MNIST, 1)
    assert ["mirrored" in r for r in results] == [False, True, False]
    assert results[1]["mirrored"] is True and all("hint" not in r for r in results)


def test_hints_no_garment_before_low_confidence_at_one_half():
    proba = confident(4)
    proba[2] = [LOW_CONFIDENCE, 0.3, 0.2, 0, 0, 0, 0, 0, 0, 0]  # exactly one half: confident enough
    proba[3] = [0.49, 0.31, 0.2, 0, 0, 0, 0, 0, 0, 0]
    results = results_of(read(proba), list("abcd"), FASHION_MNIST, 3, ["blank", "shapeless"])
    assert [r.get("hint") for r in results] == [BLANK_HINT, NOTHING_HINT, None, LOW_CONFIDENCE_HINT]
    assert [r["class_id"] for r in results] == [None, None, 0, 0]
    assert "blank" not in NOTHING_HINT and NOTHING_HINT.startswith("no garment found: nothing stands out")
    unsure_and_blank = results_of(read(proba[3:]), ["e"], FASHION_MNIST, 3, ["blank"])[0]
    assert unsure_and_blank["hint"] == BLANK_HINT  # no garment says more than unsure


def test_results_name_the_models_own_classes_and_hint_in_their_words():
    animals = Dataset(name="animals", title="animals", class_names=("cat", "dog", "bird"), subject="animal")
    proba = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.4, 0.3, 0.3]])
    results = results_of(read(proba), ["a.png", "b.png", "c.png"], animals, 2, [None, None, "blank"])
    assert [r["class_name"] for r in results] == ["bird", "cat", None]
    assert [t["class_name"] for t in results[1]["top_k"]] == ["cat", "dog"]
    assert results[2]["hint"] == "no animal found: the image is blank or of one colour"
    unsure = results_of(read(proba[2:]), ["c.png"], animals, 2)[0]["hint"]
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


class SeeingModel:
    """Keeps the images it is given; reads each as `classes` say (one class id per image, 0.9 sure)
    and its mirror image, when `mirrored` is given, as that class more surely."""

    def __init__(self, classes: list[int], mirrored: int | None = None):
        self.classes, self.mirrored, self.seen = classes, mirrored, []

    def predict(self, x, batch_size=None, verbose=0):
        x = np.asarray(x)
        self.seen.append(x.copy())
        proba = np.full((len(x), 10), 0.1 / 9, np.float32)
        n = len(self.classes)
        proba[np.arange(n), self.classes] = 0.9
        if len(x) > n:  # the mirrored readings that follow
            proba[n:] = 0.001
            proba[n:, self.mirrored] = 0.991
        return proba


@pytest.mark.realdata
def test_a_test_image_turned_on_its_side_is_read_turned_back_or_doubted(real_data):
    """The orientation check on the data set's own images: turned a quarter either way, nearly all
    are turned back to exactly the upright image before the model reads them, or doubted; upright,
    nearly none is turned."""
    images = real_data.test_images()[:100]
    weights = orientation_of(FASHION_MNIST)
    for quarter in (1, 3):
        turned = np.ascontiguousarray(np.rot90(images, quarter, axes=(1, 2)))
        model = SeeingModel([0] * len(turned))
        readings = read_probabilities(model, turned, [True] * len(turned), facing_ids(FASHION_MNIST), weights)
        back = readings.turned == 90 * (4 - quarter)
        seen = model.seen[0][:len(turned)]
        np.testing.assert_array_equal(seen[back], images[back])  # what the model read: the upright image
        assert (back | readings.doubtful).mean() >= 0.92 and (readings.turned == 90 * quarter).mean() <= 0.03
    upright = read_probabilities(SeeingModel([0] * 100), images, [True] * 100, [], weights)
    assert (upright.turned != 0).mean() <= 0.03 and upright.doubtful.mean() <= 0.1
    as_they_are = read_probabilities(SeeingModel([0] * 100), turned, [False] * 100, [], weights)
    assert not as_they_are.turned.any() and not as_they_are.doubtful.any()  # not photos: read as they are


def test_turns_and_doubts_at_their_margins():
    """upright_turns on made-up check weights: a bias only, so every image scores the same."""
    def weights(upright: float, quarter: float, half: float = 0.0, three: float = 0.0) -> np.ndarray:
        w = np.zeros((1422, 4), np.float32)
        w[-1] = [upright, quarter, half, three]
        return w

    pixels = np.zeros((1, 28, 28), np.uint8)
    assert (TURN_MARGIN, DOUBT_MARGIN) == (0.3, 0.05)
    cases = [((0.0, 0.31), 3, False), ((0.0, 0.29), 0, True), ((0.0, 0.04), 0, False), ((0.5, 0.2), 0, False),
             ((0.0, 0.0, 0.5), 0, True), ((0.0, 0.0, 0.0, 0.4), 1, False)]
    for scores, turn, doubt in cases:
        turns, doubtful = upright_turns(pixels, weights(*scores))
        assert (turns[0], doubtful[0]) == (turn, doubt), scores
    assert upright_turns(pixels, None)[0].tolist() == [0]


def test_a_doubtful_photo_says_it_may_not_be_upright_and_a_turned_one_says_how():
    results = results_of(read(confident(3), turned=[0, 90], doubtful=[True]), list("abc"), FASHION_MNIST, 1)
    assert results[0]["upright"] is False and results[0]["hint"] == doubt_hint(FASHION_MNIST)
    assert results[1]["turned"] == 90 and "upright" not in results[1] and "hint" not in results[1]
    assert "turned" not in results[2] and "upright" not in results[2]
    unsure = np.full((1, 10), 0.1)
    doubted_and_unsure = results_of(read(unsure, doubtful=[True]), ["d"], FASHION_MNIST, 1)[0]
    assert doubted_and_unsure["hint"] == doubt_hint(FASHION_MNIST)  # says more than unsure


def test_a_mirrored_reading_is_kept_only_as_a_shoe():
    turned = np.zeros((2, 28, 28), np.uint8)
    turned[:, 10:20, 2:12] = 200  # all on the left: looks turned
    for mirrored_as, kept in ((9, True), (1, False)):  # Ankle boot: a shoe; Trouser: not
        readings = read_probabilities(SeeingModel([0, 0], mirrored_as), turned, [True, True],
                                      facing_ids(FASHION_MNIST))
        assert readings.mirrored.tolist() == [kept, kept]
        assert readings.proba[0].argmax() == (mirrored_as if kept else 0)
    assert facing_ids(FASHION_MNIST) == [5, 7, 9] and facing_ids(MNIST) == []


def test_the_low_confidence_hint_names_shoes_only_for_a_shoe():
    proba = np.full((2, 10), 0.05)
    proba[0, 9], proba[1, 1] = 0.4, 0.4  # unsure: an Ankle boot, a Trouser
    boot, trouser = results_of(read(proba), ["a", "b"], FASHION_MNIST, 1)
    assert "shoes pointing left" in boot["hint"] and "shoes" not in trouser["hint"]

