"""The ``podlatency`` command: ``serve``, ``train``, ``samples``, ``evaluate``, ``versions``, ``activate``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from podlatency import __version__
from podlatency.errors import PodlatencyError
from podlatency.settings import ENV_PREFIX, Device, Role, Settings

logger = logging.getLogger("podlatency")

DESCRIPTION = (
    "Per-pod TTFT and TPOT predictions for LLM request routing. serve answers them over HTTP; train, "
    "samples and evaluate make and score models; versions and activate list and choose a model folder's "
    "stored versions."
)
DEFAULT_QUANTILES = (0.5, 0.9, 0.95, 0.99)


class HELP(argparse.HelpFormatter):
    """Each flag's help with its default, where it has one and the help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = (
            action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
        )
        if shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        formatter_class=HELP,
        help="serve predictions over HTTP (trains the embedded default model on first start)",
        description="Flags override the PODLATENCY_* environment variables of the same name.",
    )
    serve.add_argument("--role", choices=get_args(Role), help="both, predictor or trainer (PODLATENCY_ROLE)")
    serve.add_argument("--host", help="bind address (PODLATENCY_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (PODLATENCY_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (PODLATENCY_WORKERS, default 1)")
    serve.add_argument(
        "--threads", type=int, help="handler threads per process (PODLATENCY_THREADS, default 16)"
    )
    serve.add_argument("--model-dir", type=Path, help="model folder (PODLATENCY_MODEL_DIR)")
    serve.add_argument("--device", choices=get_args(Device), help="auto, cpu or cuda (PODLATENCY_DEVICE)")
    serve.add_argument(
        "--nthread", type=int, help="XGBoost threads per predict, 0 = all (PODLATENCY_NTHREAD)"
    )
    serve.add_argument("--max-pods", type=int, help="most pods per /v1/predict (PODLATENCY_MAX_PODS)")
    serve.add_argument(
        "--log-level", type=str.lower, help="debug, info, warning or error (PODLATENCY_LOG_LEVEL)"
    )


