"""Images made to look like the data set's: read, bounded before decoding, prepared."""

import io
import struct
import zlib

import numpy as np
import pytest
from helpers import garment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fashionlab.errors import ImageError
from fashionlab.images import (
    MAX_IMAGE_PIXELS,
    MAX_SPECKLE,
    MIN_BACKGROUND_JOINED,
    MIN_SHAPE,
    STRAIGHTEN_GAIN,
    TRIM_LEVEL,
    UNIFORM_SPREAD,
    WORKING_SIZE,
    image_pixels,
    load_image,
    prepare,
    prepare_image,
    read_image,
    read_image_file,
    shapeless,
    tilt,
)
from fashionlab.prediction import (
    facing_right,
)


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


NOT_AN_IMAGE = "is not an image fashionlab reads \\(PNG, JPEG, GIF, BMP, WebP or TIFF\\)"


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), NOT_AN_IMAGE),
    (lambda p: p.write_text("hello, not a picture"), NOT_AN_IMAGE),
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


def test_a_large_16_bit_image_is_reduced_before_it_is_converted(tmp_path):
    ramp = (np.linspace(0, 65535, 3000 * 2000) % 65536).astype(np.uint16).reshape(2000, 3000)
    ramp[500:1500, 1000:2000] = 65535
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    pixels = load_image(tmp_path / "wide.png")
    assert pixels.shape == (28, 28) and pixels.max() > 200


