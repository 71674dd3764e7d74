"""The tutorial's printed results, reproduced on the official data: one 10-epoch run of its recipe
(about half a minute), shared by the tests of this file."""

import numpy as np
import pytest
from PIL import Image

from fashionlab.config import TrainConfig
from fashionlab.prediction import predict
from fashionlab.rundir import Run
from fashionlab.training import train

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def tutorial_run(tmp_path_factory, real_data):
    return train(TrainConfig(), tmp_path_factory.mktemp("runs") / "tutorial", data=real_data, verbose=0)


def test_tutorial_recipe_on_the_real_data(tutorial_run, real_data):
    history, metrics = tutorial_run.history, tutorial_run.metrics
    assert history["val_accuracy"].iloc[0] >= 0.70  # the tutorial's first epoch: 0.7498
    assert metrics["test_accuracy"] >= 0.84  # the tutorial: 0.854
    assert metrics["parameters"] == {"total": 279_410, "trainable": 275_410, "non_trainable": 4_000}
    x = real_data.test_images()[:3].astype("float32")
    reloaded = Run.open(tutorial_run.run.path).load_model()
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), tutorial_run.model.predict(x, verbose=0), atol=1e-6)


def test_the_tutorial_predictions_of_test_images_0_1_2(tutorial_run, real_data):
    results = predict(tutorial_run.run.path, indices=[0, 1, 2], data=real_data)
    assert [(r["class_id"], r["class_name"]) for r in results] == [(9, "Ankle boot"), (2, "Pullover"),
                                                                   (1, "Trouser")]


def test_photos_on_white_are_recognized_like_the_test_images(tutorial_run, real_data, tmp_path):
    """Test images turned into 'photos': dark garment on white, 8x larger, RGB JPEG, not square."""
    x_test = real_data.test_images()
    paths = []
    for index in (0, 1, 2):
        photo = Image.fromarray(255 - x_test[index]).resize((224, 224), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (300, 224), "white")
        canvas.paste(photo.convert("RGB"), (38, 0))
        canvas.save(tmp_path / f"photo{index}.jpg", quality=90)
        paths.append(tmp_path / f"photo{index}.jpg")
    from_photos = predict(tutorial_run.run.path, images=paths)
    from_indices = predict(tutorial_run.run.path, indices=[0, 1, 2], data=real_data)
    assert [r["class_name"] for r in from_photos] == [r["class_name"] for r in from_indices]


def test_1000_test_images_saved_as_png_are_predicted_exactly_as_by_index(tutorial_run, real_data, tmp_path):
    x_test = real_data.test_images()
    paths = []
    for index in range(1000):
        Image.fromarray(x_test[index]).save(tmp_path / f"test-{index}.png")
        paths.append(tmp_path / f"test-{index}.png")
    by_file = predict(tutorial_run.run.path, images=paths)
    by_index = predict(tutorial_run.run.path, indices=range(1000), data=real_data)
    assert [(r["class_id"], r["probability"]) for r in by_file] == [(r["class_id"], r["probability"])
                                                                    for r in by_index]
    assert not any(r.get("mirrored") for r in by_file)


def test_a_mirrored_shoe_photo_is_read_as_the_shoe_it_is(tutorial_run, real_data, tmp_path):
    """Test image 0, an ankle boot, pointing right as a photo on white: read mirrored."""
    boot = real_data.test_images()[0][:, ::-1]
    Image.fromarray(255 - boot).resize((200, 200), Image.Resampling.BICUBIC).convert("RGB").save(tmp_path / "r.jpg")
    result = predict(tutorial_run.run.path, images=[tmp_path / "r.jpg"])[0]
    assert result["class_name"] == "Ankle boot" and result["mirrored"] is True


def test_the_onnx_export_agrees_on_all_10000_test_images(tutorial_run, real_data, tmp_path):
    from fashionlab.evaluation import predict_proba
    from fashionlab.export import export
    from fashionlab.onnxrun import OnnxModel

    result = export(tutorial_run.run.path, out=tmp_path / "tutorial.onnx", data=real_data)
    assert result["check"]["images"] == 1000
    x_test = real_data.test_images()
    by_onnx, by_keras = OnnxModel(tmp_path / "tutorial.onnx").predict(x_test), predict_proba(tutorial_run.model, x_test)
    assert np.abs(by_onnx - by_keras).max() <= 1e-5
    assert (by_onnx.argmax(axis=1) == by_keras.argmax(axis=1)).all()
