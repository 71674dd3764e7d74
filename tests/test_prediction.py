import numpy as np
import pytest
from helpers import synthetic_arrays
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fashionlab.errors import ConfigError, ImageError, RunError
from fashionlab.prediction import (
    BLANK_HINT,
    LOW_CONFIDENCE_HINT,
    facing_right,
    load_image,
    predict,
    predict_arrays,
    prepare_image,
    read_probabilities,
    results_of,
    top_k,
)


def garment(mode: str = "L", size=(56, 56), light_background: bool = False) -> Image.Image:
    """A bright rectangle on black (or the reverse), in the requested mode."""
    pixels = np.zeros(size[::-1], dtype=np.uint8)
    pixels[size[1] // 4: 3 * size[1] // 4, size[0] // 3: 2 * size[0] // 3] = 230
    if light_background:
        pixels = 255 - pixels
    return Image.fromarray(pixels, mode="L").convert(mode)


def test_dark_background_is_kept_light_background_is_inverted():
    dark = prepare_image(garment())
    light = prepare_image(garment(light_background=True))
    assert dark.shape == (28, 28) and dark.dtype == np.uint8
    assert dark[:, 0].max() < 30 and dark[14, 14] > 200  # trimmed to the garment, padded at the sides
    np.testing.assert_allclose(light.astype(int), dark.astype(int), atol=30)
    assert prepare_image(garment(), invert=True)[0].min() > 220
    assert prepare_image(garment(light_background=True), invert=False)[0].min() > 220


def test_garment_is_trimmed_then_centred():
    small = np.zeros((200, 200), np.uint8)
    small[20:60, 130:150] = 220  # a small tall garment off in a corner of a big dark photo
    pixels = prepare_image(Image.fromarray(small))
    assert pixels[0, 14] > 150 and pixels[27, 14] > 150  # it now spans the full height...
    assert pixels[:, :7].max() < 30 and pixels[:, -7:].max() < 30  # ...centred, width kept in proportion


def test_aspect_ratio_is_kept_by_padding():
    wide = prepare_image(Image.new("L", (100, 50), 100), invert=False)  # by gray level: the whole image is kept
    assert wide[14].min() > 90  # the middle row is the image
    assert wide[0].max() == 0 and wide[-1].max() == 0  # top and bottom are padding


@pytest.mark.parametrize("mode, suffix", [
    ("L", ".png"), ("RGB", ".png"), ("RGB", ".jpg"), ("P", ".png"), ("I;16", ".png"), ("LA", ".png"),
    ("RGBA", ".png"), ("1", ".png"),
])
def test_every_image_mode_and_format_gives_a_28x28_garment(tmp_path, mode, suffix):
    image = garment()
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    else:
        image = image.convert(mode)
    path = tmp_path / f"g{suffix}"
    image.save(path)
    pixels = load_image(path)
    assert pixels.shape == (28, 28)
    assert pixels[14, 14] > 150 and pixels[1, 1] < 60


def test_transparent_background_is_flattened_like_white_paper(tmp_path):
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[5:35, 15:25] = (40, 40, 40, 255)  # a dark, tall garment; the rest fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "cutout.png")
    pixels = load_image(tmp_path / "cutout.png")
    assert pixels[:, 0].max() < 10 and pixels[14, 14] > 180


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), "not an image"),
    (lambda p: p.write_text("hello, not a picture"), "not an image"),
    (lambda p: (garment().save(p), p.write_bytes(p.read_bytes()[:60])), "cannot be decoded"),
    (lambda p: p.mkdir(), "is a directory"),
])
def test_unreadable_images_are_refused(tmp_path, make, message):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageError, match=message):
        load_image(path)
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "missing.png")


def test_top_k_lists_the_most_probable_classes_first():
    proba = np.array([0.05, 0.4, 0.05, 0.3, 0.2, 0, 0, 0, 0, 0])
    assert [t["class_id"] for t in top_k(proba, 3)] == [1, 3, 4]
    assert [t["probability"] for t in top_k(proba, 3)] == [0.4, 0.3, 0.2]
    assert [t["class_name"] for t in top_k(proba, 2)] == ["Trouser", "Dress"]


