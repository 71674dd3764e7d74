"""The images of requests that arrive together, read by the model in one call, in its own thread,
while the event loop goes on accepting requests.

    batcher = Batcher(predictor)
    readings = await batcher.read(pixels, photos)   # this request's rows of its batch (prediction.Readings)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from fashionlab.prediction import Readings, facing_ids, orientation_of, read_probabilities
from fashionlab.serve.predictor import MAX_BATCH, Predictor


@dataclass
class _Job:
    pixels: np.ndarray
    mirror: list[bool]
    future: asyncio.Future = field(repr=False)
    passes: int | None = None  # MC dropout: read alone, so its draws are its own


class Batcher:
    """Reads the images of requests that arrive together in one batch: while the model reads a
    batch (in its own thread), the next requests queue, and are read together next."""

    def __init__(self, predictor: Predictor, on_batch: Callable[[int, float], None] | None = None):
        self.predictor, self.on_batch = predictor, on_batch  # on_batch(images, seconds) after each call
        self.facing, self.upright = facing_ids(predictor.dataset), orientation_of(predictor.dataset)
        self.queue: asyncio.Queue[_Job] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="fashionlab-model")
        self.task: asyncio.Task | None = None
        self.carried: _Job | None = None  # taken from the queue, but over the last batch's size
        self.batches = self.images = 0
        self.waiting = 0  # images queued, not yet in a batch

    async def read(self, pixels: np.ndarray, mirror: Sequence[bool], passes: int | None = None) -> Readings:
        """The model's readings of `pixels`; those flagged in `mirror` (photos) turned and mirrored as
        the predictor's data set says (`prediction.read_probabilities`); with `passes`, MC dropout's (read
        in a batch of its own, so the same images give the same answer)."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # the first request, or the app now runs in another event loop
            self.queue, self.loop, self.carried = asyncio.Queue(), loop, None
            self.task = loop.create_task(self._loop(self.queue))
        future = loop.create_future()
        self.waiting += len(pixels)
        await self.queue.put(_Job(pixels, list(mirror), future, passes))
        return await future

    async def _loop(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [self.carried or await queue.get()]
            self.carried, count = None, len(jobs[0].pixels)
            while not queue.empty() and jobs[0].passes is None:
                job = queue.get_nowait()
                if count + len(job.pixels) > MAX_BATCH or job.passes is not None:
                    self.carried = job
                    break
                jobs.append(job)
                count += len(job.pixels)
            pixels = np.concatenate([job.pixels for job in jobs])
            mirror = [flag for job in jobs for flag in job.mirror]
            self.waiting -= len(pixels)
            began = time.perf_counter()
            try:
                readings = await loop.run_in_executor(self.model_thread, read_probabilities, self.predictor,
                                                      pixels, mirror, self.facing, self.upright, jobs[0].passes)
            except Exception as exc:  # the model failed: every waiting request says so
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batches, self.images = self.batches + 1, self.images + len(pixels)
            if self.on_batch is not None:
                self.on_batch(len(pixels), time.perf_counter() - began)
            start = 0
            for job in jobs:
                end = start + len(job.pixels)
                if not job.future.done():
                    job.future.set_result(readings.rows(start, end))
                start = end

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.model_thread.shutdown(wait=False, cancel_futures=True)
