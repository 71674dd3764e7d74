"""The README (English and Chinese) and docs/*.md, read back: every relative link and #anchor they hold
leads somewhere, each README starts with `make demo` and `make test` and links the other, and the recipe
table names the recipes the package ships."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([*ROOT.glob("README*.md"), *(ROOT / "docs").glob("*.md")])

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")


def unfenced(text: str) -> str:
    """The text outside fenced code blocks, where headings live."""
    return re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.M | re.S)


def prose(text: str) -> str:
    """The text outside code blocks and inline code, where links live."""
    return re.sub(r"(`+).+?\1", "", unfenced(text))


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as dashes,
    a repeated heading numbered (-1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", unfenced(text), flags=re.M):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` whose file is missing, or whose #anchor no heading of its target has."""
    problems = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not this repository's
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            problems.append(f"{page.name}: {target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination.read_text(encoding="utf-8")):
            problems.append(f"{page.name}: {target}: no heading with that anchor")
    return problems


def test_the_pages_are_found():
    names = {page.relative_to(ROOT).as_posix() for page in PAGES}
    assert {"README.md", "README.zh-CN.md", "docs/recipes-and-ladder.md", "docs/speed.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## On a GPU\n\n## On a GPU\n", encoding="utf-8")
    (tmp_path / "page.md").write_text(
        "# Start here\n\n```sh\n# not a heading [nor](a-link.md)\n```\n\n"
        "[ok](other.md#on-a-gpu) [ok](other.md#on-a-gpu-1) [ok](#start-here) [ok](https://example.org/x.md)\n"
        "[file](missing.md) [anchor](other.md#on-a-cpu) [third](other.md#on-a-gpu-2) [here](#not-a-heading)\n"
        "![image](missing.png) `[code](not-checked.md)`\n", encoding="utf-8")
    assert broken_links(tmp_path / "page.md") == [
        "page.md: missing.md: no such file", "page.md: other.md#on-a-cpu: no heading with that anchor",
        "page.md: other.md#on-a-gpu-2: no heading with that anchor",
        "page.md: #not-a-heading: no heading with that anchor", "page.md: missing.png: no such file"]


def test_anchors_follow_githubs_rules_for_punctuation_and_chinese():
    text = ("# From the tutorial to a good classifier: recipes and the ladder\n"
            "## 哪个配方适合我？\n## `fast-mlp` (2 s)\n")
    assert anchors(text) == {"from-the-tutorial-to-a-good-classifier-recipes-and-the-ladder", "哪个配方适合我",
                             "fast-mlp-2-s"}


@pytest.mark.parametrize("name, other", [("README.md", "README.zh-CN.md"), ("README.zh-CN.md", "README.md")])
def test_each_readme_starts_with_make_demo_and_make_test_and_links_the_other(name, other):
    text = (ROOT / name).read_text(encoding="utf-8")
    commands = re.findall(r"^make \w+", text, flags=re.M)
    assert commands[:2] == ["make demo", "make test"]
    first_screen = text.splitlines()[:40]
    assert any(f"]({other})" in line for line in first_screen[:5])
    assert any(line.startswith("make demo") for line in first_screen)


def test_the_recipe_table_names_every_shipped_recipe_with_its_measured_figures():
    from fashionlab import recipes

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("## Which recipe should I pick"):]
    table = table[:table.index("\n\n", table.index("|"))]
    lines = [line for line in table.splitlines() if line.startswith("|")][2:]  # below the header and its rule
    rows = {re.search(r"`([\w-]+)`", row).group(1): row for row in lines}
    assert set(rows) == set(recipes.names())
    for name in recipes.names():
        recipe = recipes.get(name)
        measured = recipe.measured or recipe.measured_gpu
        cells = [cell.strip() for cell in rows[name].strip("|").split("|")]
        shown = float(re.match(r"(\d+\.\d) %", cells[2]).group(1))  # to one decimal
        assert abs(shown - 100 * measured["test_accuracy_mean"]) <= 0.05 + 1e-9, name
        gpu = recipe.measured_gpu
        assert cells[-1] == "not measured" if gpu is None else f"{round(gpu['seconds'])} s" in cells[-1], name
        assert ("not measured" in cells[-2]) == (recipe.measured is None), name
