"""A data set as a value: the built-in Fashion-MNIST, and a folder of your own named by its classes.txt."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from helpers import synthetic_arrays, write_dataset

from fashionlab import CLASS_NAMES
from fashionlab.data import read_bytes
from fashionlab.datasets import (
    BUILT_IN,
    FASHION_MNIST,
    FILE_NAMES,
    MAX_CLASSES,
    dataset_problem,
    from_folder,
    from_record,
    parse_class_names,
    record,
    resolve,
)
from fashionlab.errors import ConfigError, DataError

SEVEN = ("zero", "one", "two", "three", "four", "five", "six")


def test_fashion_mnist_is_the_default_and_its_digests_are_the_installed_files(real_data):
    assert resolve("fashion-mnist") is FASHION_MNIST and CLASS_NAMES == FASHION_MNIST.class_names
    assert FASHION_MNIST.classes == 10 and FASHION_MNIST.class_names[9] == "Ankle boot"
    assert FASHION_MNIST.mirror_turned and FASHION_MNIST.subject == "garment"
    for name in FILE_NAMES:  # the files Debian installs, decompressed
        content = read_bytes(real_data.locate() / f"{name}.gz")
        assert hashlib.sha256(content).hexdigest() == FASHION_MNIST.digest(name)


def test_a_folder_with_its_class_names_is_a_data_set(tmp_path):
    folder = write_dataset(tmp_path / "seven", synthetic_arrays())
    (folder / "classes.txt").write_text("\ufeff" + "\r\n".join(SEVEN) + "\r\n\r\n")
    dataset = resolve(str(folder))
    assert dataset.class_names == SEVEN and dataset.classes == 7 and dataset.folder == folder
    assert dataset.name == "seven" and dataset.sha256 == () and dataset.digest(FILE_NAMES[0]) is None
    assert not dataset.mirror_turned


@pytest.mark.parametrize(("text", "said"), [
    ("only\n", "names 1 classes; a data set has 2 to 256"),
    ("".join(f"c{i}\n" for i in range(MAX_CLASSES + 1)), "names 257 classes"),
    ("a\n\nb\n", "has an empty line 2"),
    ("a\n" + "x" * 65 + "\n", "line 2 is not a name of 1 to 64 printable characters"),
    ("a\nb\x00c\n", "line 2 is not a name"),
    ("cat\ndog\ncat\n", "names 'cat' twice \\(lines 1 and 3\\)"),
    ("a\x0bb\nc\n", "line 1 is not a name"),  # a line ends at a newline alone: a vertical tab is in a name
    ("x\na\x1cb\x1dc\n", "line 2 is not a name"),
    ("x\na\x85b\u2028c\n", "line 2 is not a name"),
    ("caf\u00e9\ncafe\u0301\n", "names 'café' twice \\(lines 1 and 2\\)"),  # the same once written alike
    ("a\n\u3164\n", "line 2 is not a name of 1 to 64 printable characters, one that shows at least"),
    ("a\n\u2800\n", "line 2 is not a name"),
    ("a\n\u0301\n", "line 2 is not a name"),
])
def test_a_class_list_that_cannot_name_the_labels_is_refused_in_one_line(text, said):
    with pytest.raises(DataError, match=f"^classes.txt {said}.*; write one class name a line, in label order$"):
        parse_class_names(text, "classes.txt")


def test_a_folder_that_is_not_a_data_set_says_what_it_lacks(tmp_path):
    with pytest.raises(DataError, match="does not exist; give a folder holding the four IDX files and classes.txt"):
        from_folder(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        from_folder(tmp_path / "file")
    with pytest.raises(DataError, match="has no classes.txt; write one class name a line, in label order"):
        from_folder(tmp_path)
    (tmp_path / "classes.txt").write_bytes(b"\xff\xfe" + "a\nb\n".encode("utf-16-le"))
    with pytest.raises(DataError, match="is not UTF-8 text"):
        from_folder(tmp_path)
    with pytest.raises(DataError, match=r"^cannot use '/x/aaaaa.*\.\.\. as a data set folder \(File name too long\)"):
        from_folder(Path("/x/" + "a" * 5000))


def test_a_folder_is_kept_in_full_whatever_the_working_folder(tmp_path, monkeypatch):
    folder = write_dataset(tmp_path / "seven", synthetic_arrays())
    (folder / "classes.txt").write_text("\n".join(SEVEN))
    monkeypatch.chdir(tmp_path)
    dataset = resolve("./seven")
    assert dataset.folder == folder and dataset.folder.is_absolute() and dataset.name == "seven"
    assert record(dataset)["folder"] == str(folder) and dataset.label == "seven"
    assert FASHION_MNIST.label == "Fashion-MNIST"


@pytest.mark.parametrize("value", ["mnist-typo", "", "fashion", "FASHION-MNIST", "  "])
def test_a_dataset_setting_is_a_built_in_name_or_a_path(value):
    assert dataset_problem(value) is not None
    with pytest.raises(ConfigError, match="^dataset must be a built-in data set \\(fashion-mnist, mnist, kmnist\\) "
                                          "or a folder"):
        resolve(value)


def test_every_built_in_has_its_classes_digests_and_source():
    for name, dataset in BUILT_IN.items():
        assert dataset.name == name and dataset_problem(name) is None
        assert 2 <= dataset.classes <= MAX_CLASSES and len(set(dataset.class_names)) == dataset.classes
        assert dataset.url and dataset.url.startswith("https://") and dataset.verifiable
        for digests in (dataset.sha256, dataset.gz_sha256):
            assert len(digests) in (0, len(FILE_NAMES)) and all(len(d) == 64 and int(d, 16) >= 0 for d in digests)
            assert len(set(digests)) == len(digests)
    assert [d.name for d in BUILT_IN.values()] == ["fashion-mnist", "mnist", "kmnist"]
    assert BUILT_IN["mnist"].class_names == tuple("0123456789") and BUILT_IN["kmnist"].classes == 10
    assert [d.name for d in BUILT_IN.values() if d.mirror_turned] == ["fashion-mnist"]  # only its shoes face left


def test_a_run_keeps_its_data_set_and_gets_it_back(tmp_path):
    folder = write_dataset(tmp_path / "seven", synthetic_arrays())
    (folder / "classes.txt").write_text("\n".join(SEVEN))
    digests = {name: f"{i:064x}" for i, name in enumerate(FILE_NAMES)}
    own = from_record(record(resolve(str(folder)), digests), "run.json")
    assert own.class_names == SEVEN and own.folder == folder and own.sha256 == tuple(digests.values())
    assert from_record(record(FASHION_MNIST), "run.json") is FASHION_MNIST
    assert record(FASHION_MNIST) == {"name": "fashion-mnist", "class_names": list(CLASS_NAMES)}  # no folder, no digests
    for kept in ({"name": "fashion-mnist", "class_names": list(SEVEN)}, {"name": "emnist", "class_names": list(SEVEN)}):
        with pytest.raises(DataError, match="names the data set .* with classes this fashionlab does not know"):
            from_record(kept, "run.json")
    with pytest.raises(DataError, match="dataset.class_names names 'one' twice"):
        from_record({"name": "x", "class_names": ["one", "one"], "folder": str(folder)}, "run.json")


def test_a_run_records_fashion_mnist_and_one_made_before_data_sets_were_recorded_is_it(tiny_run, tmp_path):
    import json
    import shutil

    from fashionlab.rundir import Run

    assert Run(tiny_run.run.path).status()["dataset"] == {"name": "fashion-mnist", "class_names": list(CLASS_NAMES)}
    older = shutil.copytree(tiny_run.run.path, tmp_path / "older")
    status = json.loads((older / "run.json").read_text())
    del status["dataset"]
    (older / "run.json").write_text(json.dumps(status))
    assert Run(older).dataset() is FASHION_MNIST
