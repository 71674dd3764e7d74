"""The pages as a person sees them: a run's and a comparison's report.html opened from disk in
headless Chromium (Debian's, installed by `make test`), at desktop and phone widths."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest
from helpers import BROKEN_IMAGES, OUTSIDE, TINY, assert_png

from fashionlab.comparison import compare
from fashionlab.reports import seconds_text
from fashionlab.sweeps import sweep
from fashionlab.training import train

WIDTHS = {"desktop": (1280, 800), "phone": (400, 800)}  # a phone also lays pages out by their viewport tag

SCROLLING_BOXES = """(selector) => [...document.querySelectorAll(selector)]
  .filter((e) => e.scrollWidth > e.clientWidth + 1).map((e) => e.textContent.slice(0, 60))"""
NARROW_FIGURES = """() => [...document.querySelectorAll("h2 + img, .pairs img")]
  .filter((i) => i.getBoundingClientRect().width < 0.8 * Math.min(i.naturalWidth, document.body.clientWidth)).length"""


@pytest.fixture(scope="module")
def pages(tmp_path_factory, synthetic) -> dict[str, Path]:
    """A one-epoch run (its loss is above 1), a two-variant comparison and a six-trial sweep (one
    trial failing with a long reason), on synthetic data; the run and comparison made by commands
    with a path longer than a phone is wide."""
    root = tmp_path_factory.mktemp("pages")
    long_path = "runs/a-folder-name-longer-than-a-phone-is-wide-" + "x" * 40
    one = train(TINY.replace(epochs=1), root / "one-epoch", data=synthetic, verbose=0, recipe="fast-mlp",
                command=f"fashionlab train --recipe fast-mlp --epochs 1 --run-dir {long_path}/one-epoch")
    compare(root / "cmp", variants=["scaled", "bn-after"], seeds=1, base=TINY.replace(epochs=3), data=synthetic,
            command=f"fashionlab compare --variants scaled bn-after --seeds 1 --epochs 3 --out {long_path}")
    space = root / "space.toml"
    space.write_text('[train]\ndepth = 2\nepochs = 4\nvalidation_size = 60\noptimizer = "adam"\n[search]\n'
                     "learning_rate = { min = 0.0001, max = 0.1, log = true }\nwidth = [8, 32]\n"
                     "dropout = [0.0, 0.4]\nmomentum = { choices = [0.0, 0.5] }\n")
    sweep(space, root / "sweep", trials=6, sampler="random", data=synthetic)
    return {"run": one.run.path / "report.html", "comparison": root / "cmp" / "report.html",
            "sweep": root / "sweep" / "report.html"}


def opened(browser, path: Path, size: tuple[int, int], fetched: list[str] | None = None):
    """`path` in a new page of the given viewport; the requests that leave the disk go to `fetched`."""
    page = browser.new_page(viewport={"width": size[0], "height": size[1]}, is_mobile=size[0] < 600,
                            has_touch=size[0] < 600)
    if fetched is not None:
        page.on("request", lambda request: request.url.startswith(("file:", "data:")) or fetched.append(request.url))
    page.goto(path.as_uri())
    return page


@pytest.mark.parametrize("name", ["run", "comparison", "sweep"])
@pytest.mark.parametrize("width", list(WIDTHS))
def test_nothing_overflows_the_page(browser, pages, name, width, tmp_path):
    size, fetched = WIDTHS[width], []
    page = opened(browser, pages[name], size, fetched)
    try:
        shot = Path(os.environ.get("FASHIONLAB_SCREENSHOTS", tmp_path)) / f"{name}-{width}.png"
        page.screenshot(path=shot, full_page=True)
        assert page.evaluate("window.innerWidth") == size[0]  # not a desktop page shrunk to fit
        assert page.evaluate("document.documentElement.scrollWidth") <= size[0]
        assert page.evaluate(OUTSIDE) == []
        assert page.evaluate(BROKEN_IMAGES) == 0 and fetched == []
        if width == "phone":  # each figure gets the whole width: side by side only where two fit
            assert page.evaluate(NARROW_FIGURES) == 0
        # At 1280 px every table fits as it is; on a phone only those with many columns scroll.
        assert page.evaluate(SCROLLING_BOXES, ".scroll" if width == "desktop" else ".scroll:has(table.text)") == []
    finally:
        page.close()
    assert_png(shot, size[0], size[1])


def test_each_run_of_the_comparison_links_to_its_own_page(browser, pages):
    results = pd.read_csv(pages["comparison"].parent / "results.csv")
    page = opened(browser, pages["comparison"], WIDTHS["phone"])
    try:
        hrefs = page.eval_on_selector_all("table.runs a", "links => links.map((a) => a.href)")
        assert [Path(unquote(urlparse(href).path)) for href in hrefs] == \
            [Path(d).resolve() / "report.html" for d in results["run_dir"]]
        page.click("table.runs a >> nth=1")
        assert page.url == hrefs[1]
        assert page.text_content("h1") == f"fashionlab run: {Path(results['run_dir'][1]).name}"
    finally:
        page.close()


def test_each_trial_of_the_sweep_links_to_its_learning_curves(browser, pages):
    trials = pd.read_csv(pages["sweep"].parent / "trials.csv")
    assert "failed" in set(trials["state"])  # adam with momentum: the long reason is on the page too
    page = opened(browser, pages["sweep"], WIDTHS["phone"])
    try:
        hrefs = page.eval_on_selector_all("table a", "links => links.map((a) => a.href)")
        trained = trials[trials["state"].isin(["complete", "pruned"])]
        assert [Path(unquote(urlparse(href).path)) for href in hrefs] == \
            [(pages["sweep"].parent / run / "learning_curves.png").resolve() for run in trained["run"]]
        assert all(Path(unquote(urlparse(href).path)).is_file() for href in hrefs)
    finally:
        page.close()


def test_the_comparison_s_per_epoch_leaves_out_the_compiling_epoch(pages):
    """runner.results' s/epoch: the median of the epochs after the first, as the page says."""
    results = pd.read_csv(pages["comparison"].parent / "results.csv")
    for run_dir, shown in zip(results["run_dir"], results["seconds_per_epoch"]):
        seconds = pd.read_csv(Path(run_dir) / "history.csv")["seconds"]
        assert shown == pytest.approx(seconds[1:].median())
        assert f"<td>{seconds_text(shown)}</td>" in pages["comparison"].read_text()
