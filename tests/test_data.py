import dataclasses
import functools
import gzip
import hashlib
import http.server
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import idx_bytes, replace_file, synthetic_arrays, write_dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fashionlab import data
from fashionlab.data import DataSource
from fashionlab.datasets import FASHION_MNIST, KMNIST, MNIST
from fashionlab.errors import DataError, Interrupted


def test_reads_gzip_and_plain_files_alike(tmp_path):
    arrays = synthetic_arrays(n_train=80, n_test=20)
    gz = data.load_arrays(write_dataset(tmp_path / "gz", arrays), verify=False)
    plain = data.load_arrays(write_dataset(tmp_path / "plain", arrays, compress=False), verify=False)
    for name, expected in arrays.items():
        np.testing.assert_array_equal(gz[name], expected)
        np.testing.assert_array_equal(plain[name], expected)


def test_split_holds_out_the_first_images_for_validation(synthetic):
    arrays = synthetic_arrays()
    splits = synthetic.splits(validation_size=50, train_samples=100)
    np.testing.assert_array_equal(splits.x_valid, arrays["train-images-idx3-ubyte"][:50])
    np.testing.assert_array_equal(splits.y_valid, arrays["train-labels-idx1-ubyte"][:50])
    np.testing.assert_array_equal(splits.x_train, arrays["train-images-idx3-ubyte"][50:150])
    np.testing.assert_array_equal(splits.y_train, arrays["train-labels-idx1-ubyte"][50:150])
    np.testing.assert_array_equal(splits.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert len(synthetic.splits(validation_size=50).x_train) == 310  # train_samples 0: all the rest


def test_a_data_source_pins_the_folder_it_found(tmp_path, monkeypatch, synthetic_dir):
    monkeypatch.setenv("FASHIONLAB_DATA", str(synthetic_dir))
    pinned = DataSource(verify=False).located()
    monkeypatch.setenv("FASHIONLAB_DATA", str(tmp_path / "elsewhere"))
    assert pinned.data_dir == synthetic_dir and pinned.verify is False
    assert len(pinned.test_images()) == 100
    with pytest.raises(DataError, match="FASHIONLAB_DATA"):
        DataSource(verify=False).locate()


def test_synthetic_files_fail_the_official_hash_check(synthetic_dir):
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        data.load_arrays(synthetic_dir)


IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


@pytest.mark.parametrize("name, make, message", [
    (IMAGES, lambda a: idx_bytes(a[IMAGES])[:-5], "truncated or padded"),
    (IMAGES, lambda a: idx_bytes(a[IMAGES]) + b"\0", "truncated or padded"),
    (IMAGES, lambda a: idx_bytes(a[IMAGES], magic=2049), "IDX magic 2049, expected 2051"),
    (LABELS, lambda a: idx_bytes(a[LABELS], magic=2051), "IDX magic 2051, expected 2049"),
    (IMAGES, lambda a: idx_bytes(a[IMAGES].reshape(-1, 14, 56)), "14x56 images; fashionlab reads 28 x 28"),
    (LABELS, lambda a: idx_bytes(np.full(360, 10, np.uint8)), "label 10, outside 0..9"),
    (LABELS, lambda a: idx_bytes(a[LABELS][:-1]), "360 images but 359 labels"),
    (LABELS, lambda a: b"\0\0", "too short for an IDX labels header"),
])
def test_corrupt_files_are_refused(synthetic_dir, name, make, message):
    replace_file(synthetic_dir, f"{name}.gz", gzip.compress(make(synthetic_arrays())))
    with pytest.raises(DataError) as info:
        data.load_arrays(synthetic_dir, verify=False)
    assert message in str(info.value)


def test_truncated_gzip_is_refused(synthetic_dir):
    path = synthetic_dir / f"{IMAGES}.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="damaged gzip"):
        data.load_arrays(synthetic_dir, verify=False)


def test_decompression_bomb_is_capped(synthetic_dir, monkeypatch):
    monkeypatch.setattr(data, "MAX_DECOMPRESSED_BYTES", 100_000)
    replace_file(synthetic_dir, f"{IMAGES}.gz", gzip.compress(b"\0" * 200_000))
    with pytest.raises(DataError, match="decompresses to more than 100000 bytes"):
        data.load_arrays(synthetic_dir, verify=False)


def test_lookup_order_and_an_explicit_choice_is_never_passed_over(tmp_path, monkeypatch, synthetic_dir):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("FASHIONLAB_DATA", raising=False)
    cache = write_dataset(tmp_path / "keras" / "datasets" / "fashion-mnist")
    assert data.find_data_dir() == cache
    monkeypatch.setenv("FASHIONLAB_DATA", str(synthetic_dir))
    assert data.find_data_dir() == synthetic_dir
    assert data.find_data_dir(cache) == cache
    with pytest.raises(DataError, match="`data_dir` .*empty lacks train-images-idx3-ubyte"):
        data.find_data_dir(tmp_path / "empty")


def test_nothing_found_names_the_ways_to_get_data(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("FASHIONLAB_DATA", raising=False)
    with pytest.raises(DataError) as info:
        data.find_data_dir(dataset=dataclasses.replace(FASHION_MNIST, debian_dir=tmp_path / "none"))
    for way in ("apt-get install dataset-fashion-mnist", "fashionlab data download", "`data_dir`"):
        assert way in str(info.value)


def test_download_from_a_mirror_verifies_and_installs(tmp_path, real_data):
    dest = data.download(tmp_path / "cache", url=real_data.data_dir.as_uri())
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.gz" for n in data.FILE_NAMES)
    assert data.has_dataset(dest)


def test_download_failure_writes_nothing(tmp_path, synthetic_dir):
    with pytest.raises(DataError, match="cannot download .*check the network and `url`"):
        data.download(tmp_path / "a" / "b" / "c", url=(tmp_path / "no-such-mirror").as_uri())
    assert not (tmp_path / "a").exists()  # every folder it made is gone again
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is not the official .*SHA-256 mismatch"):
        data.download(tmp_path / "b", url=synthetic_dir.as_uri())
    assert list((tmp_path / "b").iterdir()) == []
    damaged = synthetic_dir / "train-images-idx3-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:100])  # a mirror serving a truncated file
    with pytest.raises(DataError, match="SHA-256 mismatch.*faithful mirror"):
        data.download(tmp_path / "b", url=synthetic_dir.as_uri())
    assert list((tmp_path / "b").iterdir()) == []


def test_download_stops_at_the_size_cap(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with open(mirror / "train-images-idx3-ubyte.gz", "wb") as f:
        f.truncate(data.MAX_DOWNLOAD_BYTES + 1)  # endless, as far as a download can tell
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is larger than 33,554,432 bytes, far more"):
        data.download(tmp_path / "dest", url=mirror.as_uri())
    assert not (tmp_path / "dest").exists()


@pytest.mark.realdata
def test_real_dataset_shapes_hashes_and_split(real_data):
    for name in data.FILE_NAMES:
        digest = FASHION_MNIST.digest(name)
        path = next(p for p in (real_data.data_dir / f"{name}.gz", real_data.data_dir / name) if p.exists())
        assert hashlib.sha256(data.read_bytes(path)).hexdigest() == digest
    splits = real_data.splits()
    assert splits.x_train.shape == (55000, 28, 28) and splits.y_train.shape == (55000,)
    assert splits.x_valid.shape == (5000, 28, 28) and splits.y_valid.shape == (5000,)
    assert splits.x_test.shape == (10000, 28, 28) and splits.y_test.shape == (10000,)
    assert (splits.x_train.min(), splits.x_train.max()) == (0, 255)
    assert np.bincount(splits.y_test).tolist() == [1000] * 10
    text = data.describe(splits)
    assert "Ankle boot" in text and "(55000, 28, 28)" in text


# --- fuzzing: whatever the bytes, the parser answers with arrays or a DataError ----------------
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_parse(content: bytes, kind: str) -> None:
    try:
        array = data.parse_idx(content, kind)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    assert array.dtype == np.uint8
    assert array.shape[1:] == ((28, 28) if kind == "images" else ())
    if kind == "labels":
        assert array.size == 0 or array.max() <= 9


@FUZZ
@given(st.binary(max_size=4096), st.sampled_from(["images", "labels"]))
def test_fuzz_parse_idx_arbitrary_bytes(content, kind):
    check_parse(content, kind)


@FUZZ
@given(st.sampled_from([2049, 2051]), st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3),
       st.binary(max_size=3200), st.sampled_from(["images", "labels"]))
def test_fuzz_parse_idx_plausible_headers(magic, dims, body, kind):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    check_parse(header + body, kind)


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_read_bytes_on_damaged_gzip(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "f.gz"
    valid = gzip.compress(idx_bytes(np.zeros(3, np.uint8)))
    path.write_bytes(valid[:10] + content)  # a real gzip header, then anything
    try:
        data.read_bytes(path)
    except DataError as exc:
        assert "\n" not in str(exc)


@pytest.fixture
def trickling_server():
    """A loopback HTTP server that answers every request with a header, then one byte every 0.2 s."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not done.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                continue
            threading.Thread(target=trickle, args=(client,), daemon=True).start()

    def trickle(client):
        with client:
            client.recv(4096)
            client.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
            while not done.is_set():
                try:
                    client.sendall(b"x")
                except OSError:
                    return
                time.sleep(0.2)

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    done.set()
    server.close()


def test_a_stalled_download_is_given_up(tmp_path, trickling_server):
    def endless(signum, frame):
        raise TimeoutError("the download went on and on")

    previous = signal.signal(signal.SIGALRM, endless)
    signal.alarm(30)
    try:
        with pytest.raises(DataError, match=r"\(less than 1,024 bytes a second\); check the network and `url`"):
            data.download(tmp_path / "dest", url=trickling_server, timeout=1.0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not (tmp_path / "dest").exists()


def test_ctrl_c_stops_a_download_at_once_whatever_the_server_does(tmp_path, trickling_server):
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    started = time.monotonic()
    with pytest.raises(Interrupted, match="download interrupted; nothing was kept"):
        data.download(tmp_path / "dest", url=trickling_server, timeout=60.0)
    assert time.monotonic() - started < 10
    assert not (tmp_path / "dest").exists()


def test_a_file_of_no_items_is_refused(tmp_path):
    arrays = synthetic_arrays()
    arrays["t10k-images-idx3-ubyte"] = arrays["t10k-images-idx3-ubyte"][:0]
    arrays["t10k-labels-idx1-ubyte"] = arrays["t10k-labels-idx1-ubyte"][:0]
    directory = write_dataset(tmp_path / "d", arrays)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte holds no items"):
        DataSource(directory, verify=False).splits(60)


def test_labels_are_checked_against_the_data_sets_own_class_count():
    labels = idx_bytes(np.array([0, 6, 3], np.uint8))
    assert list(data.parse_idx(labels, "labels", "seven", classes=7)) == [0, 6, 3]
    with pytest.raises(DataError, match="seven has label 6, outside 0..5 \\(the data set.s 6 classes\\); name every"):
        data.parse_idx(labels, "labels", "seven", classes=6)


def test_describe_counts_each_of_the_data_sets_classes_by_name():
    arrays = synthetic_arrays()
    splits = data.split_arrays({k: v if "labels" not in k else v % 7 for k, v in arrays.items()}, 60, 0,
                               source=Path("seven"))
    text = data.describe(splits, [f"kind {i}" for i in range(7)])
    assert "6 kind 6" in text and "7 kind" not in text and "Ankle boot" not in text


def test_a_folder_data_set_is_read_from_its_folder_with_its_own_class_count(tmp_path):
    from fashionlab.datasets import resolve

    arrays = synthetic_arrays()
    seven = {k: v % 7 if "labels" in k else v for k, v in arrays.items()}
    folder = write_dataset(tmp_path / "seven", seven)
    (folder / "classes.txt").write_text("\n".join(f"kind {i}" for i in range(7)))
    source = DataSource(dataset=resolve(str(folder)))  # verify stays on: a folder has no official digests
    splits = source.splits(validation_size=60)
    assert source.locate() == folder and set(splits.y_train) | set(splits.y_test) == set(range(7))
    assert source.located().dataset is source.dataset
    write_dataset(folder, arrays)  # labels 0..9 now: outside the folder's seven classes
    with pytest.raises(DataError, match="has label 9, outside 0..6 \\(the data set.s 7 classes\\)"):
        source.splits(validation_size=60)
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=f"lacks t10k-images-idx3-ubyte.*put the four .* beside {folder}/classes.txt"):
        source.splits(validation_size=60)


def test_a_built_in_other_than_fashion_mnist_has_a_cache_folder_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("FASHIONLAB_DATA", str(tmp_path / "fashion"))  # Fashion-MNIST's setting: not for others
    other = dataclasses.replace(FASHION_MNIST, name="other", title="Other", debian_dir=None)
    assert [d for _, d in data.candidate_dirs(dataset=other)] == [tmp_path / "datasets" / "other"]
    with pytest.raises(DataError, match=f"^Other not found in {tmp_path}/datasets/other; get the Other files one of 2"):
        data.find_data_dir(dataset=other)


# --- the other built-ins: their files are downloaded and verified by their own digests ---


@pytest.fixture
def mirror(tmp_path):
    """A loopback HTTP server serving the folder `mirror/`; `.requested` lists the paths asked for."""
    root = tmp_path / "mirror"
    root.mkdir()
    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requested.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.root, server.requested = root, requested
    server.url = f"http://127.0.0.1:{server.server_address[1]}/"
    yield server
    server.shutdown()
    server.server_close()


def gz_digests(folder):
    return tuple(hashlib.sha256((folder / f"{name}.gz").read_bytes()).hexdigest() for name in data.FILE_NAMES)


def test_kmnist_is_downloaded_from_a_server_into_its_own_folder_and_checked_by_its_gz_digests(
        tmp_path, mirror, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    write_dataset(mirror.root / "kmnist")
    with pytest.raises(DataError, match=r"kmnist/train-images-idx3-ubyte.gz is not the official Kuzushiji-MNIST "
                                        r"train-images-idx3-ubyte.gz \(SHA-256 mismatch\)"):
        data.download(url=f"{mirror.url}kmnist/", dataset=KMNIST)
    assert not (tmp_path / "keras").exists()  # nothing kept of a download that failed
    assert mirror.requested == ["/kmnist/train-images-idx3-ubyte.gz"]
    # The same download, with these files' digests as the published ones: fetched, verified, read.
    served = dataclasses.replace(KMNIST, gz_sha256=gz_digests(mirror.root / "kmnist"))
    dest = data.download(url=f"{mirror.url}kmnist/", dataset=served)
    assert dest == tmp_path / "keras" / "datasets" / "kmnist"
    assert sorted(mirror.requested[1:]) == sorted(f"/kmnist/{name}.gz" for name in data.FILE_NAMES)
    assert gz_digests(dest) == served.gz_sha256
    assert len(DataSource(dataset=served).splits(validation_size=10).x_train) == len(synthetic_arrays()[
        "train-images-idx3-ubyte"]) - 10
    with pytest.raises(DataError, match="not the official Kuzushiji-MNIST"):
        DataSource(dataset=KMNIST).splits(validation_size=10)  # the real digests: these are not its files


def test_a_file_with_only_published_gz_digests_is_checked_as_gz_and_cannot_be_checked_unpacked(tmp_path):
    folder = write_dataset(tmp_path / "k")
    served = dataclasses.replace(KMNIST, gz_sha256=gz_digests(folder))
    assert len(DataSource(folder, dataset=served).test_images()) > 0
    name = "t10k-images-idx3-ubyte"
    content = gzip.decompress((folder / f"{name}.gz").read_bytes())
    replace_file(folder, f"{name}.gz", gzip.compress(content, compresslevel=1, mtime=0))  # same images, new .gz
    with pytest.raises(DataError, match="is not the official Kuzushiji-MNIST file"):
        DataSource(folder, dataset=served).test_images()
    replace_file(folder, name, content)
    with pytest.raises(DataError, match=r"cannot be checked: Kuzushiji-MNIST's published digests are of its .gz "
                                        r"files; keep t10k-images-idx3-ubyte.gz as downloaded, or pass --no-verify"
                                        r"|`verify=False`"):
        DataSource(folder, dataset=served).test_images()
    assert len(DataSource(folder, verify=False, dataset=served).test_images()) > 0


def test_a_file_with_both_digests_passes_by_either_and_fails_by_neither(tmp_path):
    folder = write_dataset(tmp_path / "m")
    name = "t10k-labels-idx1-ubyte"
    content = gzip.decompress((folder / f"{name}.gz").read_bytes())
    wrong = ("0" * 64,) * 4
    by_content = dataclasses.replace(MNIST, sha256=tuple(hashlib.sha256(gzip.decompress(
        (folder / f"{n}.gz").read_bytes())).hexdigest() for n in data.FILE_NAMES), gz_sha256=wrong)
    by_gz = dataclasses.replace(MNIST, sha256=wrong, gz_sha256=gz_digests(folder))
    for dataset in (by_content, by_gz):
        assert len(DataSource(folder, dataset=dataset).test_images()) > 0
    replace_file(folder, name, content)  # unpacked: its content still has the official digest
    assert len(data.load_file(folder, name, dataset=by_content)) > 0
    with pytest.raises(DataError, match="is not the official MNIST file"):
        data.load_file(folder, name, dataset=by_gz)
    with pytest.raises(DataError, match="is not the official MNIST file"):
        DataSource(folder, dataset=MNIST).test_images()


def test_a_folder_of_your_own_has_nothing_to_download(tmp_path):
    from fashionlab.datasets import Dataset

    own = Dataset(name="letters", title="the data set in letters", class_names=("a", "b"), folder=tmp_path)
    with pytest.raises(DataError, match="has no official files to download"):
        data.download(tmp_path / "dest", dataset=own)
    assert not (tmp_path / "dest").exists()


def test_the_ways_to_get_a_built_in_name_its_own_download():
    assert "fashionlab data download --dataset kmnist" in data.how_to_get(KMNIST)
    assert "apt-get" not in data.how_to_get(KMNIST) and "FASHIONLAB_DATA" not in data.how_to_get(MNIST)
    assert "apt-get install dataset-fashion-mnist" in data.how_to_get(FASHION_MNIST)


@pytest.fixture
def answering(tmp_path):
    """A loopback server that answers every request with the same raw bytes, then closes."""
    server = socket.create_server(("127.0.0.1", 0))
    answer = [b""]

    def serve():
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            with client:
                client.recv(65536)
                client.sendall(answer[0])

    threading.Thread(target=serve, daemon=True).start()
    yield answer, f"http://127.0.0.1:{server.getsockname()[1]}/"
    server.close()


@pytest.mark.parametrize("raw", [b"HELLO THERE\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                                 b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n"])
def test_a_server_that_breaks_http_gets_one_line_and_nothing_is_kept(tmp_path, answering, raw, capfd):
    answer, url = answering
    answer[0] = raw
    with pytest.raises(DataError, match=r"^cannot download http://127.0.0.1:\d+/train-images-idx3-ubyte.gz \(.+\); "
                                        r"check"):
        data.download(tmp_path / "dest", url=url)
    assert "Traceback" not in capfd.readouterr().err and not (tmp_path / "dest").exists()


def test_an_empty_url_is_refused_not_taken_for_the_official_one(tmp_path):
    with pytest.raises(DataError, match="`url` is empty"):
        data.download(tmp_path / "dest", url=" ")
    assert not (tmp_path / "dest").exists()


def test_a_download_replaces_no_file_unless_it_can_replace_them_all(tmp_path, real_data):
    dest = tmp_path / "dest"
    (dest / "t10k-labels-idx1-ubyte.gz").mkdir(parents=True)
    (dest / "train-images-idx3-ubyte.gz").write_bytes(b"mine")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is a directory, not a file a download may "
                                        r"replace; move it away, or choose another `dest`"):
        data.download(dest, url=real_data.data_dir.as_uri())
    assert (dest / "train-images-idx3-ubyte.gz").read_bytes() == b"mine"
    assert sorted(p.name for p in dest.iterdir()) == ["t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz"]


def test_messages_about_a_data_sets_files_speak_of_that_data_set(tmp_path):
    folder = write_dataset(tmp_path / "k")
    damaged = folder / "t10k-images-idx3-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:200])
    with pytest.raises(DataError, match="damaged gzip file .*fashionlab data download --dataset kmnist"):
        data.load_file(folder, "t10k-images-idx3-ubyte", verify=False, dataset=KMNIST)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x09" + b"\x00" * 30)  # an unknown compression
    with pytest.raises(DataError, match="is a damaged gzip file"):
        data.load_file(folder, "t10k-images-idx3-ubyte", verify=False, dataset=KMNIST)
    with pytest.raises(DataError, match=r"has label 9, outside 0..1 \(the data set's 2 classes\); name every label "
                                        r"in classes.txt, or replace the file"):
        data.load_file(folder, "t10k-labels-idx1-ubyte", verify=False,
                       dataset=dataclasses.replace(KMNIST, class_names=("a", "b")))
