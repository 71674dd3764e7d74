import os

from fashionlab import __version__
from fashionlab.provenance import library_versions, machine_info


def test_versions_name_python_fashionlab_the_backend_and_keras():
    versions = library_versions()
    assert versions["fashionlab"] == __version__
    assert versions["keras"].startswith("3.") and versions["keras_backend"] == "jax"
    assert versions["python"].count(".") == 2


def test_machine_info_names_the_cpu_and_only_asks_for_the_device_when_told():
    info = machine_info(with_device=False)
    assert set(info) == {"platform", "cpu", "cores"} and info["cores"] == os.cpu_count() and info["cpu"]
    assert machine_info()["device"].split(":")[0] in ("cpu", "gpu", "cuda", "rocm", "tpu")
