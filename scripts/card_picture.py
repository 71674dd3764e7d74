"""A picture of what a run looks like in a notebook (its card), for the README.

    .venv/bin/python scripts/card_picture.py RUN docs/notebook-card.png

Renders `fashionlab.Run.open(RUN)._repr_html_()`, the HTML Jupyter shows for a run, in Debian's
headless Chromium and saves it as a PNG.
"""

import sys
import tempfile
from pathlib import Path

import fashionlab as fl

CHROMIUM = "/usr/lib/chromium/chromium"


def main() -> None:
    run, out = fl.Run.open(sys.argv[1]), Path(sys.argv[2])
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as scratch, sync_playwright() as playwright:
        page_file = Path(scratch) / "card.html"
        page_file.write_text(f"<!doctype html><meta charset='utf-8'><body style='margin: 12px; background: #f7f7f7'>"
                             f"<pre style='font-size: 13px'>{repr(run)}</pre>{run._repr_html_()}</body>",
                             encoding="utf-8")
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 820, "height": 600})
        page.goto(page_file.as_uri())
        page.screenshot(path=out, full_page=True)
        browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
