"""The `fashionlab` command: parses arguments and calls the library, nothing more.

    fashionlab train --epochs 10 && fashionlab predict runs/<run> --index 0 1 2
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import logging
import os
import re
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fashionlab import FashionlabError, __version__, data
from fashionlab.comparison import DEFAULT_VARIANTS, MAX_SEEDS, VARIANTS
from fashionlab.config import FIELDS, TYPES, TrainConfig, field_type, load_config, with_changes
from fashionlab.data import DataSource
from fashionlab.datasets import BUILT_IN, MAX_CLASSES, Dataset, dataset_problem, resolve
from fashionlab.deadlines import MODEL_TIMEOUT, timeout_problem
from fashionlab.errors import ConfigError, Interrupted, RunError, did_you_mean, reason
from fashionlab.interrupts import stop_requests
from fashionlab.lrfind import MAX_STEPS, RATES
from fashionlab.sweeps import MAX_TRIALS, PRUNERS, SAMPLERS
from fashionlab.uncertainty import MAX_PASSES

MODEL_KEYS = ("model", "depth", "width", "activation", "batch_norm", "kernel_initializer", "dropout", "alpha_dropout",
              "filters", "conv_blocks", "convs_per_block", "whiten", "scale_inputs", "tta")
# compare names each variant itself, and the tutorial series' variants set these keys.
COMPARE_OUT = "runs/compare"
COMPARE_KEYS = tuple(name for name in FIELDS
                     if name not in ("name", "batch_norm", "scale_inputs", "activation", "kernel_initializer"))


def flags_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """How a command's options say the library's argument names: top_k -> --top-k, verify=False -> --no-verify."""
    flags = {}
    for action in parser._actions:  # argparse offers no public list of a parser's options
        if not action.option_strings:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            flags[f"{action.dest}=True"], flags[f"{action.dest}=False"] = action.option_strings[:2]
        elif action.nargs == 0 and isinstance(action.const, bool):  # store_true, store_false
            flags[f"{action.dest}={action.const}"] = action.option_strings[-1]
        else:
            flags[action.dest] = action.option_strings[-1]
    return flags


def in_cli_terms(error: FashionlabError, flags: dict[str, str]) -> str:
    """The error's message with the arguments it names said as this command's flags, and
    `resume('RUN')` as the command that does it; a term the command has no flag for stays as it is."""
    message = str(error)
    for term in error.terms:
        said = flags.get(term)
        resume = re.fullmatch(r"resume\((.+)\)", term, flags=re.DOTALL)
        if said is None and resume:
            try:
                said = f"fashionlab train --resume {shlex.quote(str(ast.literal_eval(resume[1])))}"
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                pass
        if said is not None:
            message = message.replace(f"`{term}`", said)
    return message


def a_path(text: str) -> str:
    """An argparse type: a path, not empty (which would mean the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path; give a file or folder name")
    return text


def a_dataset(text: str) -> str:
    """An argparse type: a built-in data set's name, or a folder given as a path."""
    problem = dataset_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem.removeprefix("dataset must be ").join(("expected ", "")))
    return text


def a_name(text: str) -> str:
    """An argparse type: a name, not empty (which would silently mean the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name")
    return text


def a_recipe_name(text: str) -> str:
    """An argparse type: a recipe's name, not empty (get() checks that it exists)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty recipe name; `fashionlab recipes` lists them")
    return text


def _int_between(low: int, high: int | None = None):
    """An argparse type: an int in low..high (no upper bound when high is None)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low or high is not None and value > high:
            allowed = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in its message: "invalid int value: 'abc'"
    return parse


def _rate(text: str) -> float:
    """An argparse type: a learning rate for lr-find's range (lrfind.RATES)."""
    value = float(text)
    low, high = RATES
    if not low <= value <= high:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a learning rate between {low:g} and {high:g}, got {text}")
    return value


_rate.__name__ = "learning rate"


def a_timeout(text: str) -> float:
    """An argparse type: a model timeout in seconds (deadlines.TIMEOUT_RANGE)."""
    value = float(text)
    problem = timeout_problem(value)  # NaN fails too
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


a_timeout.__name__ = "seconds"


def _add_config_options(parser: argparse.ArgumentParser, keys: tuple[str, ...] | None = None,
                        title: str = "recipe (defaults: the tutorial)") -> None:
    """One option per TrainConfig field, typed by its annotation; unset options stay out of the namespace."""
    group = parser.add_argument_group(title)
    for name, f in FIELDS.items():
        if keys is not None and name not in keys:
            continue
        kind = field_type(TYPES[name])
        flag = "--" + name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {f.default})".replace("%", "%%")  # argparse formats help
        if kind.base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)
        else:
            group.add_argument(flag, type=kind.base, choices=kind.choices, default=argparse.SUPPRESS,
                               help=help_text, metavar=None if kind.choices else name.upper())


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}


def _base_config(args: argparse.Namespace) -> TrainConfig:
    """The config before any option: the named recipe, the config file, or the defaults."""
    if getattr(args, "recipe", None) is not None:
        from fashionlab import recipes

        return recipes.get(args.recipe).config()
    return load_config(getattr(args, "config", None))


def _config_from(args: argparse.Namespace) -> TrainConfig:
    """The base config with the options applied; named after what they changed unless --name says."""
    return with_changes(_base_config(args), _overrides(args))


