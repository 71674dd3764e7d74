"""Readers for produced files: PNG checks and an HTML parser for reports."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image


def assert_png(source: Path | bytes, min_width: int = 300, min_height: int = 200) -> None:
    """A valid PNG of a sensible size, decoded in full."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(stream) as image:
        assert image.format == "PNG"
        image.load()
        assert image.size[0] >= min_width and image.size[1] >= min_height, image.size


class Page(HTMLParser):
    """Images, tables (as lists of rows of cell texts) and headings of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.headings: list[str] = []
        self.external: list[str] = []
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("href", "src"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("h1", "h2"):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag in ("h1", "h2") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._heading is not None:
            self._heading.append(data)


def assert_self_contained(path: Path) -> Page:
    """Every image embedded as a decodable PNG, every table filled, nothing fetched from outside."""
    page = Page(path.read_text(encoding="utf-8"))
    assert page.images, "no images"
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert_png(base64.b64decode(src.split(",", 1)[1]), min_width=100, min_height=50)
    assert not page.external
    assert page.tables
    for table in page.tables:
        body = [row for row in table if row]
        assert len(body) >= 2, "a table without data rows"
        assert all(any(cell for cell in row) for row in body)
    return page