def test_reloaded_model_predicts_exactly_what_training_left(tiny_run, synthetic):
    x_test = synthetic_arrays()["t10k-images-idx3-ubyte"]
    from_training = predict_arrays(tiny_run.model, x_test[:5], [f"test[{i}]" for i in range(5)], k=3)
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
        with pytest.raises(ConfigError, match="test images are numbered by whole numbers"):
            predict(tiny_run.run.path, indices=[0, bad], data=synthetic)
    with pytest.raises(ConfigError, match="^`top_k` must be between 1 and 10, got 11$"):
        predict(tiny_run.run.path, indices=[0], top_k=11)


# --- unusual but valid images are predicted, not refused --------------------------------------

def test_a_one_pixel_image_is_predicted(tmp_path):
    Image.new("L", (1, 1), 200).save(tmp_path / "dot.png")
    assert load_image(tmp_path / "dot.png").shape == (28, 28)


def test_a_cmyk_jpeg_is_predicted(tmp_path):
    garment(mode="RGB").convert("CMYK").save(tmp_path / "cmyk.jpg")
    pixels = load_image(tmp_path / "cmyk.jpg")
    assert pixels[14, 14] > 150 and pixels[1, 1] < 60


def test_animated_gif_uses_its_first_frame(tmp_path):
    frames = [garment(mode="P"), Image.new("P", (56, 56), 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    pixels = load_image(tmp_path / "anim.gif")
    assert pixels[14, 14] > 150 and pixels[1, 1] < 60


def test_palette_png_with_transparency(tmp_path):
    image = garment(mode="P")
    image.info["transparency"] = 0  # the black background becomes transparent -> white paper
    image.save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as reopened:
        assert reopened.mode == "P" and "transparency" in reopened.info
    pixels = load_image(tmp_path / "p.png")
    assert pixels.shape == (28, 28)
    assert pixels[1, 1] < 60  # background flattened to white, then inverted to black


def test_exif_rotation_is_applied(tmp_path):
    tall = np.zeros((56, 56), np.uint8)
    tall[4:52, 24:32] = 230  # a vertical bar as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(tall).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    pixels = load_image(tmp_path / "rotated.jpg")
    assert pixels[14, 4:24].mean() > 150  # displayed horizontally
    assert pixels[4:10, 14].mean() < 60


def test_huge_image_is_refused_before_decoding(tmp_path):
    Image.new("L", (10_000, 5_000)).save(tmp_path / "huge.png")
    with pytest.raises(ImageError, match="over the 40,000,000 pixel limit"):
        load_image(tmp_path / "huge.png")


# --- fuzzing: any bytes give a 28x28 image or an ImageError -----------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048), st.sampled_from([".png", ".jpg", ".gif"]))
def test_fuzz_load_image_arbitrary_bytes(tmp_path, content, suffix):
    path = tmp_path / f"f{suffix}"
    path.write_bytes(content)
    try:
        pixels = load_image(path)
    except ImageError as exc:
        assert "\n" not in str(exc)
    else:
        assert pixels.shape == (28, 28) and pixels.dtype == np.uint8


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 300), st.integers(1, 300), st.sampled_from(["L", "RGB", "RGBA", "P", "LA", "I;16", "1"]),
       st.integers(0, 2**16), st.integers(0, 200))
def test_fuzz_truncated_valid_images(tmp_path, width, height, mode, seed, cut):
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image = Image.fromarray(pixels.astype(np.uint16) * 257) if mode == "I;16" else image.convert(mode)
    path = tmp_path / "img.png"
    image.save(path)
    if cut:
        path.write_bytes(path.read_bytes()[:-cut])
    try:
        result = load_image(path)
    except ImageError:
        assert cut  # only a damaged file may be refused
    else:
        assert result.shape == (28, 28)




# --- photos: garment told from background by colour, data-set images as they are, mirrored shoes ----


