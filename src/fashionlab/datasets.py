"""A data set as a value: its name, its classes, where its official files come from and how they
are checked, and what holds for its images. Everything downstream (the model's last layer, the
reports, predictions, the page, an ONNX file's metadata) takes its classes from here, through the
run that was trained on it.

    dataset = resolve("fashion-mnist")    # a built-in, or a folder: four IDX files and classes.txt
    dataset.class_names, dataset.classes  # ("T-shirt/top", ...), 10

A folder of your own is a data set when it holds the four IDX files (train-images-idx3-ubyte,
train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each maybe .gz) of
28 x 28 images, and `classes.txt`: one class name a line, in label order, 2 to 256 of them (an
IDX label is one byte).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

from fashionlab.errors import ConfigError, DataError

FILE_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CLASSES_FILE = "classes.txt"
MIN_CLASSES, MAX_CLASSES = 2, 256  # an IDX label file holds unsigned bytes: 256 labels at most
MAX_NAME_CHARACTERS = 64
MAX_CLASSES_FILE_BYTES = 128 * 1024


@dataclass(frozen=True)
class Dataset:
    """A data set of 28 x 28 grey images, each of one of `class_names` (labels 0..classes-1)."""

    name: str  # "fashion-mnist", or a folder's name
    title: str  # how messages name it
    class_names: tuple[str, ...]
    sha256: tuple[str, ...] = ()  # of the decompressed files, in FILE_NAMES order; () when none is official
    gz_sha256: tuple[str, ...] = ()  # of the .gz files as published, in FILE_NAMES order; () when none is
    url: str | None = None  # where `fashionlab data download` fetches the four .gz files
    folder: Path | None = None  # a data set of your own: where its files are
    debian_dir: Path | None = None  # where a Debian package installs it
    debian_package: str | None = None
    subject: str = "image"  # what one image shows: "garment", "digit"...
    mirror_turned: bool = False  # its shoes all face one way: a photo turned the other way is also read mirrored
    facing: tuple[str, ...] = ()  # the classes that face one way (its shoes): a mirrored reading is kept only as one
    upright: bool = False  # its images are all upright, and an orientation check fitted on them ships (orientation.py)

    @property
    def classes(self) -> int:
        return len(self.class_names)

    def digest(self, file: str) -> str | None:
        """The official SHA-256 of one of FILE_NAMES, decompressed; None when there is none."""
        return dict(zip(FILE_NAMES, self.sha256)).get(file)

    def gz_digest(self, file: str) -> str | None:
        """The published SHA-256 of one of FILE_NAMES as its .gz file; None when there is none."""
        return dict(zip(FILE_NAMES, self.gz_sha256)).get(file)

    @property
    def label(self) -> str:
        """How it is named where others see it (a served API, an exported file): a built-in's title,
        a folder's name, never the folder's path on this machine."""
        return self.title if self.folder is None else self.name

    @property
    def verifiable(self) -> bool:
        """Whether its files have digests to be checked against."""
        return bool(self.sha256 or self.gz_sha256)


FASHION_MNIST = Dataset(
    name="fashion-mnist",
    title="Fashion-MNIST",
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
    # decompressed: gzip copies made by other tools (Debian's) differ as .gz but not inside
    sha256=("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    url="https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    debian_dir=Path("/usr/share/datasets/fashion-mnist"),
    debian_package="dataset-fashion-mnist",
    subject="garment",
    mirror_turned=True,
    facing=("Sandal", "Sneaker", "Ankle boot"),
    upright=True,
)
MNIST = Dataset(
    name="mnist",
    title="MNIST",
    class_names=tuple(str(digit) for digit in range(10)),
    sha256=("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    gz_sha256=("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
               "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
               "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
               "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    url="https://storage.googleapis.com/cvdf-datasets/mnist/",  # LeCun's files, mirrored
    subject="digit",
)
# Kuzushiji-MNIST (Clanuwat et al., 2018; CC BY-SA 4.0): ten cursive hiragana, named in romaji
# (kmnist_classmap.csv: お き す つ な は ま や れ を). Only its .gz files have published digests.
KMNIST = Dataset(
    name="kmnist",
    title="Kuzushiji-MNIST",
    class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    gz_sha256=("51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
               "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
               "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
               "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c"),
    url="https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
    subject="character",
)
BUILT_IN = {dataset.name: dataset for dataset in (FASHION_MNIST, MNIST, KMNIST)}


def record(dataset: Dataset, sha256: dict[str, str] | None = None) -> dict:
    """What a run keeps of its data set in run.json (records.DatasetRecord): `sha256` are the
    digests of the files it was trained on, kept for a data set of your own."""
    kept: dict = {"name": dataset.name, "class_names": list(dataset.class_names)}
    if dataset.folder is not None:
        kept |= {"folder": str(dataset.folder), "sha256": dict(sha256 or {})}
    return kept


def from_record(kept: dict, origin: str) -> Dataset:
    """The data set a run.json record names (`record`): a built-in, checked to be the one it was,
    or a folder of your own whose files must still have the digests they had (`verify`)."""
    names = parse_class_names("\n".join(kept["class_names"]), f"{origin}'s dataset.class_names")
    if kept.get("folder") is None:
        built = BUILT_IN.get(kept["name"])
        if built is None or built.class_names != names:
            raise DataError(f"{origin} names the data set {kept['name']!r} with classes this fashionlab does not "
                            f"know; it was trained by another version, or the file was edited")
        return built
    digests = kept.get("sha256") or {}
    folder = Path(kept["folder"])
    return Dataset(name=kept["name"], title=f"the data set in {folder}", class_names=names, folder=folder,
                   sha256=tuple(digests[f] for f in FILE_NAMES) if all(f in digests for f in FILE_NAMES) else ())


def dataset_problem(value: str) -> str | None:
    """What is wrong with a `dataset` setting, without touching the disk: a built-in's name, or a
    folder given as a path (with a /, e.g. ./letters); None when nothing is."""
    if value in BUILT_IN or "/" in value and value.strip():
        return None
    return (f"dataset must be a built-in data set ({', '.join(BUILT_IN)}) or a folder given as a path with a / "
            f"(e.g. ./{value.strip() or 'letters'}), got {value!r}")


def resolve(value: str) -> Dataset:
    """The data set a `dataset` setting names: a built-in, or the folder it gives (`from_folder`)."""
    problem = dataset_problem(value)
    if problem:
        raise ConfigError(problem, terms=["dataset"])
    return BUILT_IN.get(value) or from_folder(Path(value))


def from_folder(folder: Path) -> Dataset:
    """A data set of your own: the folder's classes.txt names its classes (see the module's doc);
    its files are checked when they are read."""
    from fashionlab.files import read_text
    from fashionlab.records import shown

    try:
        is_folder, exists, folder = folder.is_dir(), folder.exists(), folder.resolve()
    except (OSError, RuntimeError) as exc:  # a name too long, a loop of links
        why = getattr(exc, "strerror", None) or exc
        raise DataError(f"cannot use {shown(str(folder))} as a data set folder ({why}); give a folder holding the "
                        f"four IDX files and {CLASSES_FILE}", terms=["dataset"]) from None
    if not is_folder:
        raise DataError(f"the data set folder {folder} {'is not a folder' if exists else 'does not exist'}; "
                        f"give a folder holding the four IDX files and {CLASSES_FILE}", terms=["dataset"])
    path = folder / CLASSES_FILE
    if not path.exists():
        raise DataError(f"{folder} has no {CLASSES_FILE}; write one class name a line, in label order (label 0 "
                        f"first), beside the four IDX files", terms=["dataset"])
    text = read_text(path, what="class list", error=DataError, limit=MAX_CLASSES_FILE_BYTES)
    name = folder.name or "data"
    return Dataset(name=name, title=f"the data set in {folder}", class_names=parse_class_names(text, str(path)),
                   folder=folder)


def parse_class_names(text: str, origin: str) -> tuple[str, ...]:
    """One class name a line (lines end at a newline alone), in label order: 2 to MAX_CLASSES, each
    1 to MAX_NAME_CHARACTERS printable characters with at least one that shows, none twice once
    written the same way (Unicode NFC). A byte order mark, CRLF line ends, blanks around a name and
    empty lines at the end are allowed."""
    lines = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    names = tuple(unicodedata.normalize("NFC", line.strip()) for line in lines)

    def refuse(problem: str) -> DataError:
        return DataError(f"{origin} {problem}; write one class name a line, in label order", terms=["dataset"])

    if not MIN_CLASSES <= len(names) <= MAX_CLASSES:
        raise refuse(f"names {len(names):,} classes; a data set has {MIN_CLASSES} to {MAX_CLASSES:,}")
    for number, name in enumerate(names, 1):
        if not name:
            raise refuse(f"has an empty line {number}")
        if len(name) > MAX_NAME_CHARACTERS or not name.isprintable() or not any(map(_shows, name)):
            raise refuse(f"line {number} is not a name of 1 to {MAX_NAME_CHARACTERS} printable characters, one that "
                         f"shows at least")
    seen: dict[str, int] = {}
    for number, name in enumerate(names, 1):
        if name in seen:
            raise refuse(f"names {name!r} twice (lines {seen[name]} and {number})")
        seen[name] = number
    return names


# Hangul fillers and the blank Braille cell: letters and symbols that show nothing
BLANKS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}


def _shows(character: str) -> bool:
    """Whether a character leaves a mark: not a space, not a mark on another character, not a filler."""
    return not character.isspace() and unicodedata.category(character)[0] != "M" and character not in BLANKS