def _data_from(args: argparse.Namespace) -> DataSource:
    return DataSource(args.data_dir, verify=args.verify)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR", type=a_path,
                        help="folder with the four *-ubyte(.gz) files (else the data set's own places: for "
                             "Fashion-MNIST $FASHIONLAB_DATA, the Keras cache, /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip the SHA-256 check against the official files (your own IDX data)")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def cmd_train(args: argparse.Namespace) -> None:
    with stop_requests():  # from the start: a signal while Keras imports is a stop request too
        _train(args)


def _train(args: argparse.Namespace) -> None:
    verbose = 0 if args.quiet else None
    if args.resume is not None:
        given = [name for name in FIELDS if hasattr(args, name)]
        given += [name for name in ("config", "run_dir") if getattr(args, name)]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ConfigError(f"--resume continues the run with its own settings; drop {flags}")
        from fashionlab.training import resume

        result = resume(args.resume, data=_data_from(args), verbose=verbose, tensorboard=args.tensorboard,
                        mlflow=args.mlflow)
    else:
        config = _config_from(args)  # before the slow Keras import, so a bad option fails fast
        from fashionlab.training import train

        result = train(config, args.run_dir, data=_data_from(args), verbose=verbose, tensorboard=args.tensorboard,
                       recipe=args.recipe, command=args.command_line, mlflow=args.mlflow)
    m = result.metrics
    print(f"test accuracy {m['test_accuracy']:.4f}   test loss {m['test_loss']:.4f}   "
          f"best val accuracy {m['best_val_accuracy']:.4f} (epoch {m['best_epoch']})   "
          f"{m['median_seconds_per_epoch']:.2f} s/epoch")
    if "temperature" in m:
        t = m["temperature"]
        print(f"temperature {t['temperature']:.3f} (fitted on validation): test ECE {100 * t['test_ece_before']:.2f} % "
              f"-> {100 * m['test_ece']:.2f} %, test loss {t['test_loss_before']:.4f} -> {m['test_loss']:.4f}")
    print(printable(f"run directory: {result.run.path}   (open {result.run.path / 'report.html'} for the full report)"))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from fashionlab.evaluation import evaluate, format_report

    report = evaluate(args.run, data=_data_from(args), allow_incomplete=args.allow_incomplete)
    if args.json:
        _print_json(report)
    else:
        print(format_report(report))
        print(printable(f"confusion matrix: {args.run}/confusion_matrix.png, {args.run}/confusion_matrix.csv"))


