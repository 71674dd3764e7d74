"""The Dockerfile of `serve --onnx`: its package list in step with pyproject.toml's extras and free of
Keras, JAX, pandas and matplotlib; the server run as the image runs it, with those packages made
impossible to import, answering the page's API and the v2 protocol; built and run only where a
container engine answers (the build needs the network, for its base image and packages)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from serving import Server, start, stop

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
ABSENT = ("keras", "jax", "jaxlib", "pandas", "matplotlib", "tensorflow", "optuna", "mlflow", "jax2onnx", "sklearn")


def installed() -> list[str]:
    """The requirements the Dockerfile's first pip install names, as written."""
    command = DOCKERFILE.split("RUN pip install ", 1)[1].split("\nRUN", 1)[0].replace("\\\n", " ")
    return shlex.split(command)


def required() -> list[str]:
    """What serve --onnx needs, as pyproject.toml asks for it: numpy, Pillow and SciPy of the core, the
    serve and onnx extras less the export's jax2onnx."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=\[ ]", req, maxsplit=1)[0].lower(): req for req in project["dependencies"]}
    extras = project["optional-dependencies"]
    return ([core["numpy"], core["pillow"], core["scipy"]] + [r for r in extras["onnx"] if not r.startswith("jax2onnx")]
            + extras["serve"])


def test_the_image_installs_what_serve_onnx_needs_and_nothing_of_training():
    assert installed() == required()
    assert not {re.split(r"[<>=\[]", r, maxsplit=1)[0] for r in installed()} & set(ABSENT)
    assert "\nRUN pip install --no-deps .\n" in DOCKERFILE  # fashionlab itself, after what it needs
    assert DOCKERFILE.startswith("#") and "\nFROM python:3.11-slim\n" in DOCKERFILE
    assert "\nUSER fashionlab\n" in DOCKERFILE and "\nEXPOSE 8000\n" in DOCKERFILE
    assert "/v2/health/ready" in DOCKERFILE.split("HEALTHCHECK", 1)[1]
    entry = json.loads(DOCKERFILE.split("ENTRYPOINT", 1)[1].strip())
    assert entry == ["fashionlab", "serve", "--onnx", "/model/model.onnx", "--host", "0.0.0.0", "--port", "8000"]


BLOCKER = """import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {absent!r}:
            raise ImportError("not in the image: " + name)
sys.meta_path.insert(0, Absent())
if __name__ == "__main__":
    from fashionlab.__main__ import run
    sys.argv = ["fashionlab", *sys.argv[1:]]
    run()
"""


def test_serve_onnx_runs_without_the_packages_the_image_leaves_out(tiny_run, synthetic, tmp_path, test_pngs):
    from fashionlab.export import export

    model = tmp_path / "model.onnx"
    export(tiny_run.run.path, out=model, data=synthetic)
    script = tmp_path / "image.py"
    script.write_text(BLOCKER.format(absent=set(ABSENT)))
    process, url = start("--onnx", str(model), "--data-dir", str(tmp_path / "no-data"), program=[str(script)])
    try:
        server = Server(process, url)
        status, _, said = server.post_files([("a.png", test_pngs[0])])
        assert status == 200 and said[0]["class_name"]
        images = synthetic.test_images()[:2]
        body = json.dumps({"inputs": [{"name": "pixels", "shape": [2, 28, 28], "datatype": "UINT8",
                                       "data": images.reshape(-1).tolist()}]}).encode()
        assert server.request("POST", "/v2/models/tiny/infer", body)[0] == 200
        assert server.request("GET", "/metrics")[0] == 200
    finally:
        assert stop(process) in (0, 130)
    assert "not in the image" not in process.stderr.read()


def engine() -> str | None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode != 0:
        return None
    return docker


@pytest.mark.skipif(engine() is None, reason="no container engine answers here: the build is left to the user")
def test_the_image_builds_and_serves(tiny_run, synthetic, tmp_path):
    import time
    import urllib.request

    from fashionlab.export import export

    docker = engine()
    subprocess.run([docker, "build", "-t", "fashionlab-serve-test", str(ROOT)], check=True, timeout=1800)
    export(tiny_run.run.path, out=tmp_path / "model.onnx", data=synthetic)
    container = subprocess.run([docker, "run", "-d", "-p", "127.0.0.1::8000", "-v",
                                f"{tmp_path / 'model.onnx'}:/model/model.onnx:ro", "fashionlab-serve-test"],
                               capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    try:
        port = subprocess.run([docker, "port", container, "8000"], capture_output=True, text=True,
                              check=True).stdout.split(":")[-1].strip()
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/tiny", timeout=3) as answer:
                    assert json.loads(answer.read())["platform"] == "onnxruntime"
                    break
            except OSError:
                assert time.monotonic() < deadline, "the container did not answer"
                time.sleep(1)
    finally:
        subprocess.run([docker, "rm", "-f", container], capture_output=True, timeout=60)
