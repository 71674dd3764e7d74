"""Requests read in batches (serve/batching.py): no batch over MAX_BATCH images, each request its
own rows, and a batcher that goes on in another event loop."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fashionlab.evaluation import predict_proba
from fashionlab.prediction import facing_ids, orientation_of, read_probabilities
from fashionlab.serve.batching import Batcher
from fashionlab.serve.predictor import MAX_BATCH, load_predictor


def test_a_batch_never_holds_more_than_max_batch_images_and_each_request_gets_its_own(tiny_run, synthetic):
    predictor = load_predictor(tiny_run.run.path)
    sizes, predict = [], predictor.predict

    def counted(x, *args, **kwargs):
        sizes.append(len(x))
        return predict(x, *args, **kwargs)

    predictor.predict = counted
    images = np.concatenate([synthetic.test_images()] * 2)
    requests = [images[start:start + n] for start, n in zip((0, 40, 70, 134, 135), (40, 30, 64, 1, 63))]
    batcher = Batcher(predictor)

    async def together():  # a request left behind in the queue would hang: bounded
        return await asyncio.wait_for(asyncio.gather(*(batcher.read(x, [True] * len(x)) for x in requests)), 60)

    with ThreadPoolExecutor(1) as thread:
        answers = thread.submit(asyncio.run, together()).result()
    batcher.close()
    assert max(sizes) <= 2 * MAX_BATCH  # a batch of 64 images and their mirrored readings
    assert batcher.images == sum(len(x) for x in requests) and batcher.batches >= 4
    for x, readings in zip(requests, answers):  # each request's rows, read as one call would read them
        want = read_probabilities(predictor, x, [True] * len(x), facing_ids(predictor.dataset),
                                  orientation_of(predictor.dataset))
        np.testing.assert_allclose(readings.proba, want.proba, atol=1e-6)
        for got, wanted in ((readings.mirrored, want.mirrored), (readings.turned, want.turned),
                            (readings.doubtful, want.doubtful)):
            np.testing.assert_array_equal(got, wanted)


def test_the_batcher_goes_on_in_another_event_loop(tiny_run, synthetic):
    predictor = load_predictor(tiny_run.run.path)
    x = synthetic.test_images()[:5]
    expected = predict_proba(tiny_run.model, x)
    batcher = Batcher(predictor)
    for _ in range(2):  # a second event loop, as a test client or a restarted app has; each in its own thread,
        with ThreadPoolExecutor(1) as thread:  # since this one may run a loop already (Playwright's)
            readings = thread.submit(asyncio.run, asyncio.wait_for(batcher.read(x, [False] * 5), 30)).result()
        np.testing.assert_allclose(readings.proba, expected, atol=1e-6)
        assert not readings.mirrored.any() and not readings.turned.any()
    assert batcher.batches == 2 and batcher.images == 10
    batcher.close()


def test_the_batcher_mirrors_photos_only_for_a_data_set_whose_shoes_face_one_way():
    from helpers import left_right_model

    from fashionlab.datasets import FASHION_MNIST, MNIST
    from fashionlab.serve.predictor import Predictor

    photo = np.zeros((1, 28, 28), np.uint8)
    photo[0, 10:20, 2:12] = 200  # all on the left: looks turned; its mirror image reads as an Ankle boot
    mirrored = {}
    for dataset in (FASHION_MNIST, MNIST):
        batcher = Batcher(Predictor(left_right_model(), "keras", {"name": "lr"}, dataset))
        with ThreadPoolExecutor(1) as thread:
            readings = thread.submit(asyncio.run, asyncio.wait_for(batcher.read(photo, [True]), 30)).result()
        batcher.close()
        mirrored[dataset.name] = bool(readings.mirrored[0])
    assert mirrored == {"fashion-mnist": True, "mnist": False}


def test_mc_dropout_requests_are_read_apart_from_the_others(dropout_server, test_pngs):
    """Requests arriving together: the plain ones get plain answers, the MC ones the answer they get alone."""
    alone = dropout_server.post_files([("a.png", test_pngs[0])], "?mc_dropout=20")[2]
    plain = dropout_server.post_files([("b.png", test_pngs[1])])[2]
    asks = [("?mc_dropout=20", test_pngs[0]), ("", test_pngs[1])] * 12
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda ask: dropout_server.post_files([("x.png", ask[1])], ask[0]), asks))
    for (query, _), (status, _, answer) in zip(asks, answers):
        assert status == 200
        expected = alone if query else plain
        assert [(r["class_id"], r.get("spread")) for r in answer] == [(r["class_id"], r.get("spread"))
                                                                      for r in expected]
        assert answer[0]["probability"] == pytest.approx(expected[0]["probability"], abs=1e-6)
