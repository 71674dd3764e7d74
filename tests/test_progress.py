"""Training progress in logs and pipes (progress.LineProgress): a line every so many seconds within an
epoch, on a clock of the test's own."""

from __future__ import annotations

import types

from fashionlab import progress


def test_a_line_comes_once_the_interval_has_passed_and_not_at_the_epochs_end(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    lines: list[str] = []
    watch = progress.LineProgress(epochs=3, steps=100, every=30.0, write=lines.append)
    watch.on_epoch_begin(1)
    for batch in range(100):  # 7 s a step: past 30 s after every fifth step
        now[0] += 7.0
        watch.on_train_batch_end(batch, {"accuracy": 0.5, "loss": 1.25, "val_loss": 9.0})
    assert [line.split()[3] for line in lines] == [f"{done}/100" for done in range(5, 100, 5)]
    assert lines[0] == ("epoch 2/3  step 5/100 (5%)  35 s  0.1 steps/s  about 665 s left  loss 1.2500  "
                        "accuracy 0.5000")
    watch.on_epoch_begin(2)  # each epoch's clock starts afresh
    now[0] += 29.0
    watch.on_train_batch_end(0, {})
    assert len(lines) == 19
    now[0] += 1.0
    watch.on_train_batch_end(1, {})
    assert lines[-1] == "epoch 3/3  step 2/100 (2%)  30 s  0.1 steps/s  about 1470 s left"