def _model_source(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The run directory and the image files of `predict RUN IMAGE...` / `predict --onnx FILE IMAGE...`."""
    given = ([args.run] if args.run is not None else []) + list(getattr(args, "images", []))
    if args.onnx is not None:
        if given and os.path.isdir(given[0]):
            what = "a run directory" if os.path.isfile(os.path.join(given[0], "run.json")) else "a folder"
            raise ConfigError(f"{given[0]} is {what}: with --onnx FILE, give image files only (a run directory "
                              f"goes without --onnx)")
        return None, given
    if not given:
        raise ConfigError("give a run directory (or --onnx FILE)")
    if given[0].endswith(".onnx") and os.path.isfile(given[0]):
        raise ConfigError(f"{given[0]} is an ONNX file: pass it as --onnx {given[0]}")
    return given[0], given[1:]


def cmd_predict(args: argparse.Namespace) -> None:
    from fashionlab.prediction import predict

    run, images = _model_source(args)
    results = predict(run, indices=args.indices or (), images=images, top_k=args.top_k, invert=args.invert,
                      data=_data_from(args), allow_incomplete=args.allow_incomplete, onnx=args.onnx,
                      model_timeout=args.model_timeout, mc_dropout=args.mc_dropout)
    if args.json:
        _print_json(results)
        return
    for r in results:
        if r["class_id"] is None:  # no garment found: no class, the hint says why
            print(printable(f"{r['input']}: no class"))
        else:
            others = ", ".join(f"{t['class_name']} {_probability(t)}" for t in r["top_k"][1:])
            how = (" mirrored" if r.get("mirrored") else "") + (f" turned {r['turned']}°" if r.get("turned") else "")
            print(printable(f"{r['input']}: {r['class_id']} {r['class_name']} ({_probability(r)}){how}"
                            + (f"   next: {others}" if others else "")))
        if r.get("hint"):
            print(printable(f"  {r['hint']}"))


def _probability(result: dict[str, Any]) -> str:
    """A probability as predict prints it; with MC dropout, its spread over the passes."""
    return f"{result['probability']:.3f}" + (f" ± {result['spread']:.3f}" if "spread" in result else "")


def cmd_lr_find(args: argparse.Namespace) -> None:
    config = _config_from(args)  # before the slow Keras import, so a bad option fails fast
    from fashionlab.lrfind import lr_find

    found = lr_find(config, args.out, data=_data_from(args), start=args.start, end=args.end, steps=args.steps,
                    verbose=not args.json)
    if args.json:
        _print_json({"folder": str(found.folder), **found.record()})
        return
    stopped = f"stopped at step {found.diverged_at}: the loss diverged" if found.diverged_at else "no divergence"
    print(f"{len(found.losses)} steps from learning rate {found.learning_rates[0]:.3g} to "
          f"{found.learning_rates[-1]:.3g} in {found.seconds:.1f} s ({stopped})")
    steepest = f"; steepest descent at {found.steepest:.3g}" if found.steepest is not None else ""
    print(f"smoothed loss lowest at {found.minimum:.3g}{steepest}")
    print(f"suggested learning rate: {found.suggestion:g} (the lowest point / 10; {config.name} has "
          f"{config.learning_rate:g})")
    for said in found.notes():
        print(f"note: {in_cli_terms(ConfigError(said, terms=['start', 'end']), flags_of(args.command_parser))}")
    print(printable(f"train with it: {_train_command(args, found.suggestion)}"))
    print(printable(f"   or: fashionlab train --config {shlex.quote(str(found.folder / 'config.json'))}"))
    print(printable(f"figure: {found.folder / 'lr_find.png'}   steps: {found.folder / 'lr_find.csv'}"))


def _train_command(args: argparse.Namespace, learning_rate: float) -> str:
    """The train command for what lr-find searched, at `learning_rate`: its recipe or config file, its
    options and data options."""
    words = ["fashionlab", "train"]
    if args.recipe is not None or args.config is not None:
        words += ["--recipe", args.recipe] if args.recipe is not None else ["--config", args.config]
    for name, value in _overrides(args).items():
        flag = "--" + name.replace("_", "-")
        words += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    words += ["--learning-rate", f"{learning_rate:g}"]
    if args.data_dir is not None:
        words += ["--data-dir", args.data_dir]
    if not args.verify:
        words.append("--no-verify")
    return shlex.join(words)


def cmd_export(args: argparse.Namespace) -> None:
    from fashionlab.export import export, format_export

    result = export(args.run, format=args.format, out=args.out, data=_data_from(args),
                    allow_incomplete=args.allow_incomplete)
    if args.json:
        _print_json(result)
    else:
        for line in format_export(result).splitlines():
            print(printable(line))


MAKE_TOKEN = object()  # --token given alone


def cmd_serve(args: argparse.Namespace) -> None:
    from fashionlab.serve import serve

    if args.run is not None and args.onnx is not None:
        raise ConfigError("give a run directory or --onnx FILE, not both")
    if args.run is None and args.onnx is None:
        taken = [v for v in [args.token, *(args.cors or [])] if isinstance(v, str) and os.path.exists(v)]
        if taken:  # `serve --token runs/X`: the option took the run as its value
            raise ConfigError(f"--token or --cors took {taken[0]} as its value; put the run first: "
                              f"fashionlab serve {taken[0]} --token ...")
        raise ConfigError("give a run directory (or --onnx FILE)")

    token, made = _serve_token(args)

    def ready(url: str) -> None:
        page = f"{url}?token={token}" if made else url
        said = "; every request but health needs the token" if token else ""
        print(printable(f"serving {args.onnx or args.run} at {page}   (Ctrl-C stops{said})"), flush=True)

    def starting(line: str) -> None:  # on stderr: standard output says only where it serves
        print(printable(f"fashionlab: {line}"), file=sys.stderr, flush=True)

    serve(args.run, onnx=args.onnx, host=args.host, port=args.port, top_k=args.top_k, data=_data_from(args),
          allow_incomplete=args.allow_incomplete, model_timeout=args.model_timeout, allowed_hosts=args.allowed_hosts,
          token=token, cors=args.cors or (), metrics=not args.no_metrics, model_name=args.model_name, ready=ready,
          progress=starting)


def _serve_token(args: argparse.Namespace) -> tuple[str | None, bool]:
    """The server's token and whether it was made here: --token TOKEN, --token alone (a new one), the
    first line of --token-file, else FASHIONLAB_TOKEN; none when nothing names one."""
    import secrets

    from fashionlab.files import read_text

    if args.token is not None and args.token_file is not None:
        raise ConfigError("give --token or --token-file, not both")
    from fashionlab.serve.layers import token_problem

    if args.token is MAKE_TOKEN:
        return secrets.token_urlsafe(24), True
    if args.token_file is not None:
        text = read_text(args.token_file, what="token file", error=ConfigError, limit=4096, follow_links=True)
        token, source = (text.splitlines() or [""])[0].strip(), f"--token-file {args.token_file}"
        if not token:
            raise ConfigError(f"{source}: its first line is empty; write the token there")
    elif args.token:
        token, source = args.token, "--token"
    else:
        token, source = os.environ.get("FASHIONLAB_TOKEN"), "FASHIONLAB_TOKEN"
    problem = token_problem(token) if token else None
    if problem:
        raise ConfigError(f"{source}: {problem}")
    return token or None, False


def cmd_ensemble(args: argparse.Namespace) -> None:
    with stop_requests():  # from the start: a signal while Keras imports is a stop request too
        from fashionlab.ensembles import ensemble, format_ensemble

        result = ensemble(args.runs, args.out, data=_data_from(args), command=args.command_line)
    if args.json:
        _print_json({"run": str(result.run.path), **result.metrics})
    else:
        for line in format_ensemble(result).splitlines():
            print(printable(line))


def cmd_compare(args: argparse.Namespace) -> None:
    if args.runs is not None:
        return _compare_runs(args)
    if args.study is not None and args.storage is None:
        raise ConfigError("--study names a study in --storage; give --storage too")
    base, overrides = _base_config(args), _overrides(args)
    variants = args.variants or list(DEFAULT_VARIANTS)
    seeds, jobs, out = args.seeds or 3, args.jobs or os.cpu_count() or 1, args.out or COMPARE_OUT
    options = {"variants": variants, "seeds": seeds, "base": base, "overrides": overrides, "jobs": jobs,
               "data": _data_from(args), "force": args.force, "progress": lambda line: print(line, flush=True),
               "recipe": args.recipe, "command": args.command_line}
    try:
        with stop_requests():  # from the start: a signal while Keras imports is a stop request too
            if args.storage is not None:
                result = _shared_comparison(args, out, options)
            else:
                from fashionlab.comparison import compare

                result = compare(out, **options, mlflow=args.mlflow)
    except (Interrupted, KeyboardInterrupt):
        raise Interrupted(f"interrupted; finished runs are kept in {out}: run the same command again "
                          f"to resume") from None
    if result is not None:  # None: other workers still train the shared comparison's last runs
        _print_comparison(result)


def _shared_comparison(args: argparse.Namespace, out: str, options: dict[str, Any]):
    """compare --storage: this machine's share of a comparison many machines train."""
    if args.mlflow is not None:
        raise ConfigError("--mlflow logs a comparison trained on one machine; drop it with --storage")
    from fashionlab.sweeps import compare_shared

    return compare_shared(out, storage=args.storage, study=args.study, **options)


def _compare_runs(args: argparse.Namespace) -> None:
    """compare --runs: the runs given, no training; the options that say what to train are refused."""
    given = [f"--{name.replace('_', '-')}" for name in ("variants", "seeds", "jobs", "recipe", "config")
             if getattr(args, name) is not None] + [f"--{name.replace('_', '-')}" for name in _overrides(args)]
    if given:
        raise ConfigError(f"--runs compares runs already trained; drop {', '.join(given)} (they say what to train)")
    from fashionlab.comparison import compare_runs
    from fashionlab.rundir import default_run_dir

    out = args.out or default_run_dir("comparison").as_posix()
    with stop_requests():
        _print_comparison(compare_runs(out, args.runs, force=args.force, command=args.command_line,
                                       mlflow=args.mlflow))


def _print_comparison(result) -> None:
    print()
    print("\n".join(printable(line) for line in (result.out / "summary.md").read_text(encoding="utf-8").split("\n")))
    print(printable(f"comparison: {result.out}/report.html, {result.out}/curves.png, {result.out}/results.csv"))


def cmd_sweep(args: argparse.Namespace) -> None:
    try:
        with stop_requests():  # from the start: a signal while Optuna and Keras import is a stop request too
            from fashionlab.sweeps import sweep

            out = args.out or os.path.join("runs", f"sweep-{os.path.splitext(os.path.basename(args.space))[0]}")
            result = sweep(args.space, out, trials=args.trials, jobs=args.jobs, storage=args.storage,
                           study=args.study, sampler=args.sampler, sampler_seed=args.sampler_seed,
                           pruner=args.pruner, data=_data_from(args), force=args.force, overrides=_overrides(args),
                           progress=lambda line: print(line, flush=True), command=args.command_line,
                           mlflow=args.mlflow)
    except (Interrupted, KeyboardInterrupt):
        raise Interrupted("interrupted; finished trials are kept in the study, and running the same command "
                          "again resumes the stopped ones") from None
    print()
    print(result.summary, end="")
    print(f"\nsweep: {result.out}/report.html, {result.out}/trials.csv" +
          (f", {result.out}/best.toml" if result.best is not None else ""))
    if result.best is None and result.ended:
        raise RunError(f"no trial completed; {result.out}/trials.csv says why each failed")


def cmd_summary(args: argparse.Namespace) -> None:
    from fashionlab.model import build_model, summary_text
    from fashionlab.preprocessing import Scaler

    # The scaler's values do not change the architecture or its parameter counts.
    print(summary_text(build_model(_config_from(args), Scaler(mean=0.0, std=1.0))))


def cmd_recipes(args: argparse.Namespace) -> None:
    from fashionlab import recipes

    if args.name is not None:
        print(recipes.get(args.name).path.read_text(encoding="utf-8"), end="")
    else:
        print(recipes.listing())
        print("\nfashionlab train --recipe NAME trains one; fashionlab recipes NAME shows its keys")


def cmd_runs(args: argparse.Namespace) -> None:
    from fashionlab import catalog

    entries = catalog.listing(args.folder, status=args.status, recipe=args.recipe, dataset=args.dataset)
    if args.json:
        _print_json([e.as_dict() for e in entries])
    elif entries:
        print(catalog.table(entries, cell=printable))
    else:
        filters = " matching " + ", ".join(f"{k} {v}" for k, v in (("status", args.status), ("recipe", args.recipe),
                                                                   ("data set", args.dataset)) if v) \
            if args.status or args.recipe or args.dataset else ""
        print(printable(f"no runs under {args.folder}{filters}; `fashionlab train` makes one"))


def _dataset_of(args: argparse.Namespace) -> Dataset:
    return resolve(args.dataset)


def cmd_data_info(args: argparse.Namespace) -> None:
    dataset = _dataset_of(args)
    splits = _data_from(args).of(dataset).splits(args.validation_size)
    print(printable(f"data set: {dataset.title} ({dataset.classes} classes)"))
    for line in data.describe(splits, dataset.class_names).splitlines():
        print(printable(line))


def cmd_data_path(args: argparse.Namespace) -> None:
    print(printable(str(DataSource(args.data_dir, dataset=_dataset_of(args)).locate())))


def cmd_data_download(args: argparse.Namespace) -> None:
    dataset = _dataset_of(args)
    dest = data.download(args.dest, url=args.url, dataset=dataset)
    print(printable(f"verified the four {dataset.title} files in {dest}"))


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (the usage block is what --help is for), and
    the closest command, choice or option to a misspelled one (Python 3.11's argparse has no
    suggest_on_error)."""

    def error(self, message: str):
        choice = re.fullmatch(r"(.*invalid choice: '(.*)') \(choose from (.*)\)", message)
        if choice is not None:
            close = did_you_mean(choice[2], re.findall(r"'([^']*)'", choice[3]))
            message = choice[1] + close if close else message
        self.exit(2, printable(f"fashionlab: error: {message}; see {self.prog} --help") + "\n")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # said by the command that was given them, with its closest option
            command = getattr(parsed, "command_parser", self)
            options = [option for action in command._actions for option in action.option_strings]
            unknown = next((extra.split("=")[0] for extra in extras if extra.startswith("-")), "")
            command.error(f"unrecognized arguments: {' '.join(extras)}" + did_you_mean(unknown, options, quote=False))
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fashionlab", description="Fashion-MNIST, from the tf.keras tutorial's "
                                     "MLP to CNN recipes: train, evaluate, predict, compare, sweep, export, serve.")
    parser.add_argument("--version", action="version", version=f"fashionlab {__version__}")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = _shared_flags()
    for add in (_train_parser, _lr_find_parser, _evaluate_parser, _predict_parser, _export_parser, _serve_parser,
                _compare_parser, _ensemble_parser, _sweep_parser, _runs_parser, _summary_parser, _recipes_parser,
                _data_parser):
        add(commands, shared)
    return parser


def _flags(*declared: tuple[tuple[str, ...], dict[str, Any]]) -> argparse.ArgumentParser:
    """A parent parser: flags declared once, given to every command that takes them."""
    parent = argparse.ArgumentParser(add_help=False)
    for names, options in declared:
        parent.add_argument(*names, **options)
    return parent


def _shared_flags() -> dict[str, argparse.ArgumentParser]:
    """The flags several commands take, by name: each command lists the ones it takes as parents."""
    incomplete = {"action": "store_true", "help": "use an unfinished run's last checkpoint"}
    data = _flags()
    _add_data_options(data)
    return {
        # --debug before or after the command
        "debug": _flags((("--debug",), {"action": "store_true", "default": argparse.SUPPRESS,
                                         "help": "show library warnings, and the traceback of an internal error"})),
        "data": data,
        "run": _flags((("run",), {"metavar": "RUN", "type": a_path, "help": "run directory"}),
                      (("--allow-incomplete",), incomplete)),
        "run or onnx": _flags((("run",), {"metavar": "RUN", "type": a_path, "nargs": "?",
                                           "help": "run directory (none with --onnx)"}),
                              (("--onnx",), {"metavar": "FILE", "type": a_path, "help": "use this exported model "
                                             "(fashionlab export) with onnxruntime alone, not a run's"}),
                              (("--allow-incomplete",), incomplete)),
        "answers": _flags((("--top-k",), {"type": _int_between(1, MAX_CLASSES), "default": 3, "metavar": "K",
                                          "help": "classes given per image, 1 to the model's class count "
                                                  "(default: 3)"}),
                          (("--model-timeout",), {"type": a_timeout, "default": MODEL_TIMEOUT, "metavar": "SECONDS",
                                                  "help": f"how long the model may take on a batch: predict stops an "
                                                          f"ONNX model's call, serve answers 504 (default: "
                                                          f"{MODEL_TIMEOUT:g})"})),
        "json": _flags((("--json",), {"action": "store_true", "help": "print JSON"})),
        "mlflow": _flags((("--mlflow",), {"metavar": "URI", "nargs": "?", "const": True, "type": a_name,
                                          "help": "also log to this MLflow tracking server (alone: "
                                                  "MLFLOW_TRACKING_URI; experiment: MLFLOW_EXPERIMENT_NAME, else "
                                                  "fashionlab); needs fashionlab[mlflow]"})),
        "force": _flags((("--force",), {"action": "store_true", "help": "write into an --out folder that holds "
                                        "other files (same-named ones are replaced)"})),
        "dataset": _flags((("--dataset",), {"metavar": "NAME|DIR", "default": "fashion-mnist", "type": a_dataset,
                                            "help": f"a built-in data set ({', '.join(BUILT_IN)}; default: "
                                                    f"fashion-mnist), or a folder of your own given as a path with "
                                                    f"a / (four IDX files and classes.txt)"})),
    }


def _command(commands, name: str, shared: dict[str, argparse.ArgumentParser], parents: Sequence[str],
             handler: Callable[[argparse.Namespace], Any], help: str) -> argparse.ArgumentParser:
    command = commands.add_parser(name, parents=[shared["debug"], *(shared[p] for p in parents)], help=help)
    command.set_defaults(command_parser=command, handler=handler)
    return command


def _train_parser(commands, shared) -> None:
    train = _command(commands, "train", shared, ["data", "mlflow"], cmd_train, "train a model into a new run directory")
    source = train.add_mutually_exclusive_group()
    source.add_argument("--recipe", metavar="NAME", type=a_recipe_name,
                        help="start from a named recipe (`fashionlab recipes` lists them)")
    source.add_argument("--config", metavar="FILE", type=a_path,
                        help="start from a TOML file (or a run's config.json) of config keys")
    train.add_argument("--run-dir", metavar="PATH", type=a_path,
                       help="where to write the run (default: runs/<time>-<name>)")
    train.add_argument("--resume", metavar="RUN", type=a_path,
                       help="continue an interrupted or failed run from its last finished epoch, with its own settings")
    train.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    train.add_argument("--tensorboard", metavar="DIR", type=a_path,
                       help="also write the scalars for `tensorboard --logdir DIR` (needs fashionlab[tensorboard])")
    _add_config_options(train)


def _lr_find_parser(commands, shared) -> None:
    finder = _command(commands, "lr-find", shared, ["data", "json"], cmd_lr_find,
                      "find a learning rate: train while it grows exponentially, and watch the loss")
    source = finder.add_mutually_exclusive_group()
    source.add_argument("--recipe", metavar="NAME", type=a_recipe_name,
                        help="start from a named recipe (`fashionlab recipes` lists them)")
    source.add_argument("--config", metavar="FILE", type=a_path,
                        help="start from a TOML file (or a run's config.json) of config keys")
    finder.add_argument("--start", type=_rate, default=1e-7, metavar="LR", help="the first learning rate "
                        "(default: 1e-7)")
    finder.add_argument("--end", type=_rate, default=10.0, metavar="LR", help="the last learning rate (default: 10)")
    finder.add_argument("--steps", type=_int_between(10, MAX_STEPS), default=200, metavar="N",
                        help="training steps from start to end, one batch each (default: 200)")
    finder.add_argument("--out", metavar="DIR", type=a_path,
                        help="where to write lr_find.png, lr_find.csv, lr_find.json and config.json (default: "
                             "runs/<time>-<name>-lr-find)")
    _add_config_options(finder, tuple(name for name in FIELDS if name != "learning_rate"),
                        "the config searched, as train's options (all but the learning rate, which the search sets)")


def _evaluate_parser(commands, shared) -> None:
    _command(commands, "evaluate", shared, ["run", "json", "data"], cmd_evaluate,
             "test loss, accuracy, per-class scores, confusion matrix")


def _predict_parser(commands, shared) -> None:
    predict = _command(commands, "predict", shared, ["run or onnx", "answers", "data"], cmd_predict,
                       "class names for test images or your own image files")
    predict.add_argument("images", metavar="IMAGE", type=a_path, nargs="*", help="PNG/JPEG files to classify")
    predict.add_argument("--index", dest="indices", type=int, nargs="+", metavar="I", help="test-set image indices")
    predict.add_argument("--mc-dropout", type=_int_between(2, MAX_PASSES), metavar="N",
                         help="average N passes (2 to 1000; the server takes 2 to 100) with the model's dropout on "
                              "(Monte-Carlo dropout) and give each probability's spread over them (± one standard "
                              "deviation); needs a run trained with dropout")
    predict.add_argument("--invert", action=argparse.BooleanOptionalAction, default=None,
                         help="invert images by gray level, or not (default: the garment is told from its "
                              "background by colour)")
    predict.add_argument("--json", action="store_true", help="print JSON, one object per input")


def _export_parser(commands, shared) -> None:
    export = _command(commands, "export", shared, ["run", "json", "data"], cmd_export,
                      "write a run's model as an ONNX file, checked against Keras")
    export.add_argument("--format", choices=("onnx",), default="onnx", help="file format (default: onnx)")
    export.add_argument("--out", metavar="FILE", type=a_path, help="where to write it (default: RUN/model.onnx)")


def _serve_parser(commands, shared) -> None:
    serve = _command(commands, "serve", shared, ["run or onnx", "answers", "data"], cmd_serve,
                     "a prediction page and JSON API for a model, on http://127.0.0.1:8000/")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=_int_between(0, 65535), default=8000, metavar="PORT",
                       help="port (default: 8000; 0: any free port)")
    serve.add_argument("--allow-host", dest="allowed_hosts", action="append", default=[], metavar="NAME", type=a_name,
                       help="also answer requests whose Host header names NAME (behind a proxy; *.example: every "
                            "name under it); by default only localhost, IP addresses and this machine's names "
                            "(against DNS rebinding)")
    serve.add_argument("--token", nargs="?", const=MAKE_TOKEN, metavar="TOKEN", type=a_name,
                       help="ask every request but health checks for Authorization: Bearer TOKEN (the page: "
                            "open /?token=TOKEN); alone: a new token, printed with the page's address. Other "
                            "users of this machine can read a TOKEN given here: prefer --token-file or "
                            "FASHIONLAB_TOKEN, which is used when neither is given")
    serve.add_argument("--token-file", metavar="FILE", type=a_path, help="the token: this file's first line")
    serve.add_argument("--cors", nargs="+", metavar="ORIGIN",
                       help="let pages of these origins call the API (https://lab.example, or *); none by default")
    serve.add_argument("--no-metrics", action="store_true", help="no /metrics (Prometheus) endpoint")
    serve.add_argument("--model-name", metavar="NAME", type=a_name,
                       help="the model's name in the Open Inference Protocol's paths, /v2/models/NAME (default: "
                            "the run's name)")


def _compare_parser(commands, shared) -> None:
    compare = _command(commands, "compare", shared, ["force", "data", "mlflow"], cmd_compare,
                       "train variants x seeds and report mean and spread")
    compare.add_argument("--variants", nargs="+", metavar="VARIANT",
                         help=f"a series variant ({', '.join(VARIANTS)}), applied to the base config, or a recipe; "
                              f"either with changes as NAME:key=value,key=value (default: "
                              f"{' '.join(DEFAULT_VARIANTS)})")
    compare.add_argument("--seeds", type=_int_between(1, MAX_SEEDS), metavar="N",
                         help="seeds per variant, counting up from --seed (default: 3)")
    compare.add_argument("--runs", nargs="+", metavar="RUN", type=a_path,
                         help="compare these runs, already trained (paths, latest, or the start of a name), "
                              "grouped by their settings: nothing is trained")
    compare.add_argument("--out", metavar="DIR", type=a_path,
                         help=f"comparison folder; the same command resumes there (default: {COMPARE_OUT}; with "
                              f"--runs, runs/<time>-comparison)")
    compare.add_argument("--jobs", type=_int_between(1), metavar="N",
                         help="runs trained at once, each in its own process (default: the CPU count)")
    compare.add_argument("--storage", metavar="URL", type=a_name,
                         help="share the comparison's runs among machines through a study in this database, "
                              "e.g. postgresql://user@host/db: run the same command on each, --out a folder they "
                              "all reach (needs fashionlab[sweep])")
    compare.add_argument("--study", metavar="NAME", type=a_name,
                         help="with --storage: the study's name (default: compare-<the --out folder's name>)")
    source = compare.add_mutually_exclusive_group()
    source.add_argument("--recipe", metavar="NAME", type=a_recipe_name,
                        help="the base config of the series variants: a named recipe")
    source.add_argument("--config", metavar="FILE", type=a_path,
                        help="the base config of the series variants: a TOML file")
    _add_config_options(compare, COMPARE_KEYS)


def _ensemble_parser(commands, shared) -> None:
    ensemble = _command(commands, "ensemble", shared, ["json", "data"], cmd_ensemble,
                        "average the class probabilities of runs already trained into one model")
    ensemble.add_argument("runs", nargs="+", metavar="RUN", type=a_path,
                          help="2 to 32 complete runs of one data set (paths, latest, or the start of a name), or "
                               "a folder of runs such as a comparison's variant (its seeds)")
    ensemble.add_argument("--out", metavar="DIR", type=a_path,
                          help="the ensemble's folder, which evaluate, predict, serve and export take as a run "
                               "(default: runs/<time>-ensemble-N-<name>)")


def _sweep_parser(commands, shared) -> None:
    sweep = _command(commands, "sweep", shared, ["force", "data", "mlflow"], cmd_sweep,
                     "search a recipe's hyper-parameters with Optuna, judged on validation accuracy")
    sweep.add_argument("space", metavar="SPACE.toml", type=a_path,
                       help="the search space: a recipe and/or [train] keys to start from, [search] ranges "
                            "(see examples/sweep-best-mlp.toml)")
    sweep.add_argument("--trials", type=_int_between(1, MAX_TRIALS), default=20, metavar="N",
                       help="trials in the whole study, over every worker and every run of the command (default: 20)")
    sweep.add_argument("--jobs", type=_int_between(1, 256), default=1, metavar="N",
                       help="trials trained at once here, each in its own process (default: 1)")
    sweep.add_argument("--out", metavar="DIR", type=a_path,
                       help="sweep folder: trial runs, tables, report; the same command resumes there "
                            "(default: runs/sweep-<space name>)")
    sweep.add_argument("--storage", metavar="URL", type=a_name,
                       help="a database shared by workers on several machines, e.g. postgresql://user@host/db "
                            "(default: a journal file in --out)")
    sweep.add_argument("--study", metavar="NAME", type=a_name,
                       help="the study's name in the storage, and its trials' (default: the space file's name)")
    sweep.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                       help="tpe: Optuna's TPE after 10 random trials; random (default: tpe)")
    sweep.add_argument("--sampler-seed", type=_int_between(0, 2**31 - 1), default=0, metavar="N",
                       help="the sampler's seed: with one job, the same seed gives the same trials (default: 0)")
    sweep.add_argument("--pruner", choices=PRUNERS, default="median",
                       help="median: stop a trial below the median of earlier ones at the same epoch; halving: "
                            "successive halving; none (default: median)")
    _add_config_options(sweep, COMPARE_KEYS, "every trial's config, over the space's [train] (unset: the space's, "
                                             "else its recipe's, else the tutorial's; never a searched key)")


def _runs_parser(commands, shared) -> None:
    from fashionlab.catalog import RUNS_ROOT
    from fashionlab.rundir import STATUSES

    runs = _command(commands, "runs", shared, ["json"], cmd_runs, "list the runs in a folder, newest first")
    runs.add_argument("folder", metavar="DIR", nargs="?", type=a_path, default=str(RUNS_ROOT),
                      help=f"where to look, and in its folders (default: {RUNS_ROOT})")
    runs.add_argument("--status", choices=(*STATUSES, "unfinished", "damaged"),
                      help="only runs in this state (unfinished: its process died while running)")
    runs.add_argument("--recipe", metavar="NAME", type=a_recipe_name, help="only runs of this recipe")
    runs.add_argument("--dataset", metavar="NAME", type=a_name, help="only runs on this data set")


def _summary_parser(commands, shared) -> None:
    summary = _command(commands, "summary", shared, [], cmd_summary, "print the network's layers and parameter counts")
    summary.add_argument("--recipe", metavar="NAME", type=a_recipe_name, help="the network of a named recipe")
    _add_config_options(summary, MODEL_KEYS)


def _recipes_parser(commands, shared) -> None:
    recipes = _command(commands, "recipes", shared, [], cmd_recipes,
                       "list the named recipes with their measured accuracy and time")
    recipes.add_argument("name", metavar="NAME", nargs="?", type=a_recipe_name, help="print this recipe's file")


def _data_parser(commands, shared) -> None:
    data_parser = commands.add_parser("data", parents=[shared["debug"]], help="find, check or download a data set")
    actions = data_parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    info = _command(actions, "info", shared, ["dataset", "data"], cmd_data_info, "shapes, pixel range and class counts")
    info.add_argument("--validation-size", type=_int_between(1), default=5000, metavar="N")
    path = _command(actions, "path", shared, ["dataset"], cmd_data_path, "print the folder the files are read from")
    path.add_argument("--data-dir", metavar="DIR", type=a_path)
    download = _command(actions, "download", shared, ["dataset"], cmd_data_download,
                        "fetch and verify a built-in's files (needs network)")
    download.add_argument("--dest", metavar="DIR", type=a_path,
                          help="target folder (default: the data set's folder in the Keras cache)")
    download.add_argument("--url", default=None,
                          help="base URL of a mirror holding the four .gz files (default: the data set's official one)")


def command_line(argv: Sequence[str]) -> str:
    """The command as run.json and the pages record it: every URL's password and query masked in
    each word before the words are quoted (quoting could split a secret into pieces too short to find)."""
    from fashionlab.urls import masked

    urls = [word.partition("=")[2] if word.startswith("-") else word for word in argv if "://" in word]

    def hidden(word: str) -> str:
        for url in urls:
            word = masked(word, url)
        return word

    return shlex.join(["fashionlab", *(hidden(word) for word in argv)])


def printable(text: str) -> str:
    """`text` with control characters (terminal escapes, newlines inside a name) shown as escapes."""
    return CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
INTERNAL_ERROR_CODE = 70  # EX_SOFTWARE: a bug in fashionlab, not a problem with the input


@contextlib.contextmanager
def _command_environment(debug: bool) -> Iterator[None]:
    """For one command: library warnings and logs off the terminal unless `debug` (worker
    processes inherit this through the environment)."""
    for stream in (sys.stdout, sys.stderr):  # names that are not valid text still print
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    saved_environ = {k: os.environ.get(k) for k in ("PYTHONWARNINGS", "TF_CPP_MIN_LOG_LEVEL")}
    saved_logging = logging.root.manager.disable
    with warnings.catch_warnings():
        if not debug:
            os.environ["PYTHONWARNINGS"] = "ignore"
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(saved_logging)
            for key, value in saved_environ.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = command_line(argv)
    with _command_environment(args.debug):
        return _run(args)


KERAS_BACKENDS = ("jax", "tensorflow", "torch", "numpy", "openvino")


def _check_environment() -> None:
    backend = os.environ.get("KERAS_BACKEND", "jax")
    if backend not in KERAS_BACKENDS:
        raise ConfigError(f"KERAS_BACKEND {backend!r} is not a Keras backend; use one of {', '.join(KERAS_BACKENDS)} "
                          f"(jax is the default)")


RUN_ARGUMENTS = ("run", "resume", "runs")  # the arguments that name runs: a path, `latest`, or the start of a name


def _locate_runs(args: argparse.Namespace) -> None:
    """Each run argument as the folder it names (an existing path as given), said when it differs."""
    from pathlib import Path

    from fashionlab.catalog import UNFINISHED, locate

    def located(given: str, name: str) -> str:
        found = str(locate(given, **({"latest": UNFINISHED} if name == "resume" else {})))
        if Path(found) != Path(given):
            print(printable(f"{given}: {found}"), file=sys.stderr)
        return found

    for name in RUN_ARGUMENTS:
        given = getattr(args, name, None)
        if given is not None and not (name == "run" and getattr(args, "onnx", None)):  # both: refused as such
            setattr(args, name, [located(g, name) for g in given] if isinstance(given, list) else located(given, name))


def _run(args: argparse.Namespace) -> int:
    try:
        _check_environment()
        _locate_runs(args)
        args.handler(args)
    except FashionlabError as exc:
        print(f"fashionlab: error: {printable(in_cli_terms(exc, flags_of(args.command_parser)))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fashionlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ImportError as exc:  # the environment: a package missing, or KERAS_BACKEND naming one
        print(f"fashionlab: error: cannot import {exc.name or 'a package'} ({printable(str(exc))[:200]}); "
              f"reinstall fashionlab, or check KERAS_BACKEND", file=sys.stderr)
        return 1
    except OSError as exc:  # the environment: a full disk, a closed or full standard output, ...
        where = f" ({printable(str(exc.filename))})" if exc.filename else ""
        print(f"fashionlab: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except MemoryError:  # the environment too: what was asked needs more memory than is free
        print("fashionlab: error: out of memory; free some, or give smaller inputs", file=sys.stderr)
        return 1
    except Exception as exc:  # the last line of defence: a bug, said in one line
        if args.debug:
            raise
        said = printable(reason(exc, 300))
        print(f"fashionlab: internal error: {type(exc).__name__}: {said}; rerun with --debug for the traceback",
              file=sys.stderr)
        return INTERNAL_ERROR_CODE
    return 0
