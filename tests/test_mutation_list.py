"""The mutation list (scripts/mutants.py) follows the code it plants bugs in: each mutant names a
module that exists, its text occurs there exactly once, and tests mirror that module."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_mutants():
    spec = importlib.util.spec_from_file_location("mutants", ROOT / "scripts" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


MUTANTS = load_mutants()


def test_mutant_ids_are_unique():
    ids = [m.id for m in MUTANTS.MUTANTS]
    assert len(ids) == len(set(ids)), sorted(i for i in set(ids) if ids.count(i) > 1)


@pytest.mark.parametrize("mutant", MUTANTS.MUTANTS, ids=lambda m: m.id)
def test_each_mutant_changes_one_place_of_a_module_with_tests(mutant):
    source = ROOT / "src" / "fashionlab" / mutant.module
    assert source.is_file(), f"{mutant.id} names {mutant.module}, which does not exist"
    text = source.read_text(encoding="utf-8")
    assert text.count(mutant.old) == 1, f"{mutant.id}: its text is not in {mutant.module} exactly once"
    assert mutant.new != mutant.old
    assert mutant.own_tests() is not None, f"no tests mirror {mutant.module}"


def test_own_tests_mirror_modules_and_fall_back_to_their_package(tmp_path):
    (tmp_path / "tests").mkdir()
    for name in ("test_prediction.py", "test_serve.py", "test_serve_app.py"):
        (tmp_path / "tests" / name).write_text("")
    mutant = MUTANTS.Mutant
    assert mutant("a", "prediction.py", "x", "y", "").own_tests(tmp_path) == "tests/test_prediction.py"
    assert mutant("a", "serve/app.py", "x", "y", "").own_tests(tmp_path) == "tests/test_serve_app.py"
    assert mutant("a", "serve/limits.py", "x", "y", "").own_tests(tmp_path) == "tests/test_serve.py"
    assert mutant("a", "sweeps/space.py", "x", "y", "").own_tests(tmp_path) is None