def _add_train(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = commands.add_parser(
        "train", help="train a model bundle into a model folder", formatter_class=HELP
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--samples", type=Path, help="CSV or Parquet of recorded observations")
    source.add_argument("--synthetic", type=int, metavar="N", help="N rows from the synthetic workload")
    train.add_argument("--out", type=Path, required=True, help="model folder to store the bundle in")
    train.add_argument(
        "--objective", choices=["mean", "quantile"], default="mean", help="what the model predicts"
    )
    train.add_argument(
        "--alpha", type=_quantile, help="primary quantile, with --objective quantile (default 0.9)"
    )
    train.add_argument(
        "--quantiles",
        type=_quantile_list,
        help="quantiles served beside the primary, comma-separated, with --objective quantile "
        "(default 0.5,0.9,0.95,0.99)",
    )
    train.add_argument("--rounds", type=int, default=200, help="boosting rounds per target")
    train.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic rows, the split and the trees"
    )
    train.add_argument(
        "--nthread", type=int, default=1, help="XGBoost threads; 0 = all cores (fast only on an idle machine)"
    )
    train.add_argument(
        "--no-activate",
        action="store_true",
        help="store the bundle without activating it (podlatency activate does later)",
    )


def _quantile(text: str) -> float:
    """``--alpha``: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"a quantile must be strictly between 0 and 1: {text!r}")
    return value


def _quantile_list(text: str) -> tuple[float, ...]:
    """``--quantiles``: comma-separated numbers strictly between 0 and 1."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None
    if not values or not all(0.0 < value < 1.0 for value in values):
        raise argparse.ArgumentTypeError(f"each quantile must be strictly between 0 and 1: {text!r}")
    return values


def _add_samples(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    samples = commands.add_parser(
        "samples",
        formatter_class=HELP,
        help="write a samples file (observed latencies) to train on or post, from the synthetic workload",
    )
    samples.add_argument("--synthetic", type=int, metavar="N", required=True, help="rows to draw")
    samples.add_argument("--out", type=Path, required=True, help="file to write: .csv or .parquet")
    samples.add_argument("--seed", type=int, default=0, help="seed of the drawn rows")
    samples.add_argument("--slowdown", type=float, default=1.0, help="scale every latency (a slower fleet)")


def _add_evaluate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        formatter_class=HELP,
        help="score a stored model on a samples file: report.md, metrics.json and pictures",
        description="Writes report.md and metrics.json into --out, and with matplotlib (the plots extra) "
        "the pictures: predicted against actual, error by load regime, calibration (quantile models).",
    )
    evaluate.add_argument(
        "--samples", type=Path, required=True, help="CSV or Parquet of recorded observations"
    )
    evaluate.add_argument("--model-dir", type=Path, default=Path("models"), help="model folder")
    evaluate.add_argument("--version", help="the stored version to evaluate (default: the active one)")
    evaluate.add_argument("--out", type=Path, required=True, help="folder to write the report into")


def _add_versions(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    versions = commands.add_parser(
        "versions", help="list a model folder's stored versions; * marks the active one", formatter_class=HELP
    )
    versions.add_argument("--model-dir", type=Path, default=Path("models"), help="model folder")
    activate = commands.add_parser(
        "activate",
        help="make a stored version the active one (a rollback, say); servers on the folder swap it in",
        formatter_class=HELP,
    )
    activate.add_argument("version", help="a stored version (podlatency versions lists them)")
    activate.add_argument("--model-dir", type=Path, default=Path("models"), help="model folder")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and --help)."""
    parser = argparse.ArgumentParser(prog="podlatency", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"podlatency {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    _add_train(commands)
    _add_samples(commands)
    _add_evaluate(commands)
    _add_versions(commands)
    return parser


def serve(args: argparse.Namespace) -> int:
    """Run uvicorn on the app factory; flags become PODLATENCY_* variables so every worker sees them."""
    import uvicorn  # noqa: PLC0415  (keeps `podlatency train --help` fast)

    from podlatency.engines.predictor import resolve_device  # noqa: PLC0415

    overrides = {
        field.name: getattr(args, field.name, None)
        for field in dataclasses.fields(Settings)
        if getattr(args, field.name, None) is not None
    }
    settings = Settings.from_env(**overrides)
    resolve_device(settings.device)  # refuse `cuda` without a GPU before any worker starts
    for name, value in overrides.items():
        os.environ[ENV_PREFIX + name.upper()] = str(value)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.workers > 1:
        _ensure_model(settings)
    uvicorn.run(
        "podlatency.web.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def _ensure_model(settings: Settings) -> None:
    """Train the embedded default once, before several workers start, so none serves later than another."""
    from podlatency.prediction_service import PredictionService  # noqa: PLC0415

    service = PredictionService(settings)
    if service.registry.active_version() is None:
        service.train_default()


def train(args: argparse.Namespace) -> int:
    """Train from a sample file or the synthetic workload; nothing is written on bad input."""
    from podlatency.errors import TrainingDataError  # noqa: PLC0415
    from podlatency.learning.sample_files import read_samples  # noqa: PLC0415
    from podlatency.learning.training import TrainingOptions, synthetic_training_set, train_bundle  # noqa: PLC0415
    from podlatency.registry import ModelRegistry  # noqa: PLC0415

    if args.objective != "quantile" and (args.alpha is not None or args.quantiles is not None):
        raise TrainingDataError("--alpha and --quantiles need --objective quantile", field="objective")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.synthetic is not None:
        data, source = synthetic_training_set(args.synthetic, seed=args.seed), f"synthetic:{args.synthetic}"
    else:
        data, source = read_samples(args.samples), f"samples:{args.samples.name}"
    options = TrainingOptions(
        objective=args.objective,
        quantile_alpha=0.9 if args.alpha is None else args.alpha,
        quantiles=DEFAULT_QUANTILES if args.quantiles is None else args.quantiles,
        rounds=args.rounds,
        seed=args.seed,
        nthread=args.nthread,
    )
    bundle = train_bundle(data, options, source=source)
    ModelRegistry(args.out).save(bundle, activate=not args.no_activate)
    print(f"trained {bundle.version} on {bundle.training_rows} rows into {args.out}")
    for target, figures in bundle.metrics.items():
        print(f"  {target}: " + ", ".join(f"{name}={value:.4g}" for name, value in figures.items()))
    return 0


def samples(args: argparse.Namespace) -> int:
    """Write a synthetic samples file."""
    from podlatency.errors import TrainingDataError  # noqa: PLC0415
    from podlatency.learning.sample_files import write_synthetic_samples  # noqa: PLC0415

    if args.synthetic < 1 or args.slowdown <= 0:
        raise TrainingDataError("--synthetic must be >= 1 and --slowdown > 0")
    write_synthetic_samples(args.out, args.synthetic, seed=args.seed, slowdown=args.slowdown)
    print(f"wrote {args.synthetic} samples to {args.out}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """Score a stored model on a samples file and write the report; nothing is written on bad input."""
    from podlatency.errors import TrainingDataError  # noqa: PLC0415
    from podlatency.learning.evaluation import evaluate_model, write_report  # noqa: PLC0415
    from podlatency.learning.sample_files import read_samples  # noqa: PLC0415
    from podlatency.registry import ModelRegistry  # noqa: PLC0415

    registry = ModelRegistry(args.model_dir)
    version = args.version or registry.active_version()
    if version is None:
        raise TrainingDataError(
            f"{args.model_dir}: no active model; name one with --version", field="model_dir"
        )
    bundle = registry.load(version)
    data = read_samples(args.samples)
    evaluation = evaluate_model(bundle, data, args.samples.name)
    written = write_report(evaluation, args.out)
    for target, figures in evaluation.targets.items():
        overall = figures.overall
        line = f"  {target}: {overall.rows} rows, median relative error {overall.median_relative_error:.3f}"
        if overall.coverage is not None:
            line += f", coverage {overall.coverage:.3f}"
        print(line)
    print(f"wrote {', '.join(path.name for path in written)} to {args.out}")
    if not any(path.suffix == ".png" for path in written):
        print("no pictures: they need matplotlib; pip install 'podlatency[plots]'", file=sys.stderr)
    return 0


def versions(args: argparse.Namespace) -> int:
    """Print each stored version, oldest first, with its objective, source and training time."""
    from podlatency.registry import ModelRegistry  # noqa: PLC0415

    registry = ModelRegistry(args.model_dir)
    active = registry.active_version()
    stored = registry.versions()
    if not stored:
        print(f"no stored model versions in {args.model_dir}")
    for version in stored:
        metadata = registry.metadata(version)
        listed = metadata.get("quantiles")
        quantiles = [float(value) for value in listed] if isinstance(listed, list) else []
        objective = str(metadata.get("objective", "?"))
        if quantiles:
            objective += " " + ",".join(f"{value:g}" for value in quantiles)
        print(
            f"{'*' if version == active else ' '} {version}  {objective}  {metadata.get('source', '')}  "
            f"{metadata.get('trained_at') or '-'}"
        )
    return 0


def activate(args: argparse.Namespace) -> int:
    """Point the folder's ACTIVE at a stored version, after checking that it loads."""
    from podlatency.errors import NotFound  # noqa: PLC0415
    from podlatency.registry import ModelRegistry  # noqa: PLC0415

    registry = ModelRegistry(args.model_dir)
    if args.version not in registry.versions():
        raise NotFound(f"no stored model version {args.version!r} in {args.model_dir}", field="version")
    registry.load(args.version)  # a version that does not load is never made active
    previous = registry.active_version()
    registry.activate(args.version)
    print(f"{args.model_dir}: active version {args.version} (was {previous or 'none'})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``podlatency`` console script."""
    args = build_parser().parse_args(argv)
    try:
        handler = {
            "serve": serve,
            "train": train,
            "samples": samples,
            "evaluate": evaluate,
            "versions": versions,
            "activate": activate,
        }[args.command]
        return handler(args)
    except PodlatencyError as error:
        print(f"podlatency {args.command}: error: {error.detail}", file=sys.stderr)
        return 2
