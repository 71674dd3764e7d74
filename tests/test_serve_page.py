"""The page of `fashionlab serve` (serve/page.py, page.html, page.js): filled in safely, and used in
headless Chromium against a real server."""

from __future__ import annotations

import json
import re

import pytest
from helpers import BROKEN_IMAGES, OUTSIDE, assert_png
from serving import start, stop

from fashionlab.serve.page import serve_page


def test_the_page_shows_an_uploaded_images_class_and_bars(keras_server, browser, test_pngs, tmp_path):
    (tmp_path / "garment.png").write_bytes(test_pngs[2])
    _, _, expected = keras_server.post_files([("garment.png", test_pngs[2])])
    for width, height in ((1280, 900), (400, 800)):
        page = browser.new_page(viewport={"width": width, "height": height})
        elsewhere = []
        page.on("request", lambda r: elsewhere.append(r.url) if not r.url.startswith(
            (keras_server.url, "data:", "blob:")) else None)
        page.goto(keras_server.url)
        page.set_input_files("#files", str(tmp_path / "garment.png"))
        result = page.locator(".result").first
        result.locator(".bar-row").first.wait_for(timeout=15_000)
        assert result.locator(".class-name").inner_text() == expected[0]["class_name"]
        labels = result.locator(".bar-label").all_inner_texts()
        assert labels == [t["class_name"] for t in expected[0]["top_k"]]
        values = [float(v) for v in result.locator(".bar").evaluate_all(
            "(bars) => bars.map((b) => b.getAttribute('aria-valuenow'))")]
        assert values == pytest.approx([t["probability"] for t in expected[0]["top_k"]], abs=1e-4)
        fills = result.locator(".bar span").evaluate_all("(s) => s.map((e) => e.getBoundingClientRect().width)")
        assert fills == sorted(fills, reverse=True) and fills[0] > 0
        assert page.evaluate(BROKEN_IMAGES) == 0 and page.evaluate(OUTSIDE) == []
        assert elsewhere == []
        page.locator("#gallery button").first.click()  # a test image from the gallery, with its true label
        page.locator(".result").nth(1).wait_for()
        page.locator(".result").first.locator(".bar-row").first.wait_for(timeout=15_000)
        assert page.locator(".result").first.locator(".truth").inner_text().startswith("true: ")
        shot = tmp_path / f"page-{width}.png"
        page.screenshot(path=shot, full_page=True)
        assert_png(shot, min_width=width - 20, min_height=300)
        page.close()


def test_a_bad_file_on_the_page_shows_the_servers_message(keras_server, browser, tmp_path):
    (tmp_path / "notes.png").write_bytes(b"not an image")
    page = browser.new_page()
    page.goto(keras_server.url)
    page.set_input_files("#files", str(tmp_path / "notes.png"))
    message = page.locator(".result .error").first
    message.wait_for(timeout=15_000)
    assert "is not an image fashionlab reads" in message.inner_text()
    boxes = page.locator(".result .placeholder")
    boxes.nth(1).wait_for(timeout=15_000)  # a box, not a broken-image icon, for the original and what was seen
    assert boxes.all_inner_texts() == ["no preview", "not read"]
    assert page.evaluate(BROKEN_IMAGES) == 0
    page.close()


def test_the_gallery_is_empty_with_a_note_without_the_data_set(tiny_run, browser, tmp_path):
    process, url = start(str(tiny_run.run.path), "--data-dir", str(tmp_path), "--no-verify")
    try:
        page = browser.new_page()
        page.goto(url)
        assert "not on this machine" in page.locator("#gallery-title").inner_text()
        assert page.locator("#gallery button").count() == 0
        page.close()
    finally:
        stop(process)


def test_the_page_state_survives_names_that_look_like_placeholders():
    page, _ = serve_page({"model": {"name": "shirt__SCRIPT____STATE__"}, "gallery": [], "top_k": 3})
    state = re.search(r'<script type="application/json" id="state">(.*?)</script>', page, re.S)[1]
    assert json.loads(state)["model"]["name"] == "shirt__SCRIPT____STATE__"
    assert page.count('"use strict";') == 1


def test_the_gallery_shows_two_test_images_of_each_class_named_by_the_data_set(tmp_path):
    import numpy as np
    from helpers import SEVEN_NAMES, synthetic_arrays, write_dataset, write_seven_class_dataset

    from fashionlab.data import DataSource
    from fashionlab.datasets import resolve
    from fashionlab.serve.page import gallery

    folder = write_seven_class_dataset(tmp_path / "seven")
    shown = gallery(DataSource(), resolve(str(folder)))
    assert sorted(item["label"] for item in shown) == sorted(SEVEN_NAMES * 2)
    assert all(item["png"].startswith("data:image/png;base64,") for item in shown)
    arrays = {k: (np.arange(len(v)) % 30).astype(np.uint8) if "labels" in k else v
              for k, v in synthetic_arrays().items()}
    (write_dataset(tmp_path / "many", arrays) / "classes.txt").write_text("\n".join(f"c{i}" for i in range(30)))
    shown = gallery(DataSource(), resolve(str(tmp_path / "many")))  # 30 classes: the first ten, two each
    assert sorted(item["label"] for item in shown) == sorted([f"c{i}" for i in range(10)] * 2)


def test_the_page_shows_no_class_and_why_for_noise(keras_server, browser, tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8)).save(tmp_path / "noise.png")
    _, _, expected = keras_server.post_files([("noise.png", (tmp_path / "noise.png").read_bytes())])
    assert expected[0]["class_id"] is None
    page = browser.new_page()
    page.goto(keras_server.url)
    page.set_input_files("#files", str(tmp_path / "noise.png"))
    result = page.locator(".result").first
    result.locator(".note").first.wait_for(timeout=15_000)
    assert result.locator(".class-name").inner_text() == "no class"
    assert result.locator(".note").all_inner_texts() == [expected[0]["hint"]]
    assert result.locator(".bar-row").count() == 0 and "null" not in result.inner_text()
    page.close()


def test_an_ensemble_is_served_and_said_to_be_one(tiny_run, synthetic, browser, tmp_path):
    from helpers import copy_run

    from fashionlab.ensembles import ensemble

    twin = copy_run(tiny_run, tmp_path / "twin", "2026-12-01T10:00:00+00:00")
    made = ensemble([tiny_run.run.path, twin], tmp_path / "ensemble", data=synthetic)
    process, url = start(str(made.run.path), "--data-dir", str(synthetic.data_dir), "--no-verify")
    try:
        page = browser.new_page()
        page.goto(url)
        about = page.locator("#about").inner_text()
        assert "ensemble of 2 runs" in about and "recipe" not in about, about
        assert page.locator("#title").inner_text() == "fashionlab · ensemble-2-tiny"
        page.close()
    finally:
        stop(process)
