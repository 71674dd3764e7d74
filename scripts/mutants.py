"""Mutation check: plant plausible bugs in the library, one at a time, and see which the tests catch.

    .venv/bin/python scripts/mutants.py [--jobs 2] [--only ID ...] [--quick]

Each mutant is one exact text replacement in one module of src/fashionlab, a bug a developer
could plausibly write. For each, the script copies src/, tests/ and examples/ to a scratch folder, applies
the replacement, and runs pytest there (the copy comes first on PYTHONPATH, so subprocesses
that the tests start see the mutant too). A mutant is killed when a test fails, or the run
hangs past the timeout; it survives when the suite passes. The module's own tests run first,
then the whole suite, each stopping at the first failure (-x), so killed mutants are cheap; a
survivor costs a whole suite run. --quick runs only the module's own tests. A mutant whose text is no longer in the
code is reported as stale: update it with the code it mutates.

Not part of `make test`: a full pass takes tens of minutes on two cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    id: str
    module: str  # file name under src/fashionlab
    old: str
    new: str
    why: str  # the bug, in words

    @property
    def own_tests(self) -> str:
        return f"tests/test_{self.module.removesuffix('.py')}.py"


MUTANTS = [
    Mutant("scaler-per-pixel", "preprocessing.py",
           "        mean, std = total / n, math.sqrt(squares * n - total * total) / n",
           "        mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-7",
           "the scaler is fitted per pixel instead of over all pixels"),
    Mutant("scaler-sample-std", "preprocessing.py",
           "math.sqrt(squares * n - total * total) / n",
           "math.sqrt((squares * n - total * total) / (n * (n - 1)))",
           "the scaler uses the sample std (ddof=1), not StandardScaler's population std"),
    Mutant("scaler-on-train-and-valid", "training.py",
           "    return build_model(config, fit_scaler(splits.x_train),",
           "    return build_model(config, fit_scaler(np.concatenate([splits.x_train, splits.x_valid])),",
           "the scaler is fitted on training + validation images"),
    Mutant("valid-from-the-end", "data.py",
           "    x_train, y_train = x_all[validation_size:], y_all[validation_size:]",
           "    x_train, y_train = x_all[:-validation_size], y_all[:-validation_size]",
           "the validation images are taken from the end of the training file (train half of it)"),
    Mutant("train-samples-ignored", "data.py",
           "        x_train, y_train = x_train[:train_samples], y_train[:train_samples]",
           "        pass",
           "train_samples is ignored"),
    Mutant("verification-skipped", "data.py",
           "    if verify and hashlib.sha256(content).hexdigest() != OFFICIAL_SHA256[name]:",
           "    if False and hashlib.sha256(content).hexdigest() != OFFICIAL_SHA256[name]:",
           "the SHA-256 check is skipped"),
    Mutant("label-range-unchecked", "data.py",
           "    if kind == \"labels\" and count and array.max() >= len(CLASS_NAMES):",
           "    if False:",
           "labels outside 0..9 are accepted"),
    Mutant("bomb-cap-removed", "data.py",
           "            content = stream.read(MAX_DECOMPRESSED_BYTES + 1)",
           "            content = stream.read()[:MAX_DECOMPRESSED_BYTES]",
           "a decompression bomb is read whole, then cut"),
    Mutant("bn-placement-ignored", "model.py",
           "    if config.batch_norm == \"before\":",
           "    if False:",
           "batch_norm='before' builds the 'after' network"),
    Mutant("learning-rate-ignored", "model.py",
           "    if config.schedule == \"constant\" and not warmup:\n        return config.learning_rate",
           "    if config.schedule == \"constant\" and not warmup:\n        return 0.01",
           "the optimizer gets its default learning rate, not the configured one"),
    Mutant("same-shuffle-every-epoch", "engine.py",
           "jax.random.fold_in(key, epoch)",
           "key",
           "each epoch's shuffle does not depend on the epoch"),
    Mutant("shuffle-counts-from-resume", "engine.py",
           "order = self._order(key, epoch, n, shuffle)",
           "order = self._order(key, epoch - initial_epoch, n, shuffle)",
           "a resumed run numbers its epochs' shuffles from the resume point"),
    Mutant("tail-batch-dropped", "engine.py",
           "            if tail and not self.model.stop_training:",
           "            if False:",
           "the last, partial batch of each epoch is dropped"),
    Mutant("bn-inference-mode-in-training", "engine.py",
           "stateless_call(trainable, non_trainable, x, training=True)",
           "stateless_call(trainable, non_trainable, x, training=False)",
           "training runs BN in inference mode"),
    Mutant("validation-on-training-data", "engine.py",
           "programs.evaluate.result()(state.trainable, state.non_trainable, *valid)",
           "programs.evaluate.result()(state.trainable, state.non_trainable, x_all, y_all)",
           "validation metrics are computed on the training images"),
    Mutant("stop-request-ignored", "engine.py",
           "                if self.model.stop_training:\n                    break\n            if tail",
           "                if False:\n                    break\n            if tail",
           "a stop request is only seen at the end of the epoch"),
    Mutant("resume-off-by-one", "training.py",
           "        rows = rows[:epoch]  #",
           "        rows = rows[:max(epoch - 1, 0)]  #",
           "resume restarts one epoch too early"),
    Mutant("nan-check-removed", "training.py",
           "            self.diverged_at = self._epoch + 1\n",
           "            pass\n",
           "a NaN loss inside an epoch does not stop training"),
    Mutant("nan-epoch-check-removed", "training.py",
           "        if not all(math.isfinite(v) for v in logs.values()):",
           "        if False:",
           "a NaN in an epoch's logs is recorded as a good epoch"),
    Mutant("best-epoch-off-by-one", "training.py",
           "\"best_epoch\": int(history[\"val_accuracy\"].idxmax()) + 1,",
           "\"best_epoch\": int(history[\"val_accuracy\"].idxmax()),",
           "best_epoch is counted from 0"),
    Mutant("checkpoints-kept", "training.py",
           "        checkpoint.unlink(missing_ok=True)  # model.keras supersedes them",
           "        pass",
           "checkpoints are left in a complete run"),
    Mutant("interrupted-marked-failed", "training.py",
           "        _mark(run, \"interrupted\", str(exc))",
           "        _mark(run, \"failed\", str(exc))",
           "an interrupted run is marked failed"),
    Mutant("non-atomic-write", "runs.py",
           "            with atomic_path(target) as tmp:\n                write(tmp)",
           "            write(target)",
           "run files are written in place, not through a temporary file"),
    Mutant("atomic-path-in-place", "runs.py",
           "        yield Path(tmp)",
           "        yield path",
           "atomic_path hands out the target itself"),
    Mutant("lock-removed", "runs.py",
           "            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
           "            pass",
           "the run directory lock is never taken"),
    Mutant("incomplete-run-accepted", "runs.py",
           "        if status[\"status\"] != \"complete\" and not allow_incomplete:",
           "        if False:",
           "an unfinished run is evaluated without --allow-incomplete"),
    Mutant("unsafe-model-loading", "runs.py",
           "safe_mode=True)",
           "safe_mode=False)",
           "models are loaded with Keras' safe mode off"),
    Mutant("inversion-reversed", "prediction.py",
           "    if border.mean() > 127 if invert is None else invert:",
           "    if border.mean() < 127 if invert is None else invert:",
           "the light-background heuristic is reversed"),
    Mutant("trim-removed", "prediction.py",
           "    if garment:\n        gray = gray.crop(garment)",
           "    if False:\n        gray = gray.crop(garment)",
           "photos are not trimmed to the garment"),
    Mutant("top-k-ascending", "prediction.py",
           "    order = np.argsort(-proba, kind=\"stable\")[:k]",
           "    order = np.argsort(proba, kind=\"stable\")[::-1][:k][::-1]",
           "top-k is listed in ascending order"),
    Mutant("pixel-cap-removed", "prediction.py",
           "            if width * height > MAX_IMAGE_PIXELS:",
           "            if False:",
           "huge images are decoded"),
    Mutant("confusion-transposed", "evaluation.py",
           "np.bincount(y_true * n_classes + y_pred,",
           "np.bincount(y_pred * n_classes + y_true,",
           "the confusion matrix has predicted rows and true columns"),
    Mutant("seeds-not-counting-up", "comparison.py",
           "c.replace(seed=seed), out / c.name",
           "c.replace(seed=first), out / c.name",
           "every seed of a variant trains with the base seed"),
    Mutant("population-std-in-compare", "comparison.py",
           "grouped[\"test_accuracy\"].std(ddof=1)",
           "grouped[\"test_accuracy\"].std(ddof=0)",
           "compare reports the population std over seeds, not the sample std"),
    Mutant("changed-settings-reused", "runner.py",
           "    if recorded != expected:",
           "    if False:",
           "a run trained with other settings is reused in a comparison"),
    Mutant("unfinished-run-trained-afresh", "runner.py",
           "    resumed = inspect(task).state == \"unfinished\"",
           "    resumed = False",
           "the runner trains an unfinished run as a new one instead of resuming it"),
    Mutant("workers-not-stopped", "runner.py",
           "            worker.send(\"stop\")\n",
           "",
           "a stopped comparison leaves its workers training"),
    Mutant("ctrl-c-kills-starting-workers", "runner.py",
           "            with _ctrl_c_held():",
           "            with contextlib.nullcontext():",
           "a Ctrl-C while the workers start kills them, reported as a crash"),
    Mutant("workers-deaf-to-ctrl-c", "runner.py",
           "    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})\n",
           "",
           "a worker keeps Ctrl-C held back, so its training never hears it"),
    Mutant("orphans-keep-training", "runner.py",
           "    except (EOFError, OSError):\n        stop.set()\n        inbox.put(None)",
           "    except (EOFError, OSError):\n        inbox.put(None)",
           "a worker whose parent died trains on"),
    Mutant("evaluate-without-lock", "evaluation.py",
           "    with stop_requests() as stop, Run.acquire(run_dir) as run:",
           "    with stop_requests() as stop, Run(run_dir) as run:",
           "evaluate rewrites a run's files without taking its lock"),
    Mutant("int-kept-for-float", "config.py",
           "            value = float(value)",
           "            value = value",
           "an int given for a float key is stored as an int"),
    Mutant("scaler-read-back-wrong", "preprocessing.py",
           "    return Scaler(mean=-layer.offset / layer.scale, std=1 / layer.scale)",
           "    return Scaler(mean=layer.offset / layer.scale, std=1 / layer.scale)",
           "the scaler recorded in metrics.json has the wrong sign"),
    Mutant("html-escaping-removed", "reports.py",
           "    return frame.to_html(index=index, border=0, escape=True,",
           "    return frame.to_html(index=index, border=0, escape=False,",
           "report tables are not HTML-escaped"),
    Mutant("title-escaping-removed", "reports.py",
           "<body><h1>{html.escape(title)}</h1>",
           "<body><h1>{title}</h1>",
           "the report heading is not HTML-escaped"),
    Mutant("zero-exit-on-error", "cli.py",
           "        return exc.exit_code",
           "        return 0",
           "the CLI exits 0 after an error"),
    Mutant("library-terms-shown-as-is", "cli.py",
           "{printable(in_cli_terms(exc, flags_of(args.command_parser)))}",
           "{printable(str(exc))}",
           "the CLI tells users about `verify=False` instead of --no-verify"),
    # Hostile input: each boundary's mechanism, broken the way it plausibly could be.
    Mutant("fifo-waited-on", "files.py",
           "flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC",
           "flags = os.O_RDONLY | os.O_CLOEXEC",
           "files are opened blocking: a FIFO given as a file hangs the command"),
    Mutant("special-files-read", "files.py",
           "        if not stat.S_ISREG(info.st_mode):",
           "        if stat.S_ISDIR(info.st_mode):",
           "only directories are refused: a device or FIFO is read as if it were a file"),
    Mutant("size-cap-ignored", "files.py",
           "        if info.st_size > limit:",
           "        if info.st_size > limit * 1024:",
           "the size cap is compared in the wrong unit"),
    Mutant("links-followed-in-runs", "runs.py",
           "error=RunError, limit=MAX_TEXT_BYTES, follow_links=False)",
           "error=RunError, limit=MAX_TEXT_BYTES)",
           "a run's files are read through symbolic links"),
    Mutant("lock-through-link", "runs.py",
           "os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK",
           "os.O_RDWR | os.O_CREAT | os.O_NONBLOCK",
           "the lock file is created through a symbolic link, outside the run"),
    Mutant("status-schema-skipped", "runs.py",
           "            return self.read_json(STATUS_FILE, Status)",
           "            return self.read_json(STATUS_FILE)",
           "run.json is used without checking its fields"),
    Mutant("history-numbering-unchecked", "runs.py",
           "[row[\"epoch\"] for row in rows] != list(range(1, len(rows) + 1))",
           "len(rows) > 10**9",
           "history.csv rows are not checked to be epochs 1..n"),
    Mutant("declared-sizes-unchecked", "runs.py",
           "        problem = _declared_problem(declared)",
           "        problem = None",
           "a model archive is built before its declared layer sizes are bounded"),
    Mutant("output-classes-unchecked", "runs.py",
           "    if len(outputs) != 1 or tuple(outputs[0].shape) != (None, len(CLASS_NAMES)):",
           "    if len(outputs) != 1:",
           "a model with another number of classes is mapped onto the ten class names"),
    Mutant("keras-temp-left", "runs.py",
           "            before, tempfile.tempdir = tempfile.tempdir, scratch",
           "            before = tempfile.tempdir",
           "Keras unpacks into the system temporary folder and leaves it there after a failed load"),
    Mutant("batch-checked-against-all-images", "config.py",
           "    if config.batch_size > used:",
           "    if config.batch_size > left:",
           "batch_size is checked against all training images, not the train_samples used"),
    Mutant("samples-checked-without-validation", "config.py",
           "    if config.train_samples > left:",
           "    if config.train_samples > train_images:",
           "train_samples is checked against the file's count, forgetting the validation images"),
    Mutant("memory-estimate-off", "config.py",
           "    if free is not None and need > 0.8 * free:",
           "    if free is not None and need > 8 * free:",
           "the memory estimate is compared against ten times the free memory"),
    Mutant("name-allows-anything-but-slashes", "config.py",
           'NAME_PATTERN = re.compile(r"[^\\W_][\\w.-]{0,63}")',
           'NAME_PATTERN = re.compile(r"[^/.][^/]{0,63}")',
           "run names are checked only for path separators (math text, control characters pass)"),
    Mutant("seed-unbounded", "config.py",
           "minimum=0, maximum=SEED_MAX)",
           "minimum=0)",
           "seeds past the 32-bit range are accepted, and fail deep inside NumPy"),
    Mutant("foreign-out-folder-used", "comparison.py",
           "    if force or os.path.lexists(out / MARKER):",
           "    if force or out.is_dir():",
           "compare writes into any existing folder, overwriting its files"),
    Mutant("memory-not-shared", "comparison.py",
           "        free_memory //= min(jobs, len(tasks))",
           "        free_memory //= 1",
           "compare checks each run against all the free memory though `jobs` of them train at once"),
    Mutant("lock-left-in-refused-folder", "runs.py",
           "        if path.is_dir():\n            refuse_if_not_empty()  # before the lock file",
           "        if False:\n            refuse_if_not_empty()  # before the lock file",
           "a folder refused as a run directory is left holding fashionlab's lock file"),
    Mutant("stalled-download-waited-on", "data.py",
           "                    if window_bytes < MIN_DOWNLOAD_RATE * timeout:",
           "                    if window_bytes < 0:",
           "a server that trickles bytes keeps a download going for ever"),
    Mutant("empty-dataset-accepted", "data.py",
           "    if empty is not None:",
           "    if False:",
           "a dataset file of no items is accepted and training fails after its last epoch"),
    Mutant("internal-error-traceback", "cli.py",
           "    except Exception as exc:  # the last line of defence",
           "    except FashionlabError as exc:  # the last line of defence",
           "an unexpected exception reaches the user as a traceback"),
    Mutant("failed-run-left-running", "training.py",
           "        _mark(run, \"failed\", f\"internal error: {type(exc).__name__}",
           "        0 and _mark(run, \"failed\", f\"internal error: {type(exc).__name__}",
           "a run that hits a bug stays 'running' in run.json"),
    Mutant("stop-ignored-in-final-writes", "training.py",
           "    run.save_model(model)\n    _stop_point(run, stop, epochs_done)\n",
           "    run.save_model(model)\n",
           "a stop during the final writes goes unnoticed until metrics.json"),
    Mutant("warnings-shown", "cli.py",
           "            warnings.simplefilter(\"ignore\")\n",
           "",
           "library warnings reach the terminal without --debug"),
    Mutant("csv-formulas-kept", "reports.py",
           "csv_safe(results).to_csv(tmp, index=False)",
           "results.to_csv(tmp, index=False)",
           "results.csv keeps cells a spreadsheet would run as formulas"),
    Mutant("download-parents-left", "data.py",
           "    created = outermost_missing(dest)",
           "    created = dest if not dest.exists() else None",
           "a failed download removes its folder but leaves the parents it made"),
    # --- model families and training options (issue 10) ---
    Mutant("cnn-filters-not-doubled", "config.py",
           "config.filters * 2**block for block in range(config.conv_blocks)",
           "config.filters for block in range(config.conv_blocks)",
           "every conv block gets the first block's filters"),
    Mutant("dropout-never-built", "model.py",
           "    return [keras.layers.Dropout(config.dropout)] if config.dropout else []",
           "    return []",
           "the dropout rate is accepted but no Dropout layer is built"),
    Mutant("one-cycle-starts-at-peak", "model.py",
           "    start = config.learning_rate / 25 if config.schedule == \"one_cycle\" else 0.0",
           "    start = config.learning_rate if config.schedule == \"one_cycle\" else 0.0",
           "one-cycle warms up from the peak rate instead of a 25th of it"),
    Mutant("label-smoothing-ignored", "model.py",
           "            if config.label_smoothing else \"sparse_categorical_crossentropy\")",
           "            if False else \"sparse_categorical_crossentropy\")",
           "label smoothing is accepted but the loss is the plain one"),
    Mutant("augmentation-key-per-epoch", "engine.py",
           "self._batch(x_all, y_all, indices), jax.random.fold_in(epoch_key, i))",
           "self._batch(x_all, y_all, indices), epoch_key)",
           "every step of an epoch draws the same augmentation and dropout"),
    Mutant("dropout-state-not-reset", "engine.py",
           "            non_trainable[slot] = jax.random.bits(jax.random.fold_in(key, 1 + slot), (2,), jnp.uint32)",
           "            pass",
           "dropout's random state runs on from the model's, which a checkpoint does not keep"),
    Mutant("augment-flips-every-image", "engine.py",
           "        flipped = jax.random.bernoulli(flip_key, 0.5, (images.shape[0],))",
           "        flipped = jnp.ones((images.shape[0],), bool)",
           "every image is mirrored, not half of them"),
    Mutant("augment-shift-one-sided", "engine.py",
           "jax.random.randint(shift_key, (images.shape[0], 2), 0, 2 * s + 1)",
           "jax.random.randint(shift_key, (images.shape[0], 2), 0, s + 1)",
           "images shift only up and left"),
    Mutant("augment-validation-too", "engine.py",
           "        y_pred, _ = self.model.stateless_call(trainable, non_trainable, x.astype(jnp.float32), "
           "training=False)",
           "        x = augment(jax.random.key(0), x.astype(jnp.float32), Augmentation(2, True))\n"
           "        y_pred, _ = self.model.stateless_call(trainable, non_trainable, x, training=False)",
           "validation images are augmented too"),
    Mutant("early-stop-on-a-tie", "training.py",
           "    return int(np.argmax([row[\"val_accuracy\"] for row in rows])) + 1",
           "    return len(rows) - int(np.argmax([row[\"val_accuracy\"] for row in rows][::-1]))",
           "the best epoch is the last of equal ones, so a tie counts as an improvement"),
    Mutant("best-weights-not-restored", "training.py",
           "    if kept != epochs_done:  # early stopping keeps the best epoch's weights",
           "    if False:",
           "early stopping keeps the last epoch's weights, not the best epoch's"),
    Mutant("best-checkpoint-dropped", "runs.py",
           "            if older not in (epoch, keep):",
           "            if older != epoch:",
           "the best epoch's checkpoint is deleted before the run restores it"),
    Mutant("time-to-accuracy-per-epoch", "training.py",
           "    elapsed = history[\"seconds\"].cumsum()",
           "    elapsed = history[\"seconds\"]",
           "the time to an accuracy is that epoch's seconds, not the time since training began"),
    Mutant("overrides-skip-recipes", "comparison.py",
           "    return config.replace(name=derived_name(start, config), **{k: v for k, v in (overrides or {}).items()",
           "    return config.replace(name=derived_name(start, config), **{k: v for k, v in {}.items()",
           "compare's shared options (--epochs ...) do not reach the variants"),
    Mutant("recipe-options-lost", "cli.py",
           "    config = base.replace(**_overrides(args))",
           "    config = base",
           "train --recipe ignores the options given with it"),
    Mutant("tensorboard-validation-as-train", "tensorboard.py",
           "        return \"validation/\" + key[4:]",
           "        return \"train/\" + key[4:]",
           "validation figures are written over the training ones"),

    Mutant("sweep-scores-best-epoch", "sweeps.py",
           "        value = _kept_accuracy(done.task.run_dir, metrics)",
           "        value = metrics[\"best_val_accuracy\"]",
           "a trial is scored by its best epoch, not by the weights its run keeps"),
    Mutant("sweep-trials-see-test", "sweeps.py",
           "{\"trial\": trial.number}, test=False)",
           "{\"trial\": trial.number}, test=True)",
           "every trial evaluates the test set"),
    Mutant("sweep-never-prunes", "sweeps.py",
           "                self.pruned_at = epoch + 1\n                self.model.stop_training = True",
           "                self.pruned_at = epoch + 1",
           "the pruner's decision is recorded but the training goes on"),
    Mutant("sweep-stopped-trials-abandoned", "sweeps.py",
           "            stopped = next((t for t in self.stopped_trials() if self.take_over(t)), None)",
           "            stopped = None",
           "a trial whose process was killed is never taken over"),
    Mutant("sweep-sampler-unseeded", "sweeps.py",
           "            self.study.sampler = make_sampler(self.sampler, trial_seed(self.sampler_seed, len(mine)))",
           "            self.study.sampler = make_sampler(self.sampler, None)",
           "the sampler is not seeded: the same seed gives other trials"),
    Mutant("sweep-test-before-the-end", "sweeps.py",
           "    if best is not None and not ended:",
           "    if best is not None and False:",
           "the test set is evaluated while trials still run, for a trial that may not be the chosen one"),
    Mutant("predict-no-passthrough", "prediction.py",
           "    if invert is None and flat.size == (28, 28) and _is_gray(flat):",
           "    if False:",
           "a 28 x 28 image in the data set's format is trimmed and rescaled like a photo"),
    Mutant("predict-gray-background", "prediction.py",
           "    pixels = np.asarray(image, dtype=np.float32)\n    if pixels.ndim == 2:",
           "    pixels = np.asarray(image.convert(\"L\"), dtype=np.float32)\n    if pixels.ndim == 2:",
           "the garment is told from its background by gray level only, not by colour"),
    Mutant("predict-flat-background", "prediction.py",
           "    difference = np.abs(pixels - _background(pixels))",
           "    difference = np.abs(pixels - np.median(_border(pixels), axis=0))",
           "the background is one colour, so a backdrop lit from one side is taken for the garment"),
    Mutant("predict-mirror-everything", "prediction.py",
           "    flags &= facing_right(pixels)\n",
           "",
           "every photo is also read mirrored, not only those that look turned"),
    Mutant("export-unchecked", "export.py",
           "        if checked[\"max_abs_difference\"] > TOLERANCE or checked[\"top1_differences\"]:",
           "        if False:",
           "an ONNX file that disagrees with the Keras model is written anyway"),
    Mutant("serve-batch-results-shifted", "server.py",
           "mirrored[start:end]))\n                start = end",
           "mirrored[start:end]))",
           "requests read in one batch all get the first request's results"),
    Mutant("serve-streamed-body-unbounded", "server.py",
           "                if seen > self.limit:\n                    raise _TooLarge()",
           "                if False:\n                    raise _TooLarge()",
           "a body streamed without Content-Length is read whatever its size"),
    Mutant("serve-default-all-interfaces", "cli.py",
           "    serve.add_argument(\"--host\", default=\"127.0.0.1\",",
           "    serve.add_argument(\"--host\", default=\"0.0.0.0\",",
           "the server listens on every network interface unless told otherwise"),
    Mutant("notebook-least-confident-mistakes", "notebook.py",
           "        worst = wrong[np.argsort(-proba[wrong, predicted[wrong]], kind=\"stable\")][:n]",
           "        worst = wrong[np.argsort(proba[wrong, predicted[wrong]], kind=\"stable\")][:n]",
           "run.mistakes shows the least confident mistakes, not the most"),
    Mutant("notebook-confusion-by-column", "notebook.py",
           "            matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)",
           "            matrix = matrix / np.maximum(matrix.sum(axis=0, keepdims=True), 1)",
           "the normalized confusion matrix divides by predictions, not by the true class"),
]


# Not a bug: the code as it is, which the suite must pass for the kills to mean anything.
BASELINE = Mutant("baseline", "cli.py", "", "", "no change")


def run_mutant(mutant: Mutant, python: str, quick: bool, timeout: float) -> tuple[str, float, str]:
    """('killed' | 'survived' | 'stale' | 'timeout', seconds, detail)."""
    source = ROOT / "src" / "fashionlab" / mutant.module
    text = source.read_text(encoding="utf-8")
    if mutant is not BASELINE and text.count(mutant.old) != 1:
        return "stale", 0.0, f"{mutant.old!r} occurs {text.count(mutant.old)} times in {mutant.module}"
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.id}-") as scratch:
        scratch = Path(scratch)
        shutil.copytree(ROOT / "src", scratch / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
        shutil.copytree(ROOT / "tests", scratch / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "examples", scratch / "examples")  # the notebooks tests/test_notebooks.py runs
        shutil.copy(ROOT / "pyproject.toml", scratch)
        (scratch / "src" / "fashionlab" / mutant.module).write_text(text.replace(mutant.old, mutant.new),
                                                                    encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(scratch / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
        # The module's own tests first (a quick kill), then, if they pass, the whole suite.
        has_own = mutant is not BASELINE and (scratch / mutant.own_tests).exists()
        rounds = [[mutant.own_tests]] if has_own else []
        if not quick or not rounds:
            rounds.append(["tests"])
        started = time.perf_counter()
        for tests in rounds:
            try:
                done = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                      cwd=scratch, env=env, capture_output=True, text=True,
                                      timeout=max(timeout - (time.perf_counter() - started), 1))
            except subprocess.TimeoutExpired:
                return "timeout", time.perf_counter() - started, f"no result after {timeout:.0f} s"
            if done.returncode != 0:
                break
        seconds = time.perf_counter() - started
    failed = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    if done.returncode == 0:
        return "survived", seconds, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    return "killed", seconds, (failed[0] if failed else done.stdout.strip().splitlines()[-1])[:160]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="+", metavar="ID")
    parser.add_argument("--quick", action="store_true", help="only each module's own tests")
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--skip-baseline", action="store_true", help="do not check the unchanged code first")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if not args.only or m.id in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.id:32} {m.module:16} {m.why}")
        return
    if not args.skip_baseline:
        outcome, seconds, detail = run_mutant(BASELINE, sys.executable, quick=False, timeout=args.timeout)
        print(f"baseline: the unchanged code {'passes' if outcome == 'survived' else 'FAILS'} ({seconds:.0f} s) "
              f"{detail}", flush=True)
        if outcome != "survived":
            sys.exit("fix the suite first: every mutant would count as killed")
    print(f"{len(mutants)} mutants, {args.jobs} at a time, {'own tests only' if args.quick else 'whole suite'}",
          flush=True)
    started = time.perf_counter()
    outcomes: dict[str, list[str]] = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [(m, pool.submit(run_mutant, m, sys.executable, args.quick, args.timeout)) for m in mutants]
        for mutant, future in futures:
            outcome, seconds, detail = future.result()
            outcomes.setdefault(outcome, []).append(mutant.id)
            print(f"{outcome:8} {mutant.id:32} {seconds:6.0f} s  {detail}", flush=True)
    killed = len(outcomes.get("killed", [])) + len(outcomes.get("timeout", []))
    print(f"\nkilled {killed} of {len(mutants)} in {time.perf_counter() - started:.0f} s"
          + "".join(f"; {name}: {', '.join(ids)}" for name, ids in outcomes.items() if name in ("survived", "stale")))
    sys.exit(1 if outcomes.get("survived") or outcomes.get("stale") else 0)


if __name__ == "__main__":
    main()