def flat_photo(background: int, value: int, size=(56, 56)) -> Image.Image:
    """A gray photo: a garment of one gray level, taller than wide, on a background of another."""
    width, height = size
    pixels = np.full((height, width), background, np.uint8)
    pixels[height // 4: 3 * height // 4, width // 3: 2 * width // 3] = value
    return Image.fromarray(pixels)


def assert_trimmed_garment(pixels: np.ndarray) -> None:
    """A light garment trimmed to its height, on black padding at the sides."""
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    assert pixels[14, 14] > 200 and pixels[0, 14] > 200 and pixels[27, 14] > 200
    assert pixels[:, :3].max() < 30 and pixels[:, -3:].max() < 30


@pytest.mark.parametrize("light_background, invert, inverted", [
    (False, None, False), (True, None, True),  # told by the border
    (False, False, False), (True, True, True),  # chosen, agreeing with the border
    (False, True, True), (True, False, False),  # chosen, against it: the photo's negative, as asked
])
def test_invert_none_decides_by_the_border_true_and_false_are_obeyed(light_background, invert, inverted):
    photo = garment(light_background=light_background)  # 230 on 0, or 25 on 255
    pixels = prepare_image(photo, invert=invert)
    if light_background == inverted:  # light on black after the choice: trimmed to the garment
        assert_trimmed_garment(pixels)
    else:  # dark on light: nothing to trim against, the whole photo, background light
        assert pixels[0, 0] > 220 and pixels[:, 0].min() > 220 and pixels[14, 14] < 40


@pytest.mark.parametrize("background, value, corner, middle", [
    (60, 90, 60, 90),  # light on dark: kept
    (200, 170, 55, 85),  # dark on light: inverted
])
def test_a_faint_garment_is_read_by_gray_level_inverted_only_on_a_light_background(background, value, corner,
                                                                                    middle):
    """A garment less than TRIM_LEVEL from its background is neither blank (the photo spans more
    than UNIFORM_SPREAD) nor taken from the colour map: the whole photo by gray level, in which no
    garment is found (too faint: it does not stand out as one shape)."""
    assert abs(value - background) < TRIM_LEVEL and abs(value - background) > UNIFORM_SPREAD
    prepared = prepare(flat_photo(background, value))
    assert not prepared.as_is and prepared.missing == "shapeless"
    assert abs(int(prepared.pixels[0, 0]) - corner) <= 3 and abs(int(prepared.pixels[:, 0].mean()) - corner) <= 3
    assert abs(int(prepared.pixels[14, 14]) - middle) <= 3


def test_trim_level_decides_between_the_colour_map_and_gray_level():
    above = prepare_image(flat_photo(100, 100 + TRIM_LEVEL + 1))  # stands out: the map, stretched and trimmed
    assert_trimmed_garment(above)
    assert above.max() == 255
    below = prepare_image(flat_photo(100, 100 + TRIM_LEVEL - 1))  # does not: the photo as it is
    assert abs(int(below[0, 0]) - 100) <= 2 and abs(int(below[14, 14]) - (100 + TRIM_LEVEL - 1)) <= 3


def test_an_image_spanning_at_most_uniform_spread_is_blank_one_level_more_is_not():
    blank = prepare(flat_photo(100, 100 + UNIFORM_SPREAD))
    assert not blank.as_is and blank.pixels.shape == (28, 28) and blank.pixels.max() == 0
    faint = prepare_image(flat_photo(100, 100 + UNIFORM_SPREAD + 1))
    assert abs(int(faint[0, 0]) - 100) <= 2 and faint.min() >= 95  # by gray level: the photo itself


def small_dataset_image(border: int = 0) -> np.ndarray:
    """28 x 28 gray, a small garment off-centre: preparing it (trim, rescale) would change it."""
    pixels = np.full((28, 28), border, np.uint8)
    pixels[10:18, 4:10] = 200
    return pixels


@pytest.mark.parametrize("border", [0, 127])  # the border's mean may be up to 127
def test_a_28x28_gray_image_on_a_dark_border_passes_unchanged(tmp_path, border):
    pixels = small_dataset_image(border)
    Image.fromarray(pixels).save(tmp_path / "exact.png")
    prepared = read_image_file(tmp_path / "exact.png")
    assert prepared.as_is
    np.testing.assert_array_equal(prepared.pixels, pixels)


@pytest.mark.parametrize("case", ["light border", "colour", "red equals green", "29 wide", "29 tall",
                                  "invert=False", "invert=True"])
def test_an_image_not_in_the_data_sets_format_is_prepared(tmp_path, case):
    pixels = small_dataset_image()
    image, invert = Image.fromarray(pixels), None
    if case == "light border":
        image = Image.fromarray(small_dataset_image(border=128))
    elif case in ("colour", "red equals green"):
        colour = np.zeros((28, 28, 3), np.uint8)
        colour[10:18, 4:10] = (220, 40, 40) if case == "colour" else (200, 200, 40)
        image = Image.fromarray(colour)
    elif case in ("29 wide", "29 tall"):
        grown = np.zeros((28, 29) if case == "29 wide" else (29, 28), np.uint8)
        grown[:28, :28] = pixels
        image = Image.fromarray(grown)
    else:
        invert = case == "invert=True"
    image.save(tmp_path / "image.png")
    prepared = read_image_file(tmp_path / "image.png", invert)
    assert not prepared.as_is
    assert prepared.pixels.shape == (28, 28)
    if case != "invert=True":  # prepared as a photo: the garment trimmed to the full height, centred
        assert prepared.pixels[0, 14] > 150 and prepared.pixels[27, 14] > 150
        assert prepared.pixels[:, :3].max() < 30 and prepared.pixels[:, -3:].max() < 30
    else:  # the negative, by gray level: the dark border becomes white
        assert prepared.pixels[0, 0] > 220


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_a_garment_differing_from_the_background_in_one_channel_only_is_found(channel):
    photo = np.full((64, 48, 3), 60, np.uint8)
    photo[16:48, 16:32, channel] = 250  # red, green or blue on dark gray
    assert_trimmed_garment(prepare_image(Image.fromarray(photo)))


def test_a_textured_background_is_background():
    """The border's own spread (noise, texture) is subtracted: only the garment is left to trim."""
    photo = np.random.default_rng(0).integers(80, 181, (72, 96)).astype(np.uint8)  # +-50 around 130
    photo[18:54, 36:60] = 255
    assert_trimmed_garment(prepare_image(Image.fromarray(photo)))


def test_trimming_ignores_pixels_at_or_below_trim_level():
    photo = np.random.default_rng(1).integers(0, TRIM_LEVEL + 1, (64, 64)).astype(np.uint8)  # a noisy dark photo
    photo[4:20, 40:50] = 220  # a small garment in a corner
    pixels = prepare_image(Image.fromarray(photo), invert=False)
    assert pixels[0, 14] > 200 and pixels[27, 14] > 200  # trimmed to the garment, not to the noise
    assert pixels[:, :4].max() < 30 and pixels[:, -4:].max() < 30


def wide_garment() -> np.ndarray:
    """An 8-bit garment photo whose brightest value is exactly 255."""
    pixels = np.full((56, 56), 20, np.uint8)
    pixels[14:42, 18:37] = 255
    pixels[20:30, 22:30] = 140
    return pixels


@pytest.mark.parametrize("case", ["I;16 v*257", "I;16 high byte", "I;16B tiff", "I 8-bit values", "I 16-bit values",
                                  "F 8-bit values", "F 16-bit values", "I;16 large", "I large", "F large",
                                  "I;16 12-bit values", "F 0..1 values", "I 1-bit values"])
def test_images_of_more_than_8_bits_read_like_their_8_bit_version(tmp_path, case):
    eight = wide_garment()
    if case.endswith("large"):  # above WORKING_SIZE: reduced after the conversion to 8 bits
        eight = np.asarray(Image.fromarray(eight).resize((700, 560), Image.Resampling.NEAREST))
    low_bytes = np.random.default_rng(2).integers(0, 256, eight.shape)
    wide = {
        "I;16 v*257": eight.astype(np.uint16) * 257,
        "I;16 high byte": (eight.astype(np.uint16) << 8) + low_bytes.astype(np.uint16),
        "I;16B tiff": (eight.astype(np.uint16) * 257).astype(">u2"),
        "I 8-bit values": eight.astype(np.int32),
        "I 16-bit values": eight.astype(np.int32) * 257,
        "F 8-bit values": eight.astype(np.float32),
        "F 16-bit values": eight.astype(np.float32) * 257,
        "I;16 large": eight.astype(np.uint16) * 257,
        "I large": eight.astype(np.int32) * 257,
        "F large": eight.astype(np.float32),
        "I;16 12-bit values": ((eight.astype(np.int64) * 4095 + 127) // 255).astype(np.uint16),  # a camera's 12 bits
        "F 0..1 values": eight.astype(np.float32) / 255,  # a normalised export
        "I 1-bit values": (eight > 127).astype(np.int32),
    }[case]
    if case == "I 1-bit values":  # black and white: what the 8-bit version is at 0 and 255
        eight = np.where(eight > 127, 255, 0).astype(np.uint8)
    path = tmp_path / ("wide.png" if case.startswith("I;16 ") and "12-bit" not in case else "wide.tif")
    Image.fromarray(wide).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == ("I;16B" if case == "I;16B tiff" else case.split()[0])
    read, want = load_image(path).astype(int), prepare_image(Image.fromarray(eight)).astype(int)
    if case in ("I;16 high byte", "I;16 12-bit values", "F 0..1 values"):  # within rounding of the 8-bit reading
        assert np.abs(read - want).max() <= 2
    else:  # 8-bit values, or 16-bit ones of the form v * 257: exactly the 8-bit reading
        np.testing.assert_array_equal(read, want)


@pytest.mark.parametrize("brightest, bits", [(3000, 12), (4095, 12), (4096, 13), (200, 8), (256, 9), (0.6, 1)])
def test_a_wide_image_is_read_on_the_scale_of_the_fewest_bits_that_hold_its_brightest_value(brightest, bits):
    from fashionlab.images import _flatten

    values = np.linspace(0, brightest, 64, dtype=np.float64).reshape(8, 8)
    image = Image.fromarray(values.astype(np.float32), mode="F")
    top = 1.0 if brightest <= 1 else 2**bits - 1
    np.testing.assert_allclose(np.asarray(_flatten(image)), np.clip(values / top * 255, 0, 255), atol=0.51)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_an_image_of_pixels_that_are_not_numbers_is_refused(tmp_path, bad):
    pixels = wide_garment().astype(np.float32)
    pixels[3, 3] = bad
    Image.fromarray(pixels).save(tmp_path / "nan.tif")
    with pytest.raises(ImageError, match="nan.tif holds pixels that are not numbers \\(NaN or infinite\\); save it as"):
        load_image(tmp_path / "nan.tif")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_are_white_paper_whatever_their_stored_colour(tmp_path, mode):
    gray = np.zeros((56, 56), np.uint8)
    gray[14:42, 18:37] = 40  # a dark garment; the background stored black, but transparent
    opaque = gray.copy()
    opaque[gray == 0] = 255  # what the photo looks like on a white page
    alpha = np.where(gray > 0, 255, 0).astype(np.uint8)
    if mode == "P":
        image = Image.fromarray(gray).convert("P")
        transparent = int(np.asarray(image)[0, 0])
        image.save(tmp_path / "cutout.png", transparency=transparent)
    else:
        layers = [gray, gray, gray, alpha] if mode == "RGBA" else [gray, alpha]
        Image.fromarray(np.stack(layers, axis=-1), mode=mode).save(tmp_path / "cutout.png")
    with Image.open(tmp_path / "cutout.png") as reopened:
        assert reopened.mode == mode
    np.testing.assert_array_equal(load_image(tmp_path / "cutout.png"), prepare_image(Image.fromarray(opaque)))
    assert_trimmed_garment(load_image(tmp_path / "cutout.png"))


def test_a_palette_image_without_transparency_shows_its_own_colours(tmp_path):
    gray = np.zeros((56, 56), np.uint8)
    gray[14:42, 18:37] = 40
    Image.fromarray(gray).convert("P").save(tmp_path / "palette.png")
    with Image.open(tmp_path / "palette.png") as reopened:
        assert reopened.mode == "P" and "transparency" not in reopened.info
    np.testing.assert_array_equal(load_image(tmp_path / "palette.png"), prepare_image(Image.fromarray(gray)))


def boot() -> Image.Image:
    """An upright boot, pointing left: a sole along the bottom and a shaft on the right."""
    pixels = np.zeros((60, 80), np.uint8)
    pixels[44:54, 6:74] = 220
    pixels[8:44, 46:74] = 220
    return Image.fromarray(pixels)


@pytest.mark.parametrize("orientation, stored_as", [
    (3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270),
])
def test_a_rotated_photo_is_turned_upright_by_its_exif_orientation(tmp_path, orientation, stored_as):
    exif = Image.Exif()
    exif[0x0112] = orientation  # how to turn the stored pixels for display
    boot().transpose(stored_as).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    boot().save(tmp_path / "upright.jpg", quality=95)
    turned, upright = load_image(tmp_path / "turned.jpg"), load_image(tmp_path / "upright.jpg")
    assert np.abs(turned.astype(int) - upright.astype(int)).mean() < 4
    assert facing_right(upright[None]).tolist() == [False]  # upright: pointing left, as the data set's shoes


def trousers(scale: int) -> Image.Image:
    """The same colour photo at `scale` times 200 x 125 pixels: trousers on a backdrop that darkens to the right."""
    height, width = 125 * scale, 200 * scale
    rows, cols = np.ogrid[:height, :width]
    rows, cols = rows / scale, cols / scale
    photo = np.empty((height, width, 3), np.float32)
    photo[...] = np.array([235, 225, 210], np.float32) - (cols * 0.3)[..., None]
    legs = (rows > 15) & (rows < 110) & (((cols > 76) & (cols < 94)) | ((cols > 106) & (cols < 124)))
    waist = (rows > 15) & (rows < 40) & (cols > 76) & (cols < 124)
    photo[legs | waist] = (40, 50, 90)
    return Image.fromarray(photo.astype(np.uint8))


def test_a_photo_larger_than_the_working_size_reads_like_the_same_photo_smaller():
    small, large = trousers(2), trousers(6)
    assert max(small.size) <= WORKING_SIZE < max(large.size)
    small_pixels, large_pixels = prepare_image(small), prepare_image(large)
    assert small_pixels[0, 14] > 200 and small_pixels[27, 14] < 60  # the waist, the gap between the legs
    assert small_pixels[27, 9] > 200 and small_pixels[27, 18] > 200  # the legs
    assert small_pixels[:, :3].max() < 30 and small_pixels[:, -3:].max() < 30
    difference = np.abs(large_pixels.astype(int) - small_pixels.astype(int))
    assert difference.mean() < 5 and difference.max() < 80


def test_a_large_photos_fine_texture_is_averaged_away_by_the_reduction():
    """A 1-pixel checkerboard (a weave, sensor noise) on a photo wider than WORKING_SIZE, though
    not taller: the box reduction of its longest side averages it to a plain gray backdrop."""
    height, width = 360, 2000
    rows, cols = np.ogrid[:height, :width]
    photo = ((rows + cols) % 2 * 255).astype(np.uint8)
    photo[72:288, 940:1060] = 255
    assert min(photo.shape) < WORKING_SIZE < max(photo.shape)
    assert_trimmed_garment(prepare_image(Image.fromarray(photo)))


def test_preparing_leaves_the_callers_image_as_it_was(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    trousers(3).save(tmp_path / "turned.jpg", exif=exif)  # to be turned upright, and reduced: both on copies
    with Image.open(tmp_path / "turned.jpg") as image:
        image.load()
        before = np.asarray(image).copy()
        prepare(image)
        assert image.size == (600, 375) and image.getexif()[0x0112] == 6
        np.testing.assert_array_equal(np.asarray(image), before)


@pytest.mark.parametrize("format", ["PNG", "JPEG", "MPO", "GIF", "BMP", "WEBP", "TIFF"])
def test_every_allowed_format_is_read(tmp_path, format):
    path = tmp_path / "garment.img"
    image = garment(mode="RGB")
    if format == "MPO":  # a phone's multi-picture JPEG
        image.save(path, format=format, save_all=True, append_images=[Image.new("RGB", image.size, "white")])
    else:
        image.save(path, format=format)
    with Image.open(path) as reopened:
        assert reopened.format == format
    pixels = load_image(path)
    assert pixels[14, 14] > 150 and pixels[:, 0].max() < 60


@pytest.mark.parametrize("format", ["ICO", "PCX", "TGA", "PPM", "SGI", "EPS", "DDS", "JPEG2000", "ICNS"])
def test_other_formats_are_refused_naming_the_allowed_ones(tmp_path, format):
    path = tmp_path / "garment.img"
    garment(mode="RGB").save(path, format=format)
    with Image.open(path) as reopened:  # Pillow itself reads it
        assert reopened.format == format
    with pytest.raises(ImageError) as refused:
        load_image(path)
    assert str(refused.value) == (f"{path} is not an image fashionlab reads (PNG, JPEG, GIF, BMP, WebP or TIFF); "
                                  f"convert it to PNG or JPEG")


def png_declaring(width: int, height: int) -> bytes:
    """A PNG file whose header says width x height but whose data hold one pixel: truncated."""
    out = io.BytesIO()
    Image.new("L", (1, 1), 200).save(out, format="PNG")
    content = bytearray(out.getvalue())
    content[16:24] = struct.pack(">II", width, height)  # IHDR's data start at byte 16, its CRC at 29
    content[29:33] = struct.pack(">I", zlib.crc32(bytes(content[12:29])))
    return bytes(content)


def test_image_pixels_reads_the_count_from_the_header_decoding_nothing():
    assert image_pixels(png_declaring(300, 200), "a.png") == 60_000
    assert image_pixels(png_declaring(8000, 5000), "a.png") == MAX_IMAGE_PIXELS  # at the limit: allowed
    with pytest.raises(ImageError, match="^a.png is 8001x5000 pixels, over the 40,000,000 pixel limit; downscale "
                                         "it first$"):
        image_pixels(png_declaring(8001, 5000), "a.png")
    with pytest.raises(ImageError, match="^a.png cannot be decoded"):  # decoding these would fail
        read_image(io.BytesIO(png_declaring(300, 200)), "a.png")


@pytest.mark.parametrize("width, height, message", [
    (10_000, 5_000, "^huge.png is 10000x5000 pixels, over the 40,000,000 pixel limit; downscale it first$"),
    (20_000, 10_000, "^huge.png is over the 40,000,000 pixel limit; downscale it first$"),  # Pillow's own limit
])
def test_an_image_over_the_pixel_limit_is_refused_from_its_header(width, height, message):
    with pytest.raises(ImageError, match=message):
        read_image(io.BytesIO(png_declaring(width, height)), "huge.png")


def test_a_multi_frame_tiff_gives_its_first_frame(tmp_path):
    frames = [garment(), Image.new("L", (56, 56), 255)]
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "pages.tif") as reopened:
        assert reopened.n_frames == 2
    assert_trimmed_garment(load_image(tmp_path / "pages.tif"))


def test_an_image_of_one_colour_all_over_prepares_to_nothing():
    for colour in ((255, 255, 255), (255, 0, 0), (128, 128, 128), (40, 200, 40)):
        assert prepare_image(Image.new("RGB", (50, 70), colour)).max() == 0


def noise_image(kind: str, seed: int = 0) -> Image.Image:
    """Pixel noise (28 x 28 gray, or 300 px colour) or a bare surface: a gradient, stripes and grain."""
    rng = np.random.default_rng(seed)
    if kind == "gray 28":
        return Image.fromarray(rng.integers(0, 256, (28, 28)).astype(np.uint8))
    if kind == "dark 28":  # mostly dark, as noise on a black frame would be
        return Image.fromarray(np.clip(rng.normal(50, 45, (28, 28)), 0, 255).astype(np.uint8))
    if kind == "colour 300":
        return Image.fromarray(rng.integers(0, 256, (300, 300, 3)).astype(np.uint8))
    y, x = np.mgrid[0:240, 0:320]
    surface = 90 + 0.3 * x + 25 * np.sign(np.sin(2 * np.pi * (x + y) / 23)) + rng.normal(0, 6, (240, 320))
    return Image.fromarray(np.clip(np.stack([surface, surface * 0.8, surface * 0.6], -1), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("kind", ["gray 28", "dark 28", "colour 300", "stripes"])
def test_noise_or_a_bare_texture_is_no_garment(kind):
    prepared = prepare(noise_image(kind))
    assert prepared.missing == "shapeless"


def test_one_colour_all_over_is_blank_and_a_garment_is_found():
    assert prepare(Image.new("RGB", (50, 70), (40, 200, 40))).missing == "blank"
    assert prepare(Image.new("L", (28, 28), 0)).missing == "blank"
    assert prepare(garment()).missing is None and prepare(garment(light_background=True)).missing is None


def shape_with(background_joined: float = 1.0, speckle: int = 0, size: int = 60) -> np.ndarray:
    """A 28 x 28 light block of `size` pixels on black, with `speckle` lone dark pixels inside it."""
    pixels = np.zeros((28, 28), np.uint8)
    pixels[4:4 + size // 10, 4:14] = 200
    for i in range(speckle):
        pixels[4 + 2 * (i // 4) + 1, 5 + 2 * (i % 4)] = 0
    return pixels


def test_shapeless_at_its_thresholds():
    """Each of the three measures on its own: the largest light shape, the dark pixels joined to
    the frame's edge, and lone pixels, just inside and just past its limit."""
    assert (MIN_SHAPE, MIN_BACKGROUND_JOINED, MAX_SPECKLE) == (0.008, 0.3, 0.05)
    tiny = np.zeros((28, 28), np.uint8)
    tiny[5, 5:11] = 200  # 6 pixels: under 0.8 % of 784
    assert shapeless(tiny)
    tiny[6, 5] = 200  # 7 pixels
    assert not shapeless(tiny)
    ring = np.zeros((28, 28), np.uint8)
    ring[2:26, 2:26] = 200  # a light square holding a dark hole of 14 x 14 = 196 pixels
    ring[5:19, 5:19] = 0  # dark outside: 784 - 576 = 208, of 404 dark: 51 % joined
    assert not shapeless(ring)
    ring[3:24, 3:24] = 0  # hole 441, outside 208: 32 % joined
    ring[3:24, 3] = 200  # hole 420: 33 %
    assert not shapeless(ring)
    ring[2:26, 2:26] = 200
    ring[3:25, 3:25] = 0  # hole 484: 30.06 % joined... kept
    assert not shapeless(ring)
    ring[2:27, 2:27] = 200
    ring[3:26, 3:26] = 0  # outside 784 - 625 = 159, hole 529: 23 % joined
    assert shapeless(ring)
    assert not shapeless(shape_with(speckle=0)) and not shapeless(shape_with(speckle=20))
    checks = np.zeros((28, 28), np.uint8)
    checks[4:24, 4:24] = 200
    spots = [(r, c) for r in range(5, 23, 2) for c in range(5, 23, 2)]
    for r, c in spots[:39]:  # 39 lone dark pixels: 4.97 % of 784
        checks[r, c] = 0
    assert not shapeless(checks)
    checks[spots[39]] = 0  # 40: 5.1 %
    assert shapeless(checks)


@pytest.mark.realdata
def test_no_test_image_of_the_data_set_is_taken_for_noise(real_data):
    """Measured on all 10,000 test images: 3 are shapeless (0.03 %), none of the first 2,000."""
    images = real_data.test_images()
    flagged = [i for i in range(len(images)) if shapeless(images[i])]
    assert len(flagged) <= 3 and min(flagged) >= 2000


@pytest.mark.realdata
def test_an_inverted_test_image_is_read_as_the_image_it_inverts(real_data, tmp_path):
    images = real_data.test_images()[:200]
    for i, pixels in enumerate(images):
        Image.fromarray(255 - pixels).save(tmp_path / f"{i}.png")
        prepared = read_image_file(tmp_path / f"{i}.png")
        assert prepared.as_is and prepared.missing is None
        np.testing.assert_array_equal(prepared.pixels, pixels)


def test_a_light_garment_on_gray_is_not_taken_for_an_inverted_data_set_image():
    pixels = np.full((28, 28), 150, np.uint8)
    pixels[6:22, 8:20] = 240  # its negative: dark on gray, no black background
    prepared = prepare(Image.fromarray(pixels))
    assert not prepared.as_is and prepared.missing is None and prepared.pixels[14, 14] > 200


@pytest.mark.parametrize("degrees", [-20, -12, 8, 15])
def test_a_tilted_garment_is_straightened(degrees):
    upright = np.full((200, 200), 255, np.uint8)
    upright[30:170, 60:140] = 40  # a dark coat, twice as tall as wide
    upright[30:80, 40:60] = upright[30:80, 140:160] = 40  # with sleeves
    photo = Image.fromarray(upright).rotate(degrees, Image.Resampling.BICUBIC, expand=True, fillcolor=255)
    assert abs(tilt(255 - np.asarray(photo) > TRIM_LEVEL) - degrees) <= 1
    straightened, plain = prepare_image(photo.convert("RGB")), prepare_image(Image.fromarray(upright).convert("RGB"))
    assert ((straightened > 100) != (plain > 100)).mean() < 0.04  # the same shape, turned back upright


def test_an_upright_garment_is_not_turned_and_a_round_one_not_straightened():
    upright = np.zeros((100, 100), bool)
    upright[10:90, 30:70] = True
    assert tilt(upright) == 0
    y, x = np.mgrid[0:100, 0:100]
    assert tilt((y - 50) ** 2 + (x - 50) ** 2 < 40 ** 2) == 0  # any turn: the same box
    square = np.zeros((100, 100), bool)
    square[20:80, 20:80] = True
    turned = np.asarray(Image.fromarray(square).rotate(4, expand=True))  # its box 1.07 times as large
    assert STRAIGHTEN_GAIN == 1.05 and tilt(turned) != 0
    slightly = np.asarray(Image.fromarray(square).rotate(2, expand=True))  # 1.035 times: kept
    assert tilt(slightly) == 0


# --- raw pixels given as numbers (the MLflow model's and the v2 protocol's input) -----------------

def test_raw_pixels_of_zeros_and_ones_as_integers_are_an_image_not_a_scale():
    from fashionlab.images import raw_pixels

    assert raw_pixels(np.eye(28, dtype=np.uint8)[None], most=1).max() == 1
    assert raw_pixels(np.zeros((1, 28, 28)), most=1).max() == 0  # all black: no scale to tell


def test_raw_pixels_take_the_data_sets_images_as_arrays_lists_and_tables():
    import pandas as pd

    from fashionlab.images import raw_pixels

    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    for value in (images, images.astype(float), images.reshape(3, 784), images.tolist(),
                  pd.DataFrame(images.reshape(3, 784))):
        got = raw_pixels(value, most=10)
        assert got.dtype == np.float32 and got.shape == (3, 28, 28) and (got == images).all()


@pytest.mark.parametrize("value, said", [
    (np.full((1, 28, 28), 255.5), "from 0 to 255"), (np.full((1, 28, 28), -0.5), "from 0 to 255"),
    (np.full((1, 28, 28), np.inf), "finite"), (np.full((1, 28, 28), np.nan), "finite"),
    (np.zeros((1, 28, 27)), "N x 28 x 28"), (np.zeros((11, 28, 28)), "N from 1 to 10"),
    (np.zeros((0, 28, 28)), "N from 1 to 10"), (np.float64(3), "a single number"),
    ([[1, 2], [3]], "numbers"), (np.array([["a"] * 784]), "numbers from 0 to 255"),
    (np.zeros((1, 28, 28), dtype=complex), "numbers from 0 to 255"), ({"a": 1}, "numbers"),
    (np.full((1, 28, 28), 0.5), "within 0..1"), (np.zeros((1, 28, 28), dtype=bool), "numbers from 0 to 255"),
])
def test_raw_pixels_refuse_what_is_not_an_image_in_one_line(value, said):
    from fashionlab.errors import ImageError
    from fashionlab.images import raw_pixels

    with pytest.raises(ImageError, match=said) as refused:
        raw_pixels(value, most=10)
    assert "\n" not in str(refused.value)