def test_a_28x28_gray_image_on_black_is_used_unchanged(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    pixels[:, 0] = pixels[:, -1] = pixels[0] = pixels[-1] = 0  # a dark border, like the data set's
    Image.fromarray(pixels).save(tmp_path / "exact.png")
    Image.fromarray(pixels).convert("RGB").save(tmp_path / "exact-rgb.png")
    for name in ("exact.png", "exact-rgb.png"):
        np.testing.assert_array_equal(load_image(tmp_path / name), pixels)
    assert not np.array_equal(load_image(tmp_path / "exact.png", invert=False), pixels)  # chosen: trimmed, scaled


def test_a_28x28_image_that_is_not_in_the_data_sets_format_is_prepared():
    light = np.full((28, 28), 255, np.uint8)
    light[8:20, 10:18] = 30  # dark garment on white: inverted, trimmed
    assert prepare_image(Image.fromarray(light))[14, 14] > 200
    colour = np.zeros((28, 28, 3), np.uint8)
    colour[4:24, 10:18] = (250, 30, 30)  # a red garment on black is not gray: prepared, trimmed
    assert prepare_image(Image.fromarray(colour))[:, 14].min() > 150


def test_a_garment_is_told_from_a_background_of_the_same_gray_level_by_colour():
    photo = np.zeros((120, 90, 3), np.uint8)
    photo[:] = (0, 128, 0)  # green wall, gray level ~75
    photo[30:90, 35:55] = (250, 0, 0)  # red garment, gray level ~75: flat for a gray-level threshold
    gray = np.asarray(Image.fromarray(photo).convert("L"))
    assert abs(int(gray[5, 5]) - int(gray[60, 45])) < 5
    pixels = prepare_image(Image.fromarray(photo))
    assert pixels[:, 14].min() > 200  # the garment, trimmed to its height, full strength
    assert pixels[:, :5].max() < 30 and pixels[:, -5:].max() < 30  # the wall is black padding


def test_a_background_that_darkens_towards_a_side_is_background():
    ramp = np.linspace(255, 100, 200, dtype=np.float32)[None, :].repeat(160, axis=0)  # a lit backdrop
    ramp[40:120, 80:120] -= 60  # a garment a little darker than the backdrop behind it
    pixels = prepare_image(Image.fromarray(ramp.astype(np.uint8)))
    assert pixels[14, 14] > 200  # the garment, trimmed: taller than wide, so padded at the sides
    assert pixels[:, :6].max() < 40 and pixels[:, -6:].max() < 40


def test_facing_right_flags_images_whose_left_half_holds_most_of_the_garment():
    shoe = np.zeros((28, 28), np.uint8)
    shoe[18:24, 2:26] = 200  # a sole...
    shoe[8:18, 16:26] = 200  # ...and a shaft on the right: pointing left, as the data set's shoes
    even = np.zeros((28, 28), np.uint8)
    even[4:24, 8:20] = 200
    assert facing_right(np.stack([shoe, shoe[:, ::-1], even])).tolist() == [False, True, False]


def test_low_confidence_results_carry_a_hint_and_confident_ones_do_not():
    proba = np.array([[0.3, 0.25, 0.2, 0.25, 0, 0, 0, 0, 0, 0], [0.05, 0.9, 0.05, 0, 0, 0, 0, 0, 0, 0]])
    unsure, sure = results_of(proba, ["a", "b"], 2)
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
        predict_arrays(model, np.ones((2, 28, 28), np.uint8), ["a", "b"])


def test_an_image_with_nothing_in_it_says_so(tmp_path):
    Image.new("RGB", (60, 40), (255, 255, 255)).save(tmp_path / "white.png")
    pixels = load_image(tmp_path / "white.png")
    assert pixels.max() == 0
    for colour in ((255, 0, 0), (128, 128, 128), (40, 200, 40)):  # one colour all over: nothing either
        assert prepare_image(Image.new("RGB", (50, 70), colour)).max() == 0
    proba = np.full((1, 10), 0.1)
    proba[0, 5] = 0.9
    assert results_of(proba, ["white.png"], 3, pixels=pixels[None])[0]["hint"] == BLANK_HINT
    assert "hint" not in results_of(proba, ["x"], 3, pixels=np.full((1, 28, 28), 200, np.uint8))[0]


def test_a_large_16_bit_image_is_reduced_before_it_is_converted(tmp_path):
    ramp = (np.linspace(0, 65535, 3000 * 2000) % 65536).astype(np.uint16).reshape(2000, 3000)
    ramp[500:1500, 1000:2000] = 65535
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    pixels = load_image(tmp_path / "wide.png")
    assert pixels.shape == (28, 28) and pixels.max() > 200
