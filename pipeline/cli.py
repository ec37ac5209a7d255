"""Command line: parses arguments, calls a job, maps errors to exit codes.

Exit codes: 0 success; 1 unexpected failure; 2 bad input or config; 3 another run holds the lock;
4 ``promote``'s gate kept the champion.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pipeline.benchmark.commands import add_benchmark_parsers, run_benchmark_command
from pipeline.config import DEFAULT_MODEL_NAME, SCORE_CHUNK_ROWS, PipelineConfig, load_config, with_overrides
from pipeline.errors import InputError, PipelineError

log = logging.getLogger("pipeline")

UI_HINT = "open the MLflow UI with: mlflow ui --backend-store-uri {uri}  (then http://127.0.0.1:5000)"


def _common(parser: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        parser.add_argument("--config", metavar="FILE", help="YAML settings file (flags override it)")
    parser.add_argument(
        "--model-name", default=DEFAULT_MODEL_NAME, metavar="NAME", help=f"registered model name (default: {DEFAULT_MODEL_NAME})"
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow/mlflow.db)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks on unexpected failures")


def _fleet(parser: argparse.ArgumentParser, periods: bool = False, workers: bool = True) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--asset-column", metavar="COL", help="fleets: the column naming each row's asset")
    group.add_argument(
        "--asset-folders", action="store_true", help="fleets: the first folder level under --input names the asset"
    )
    if periods:
        parser.add_argument("--normal-periods", metavar="FILE", help="fleets: CSV asset,start,end of normal periods")
    if workers:
        parser.add_argument("--workers", type=int, metavar="N", help="fleets: parallel processes (default: the number of cores)")
        parser.add_argument(
            "--engine", choices=["local", "spark"], help="fleets: local worker processes (default) or a Spark session"
        )
        parser.add_argument("--spark-master", metavar="URL", help="fleets with --engine spark: the master (default local[*])")


def _settings(args: argparse.Namespace) -> PipelineConfig:
    """The --config file with the flags on top (a flag wins)."""
    config = load_config(getattr(args, "config", None))
    return with_overrides(
        config,
        {
            "ingest.timestamp_column": getattr(args, "timestamp_column", None),
            "ingest.label_column": getattr(args, "label_column", None) if args.command == "train" else None,
            "training.normal_until": getattr(args, "normal_until", None),
            "training.normal_periods": getattr(args, "normal_periods", None),
            "training.allow_set_aside": getattr(args, "allow_set_aside", None),
            "ingest.asset_column": getattr(args, "asset_column", None),
            "ingest.asset_folders": getattr(args, "asset_folders", None) or None,
            "engine.workers": getattr(args, "workers", None),
            "engine.kind": getattr(args, "engine", None),
            "engine.spark_master": getattr(args, "spark_master", None),
        },
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-pipeline",
        description="Anomaly detection on industrial sensor data: a Keras autoencoder learns normal behaviour, "
        "a calibrated threshold flags what departs from it, every run is logged to MLflow.",
        epilog="exit codes: 0 success, 1 unexpected failure, 2 bad input or config, 3 another run holds the lock, "
        "4 promote's gate kept the champion",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train on normal data, calibrate the threshold, register the model")
    train.add_argument("--input", nargs="+", required=True, metavar="PATH", help="CSV/Parquet files or folders")
    train.add_argument("--timestamp-column", metavar="COL", help="default: first column that parses as datetimes")
    train.add_argument("--normal-until", metavar="TS", help="rows strictly before this time are normal")
    train.add_argument("--label-column", metavar="COL", help="rows whose label is 0 are normal")
    _fleet(train, periods=True)
    train.add_argument(
        "--allow-set-aside",
        action="store_true",
        default=None,
        help="train even when more than ingest.max_set_aside_share of a file's rows were set aside",
    )
    _common(train)

    score = commands.add_parser("score", help="score files with the registered model and write scores.csv and anomalies.csv")
    score.add_argument("--input", nargs="+", required=True, metavar="PATH", help="CSV/Parquet files or folders")
    score.add_argument("--out", required=True, metavar="DIR", help="folder for the reports")
    score.add_argument(
        "--format",
        choices=("csv", "parquet"),
        default="csv",
        dest="output_format",
        help="per-row scores as scores.csv (default) or scores.parquet (same columns, read faster downstream)",
    )
    score.add_argument(
        "--chunk-rows", type=int, default=SCORE_CHUNK_ROWS, metavar="N", help="rows read at a time (default %(default)s; 0: all)"
    )
    _fleet(score)
    _common(score, config=False)

    for name, what in (
        ("encode", "latent.parquet: each row's latent code"),
        ("reconstruct", "reconstructed.parquet: denoised values"),
    ):
        uses = commands.add_parser(name, help=f"{what} (the window ending at the row), with the registered model")
        uses.add_argument("--input", nargs="+", required=True, metavar="PATH", help="CSV/Parquet files or folders")
        uses.add_argument("--out", required=True, metavar="DIR", help="folder for the output")
        uses.add_argument("--asset-column", metavar="COL", help="fleets: the column naming each row's asset")
        if name == "reconstruct":
            uses.add_argument(
                "--estimate",
                choices=("last", "mean"),
                default="last",
                help="last row of the window ending at the row (default, causal) or the mean over every window holding it",
            )
        _common(uses, config=False)

    run = commands.add_parser("run", help="scheduled batch: process new files in --input, training first if no model exists")
    run.add_argument("--input", required=True, metavar="DIR", help="folder of CSV/Parquet files")
    run.add_argument("--out", required=True, metavar="DIR", help="folder for the reports")
    run.add_argument(
        "--state", default="data/state", metavar="DIR", help="bookkeeping, quarantine list and lock (default: data/state)"
    )
    run.add_argument("--retrain", action="store_true", help="train a new model version first, even if one exists")
    run.add_argument("--dry-run", action="store_true", help="list what would be processed; write nothing")
    run.add_argument(
        "--retrain-when-stale", action="store_true", help="train a challenger when drift makes the model stale (promote it after)"
    )
    _fleet(run, periods=True)
    _common(run)

    promote = commands.add_parser(
        "promote",
        help="give the champion alias (used by score and run) to a version, by default the challenger, if it passes the gate",
    )
    promote.add_argument("--version", metavar="N", help="version to promote (default: the one holding @challenger)")
    promote.add_argument(
        "--input", nargs="+", metavar="PATH", help="data to judge on (default: the files of the latest scoring run)"
    )
    promote.add_argument("--label-column", metavar="COL", help="judge by F1 against this label column instead of by alarm rate")
    promote.add_argument("--force", action="store_true", help="promote without the gate (the decision is still logged)")
    promote.add_argument("--asset", metavar="A", help="fleets: promote this asset's version (--model-name names the fleet)")
    _fleet(promote, workers=False)
    _common(promote)

    _review_parser(commands)
    add_benchmark_parsers(commands)
    return parser


def _review_parser(commands) -> None:
    review = commands.add_parser("review", help="record operators' verdicts on events (they teach the next training)")
    review.add_argument("--event", type=int, metavar="ID", help="the event_id of anomalies.csv")
    review.add_argument("--verdict", metavar="V", help="the verdict on --event: confirmed, false_alarm or unsure")
    review.add_argument("--note", metavar="TEXT", help="why (kept with the verdict)")
    review.add_argument("--asset", metavar="A", help="fleets: the event's asset")
    review.add_argument("--by", metavar="NAME", help="who reviewed (default: the user name)")
    review.add_argument("--reviews", metavar="FILE", help="CSV event_id,verdict,note[,asset] (e.g. anomalies.csv filled in)")
    _common(review, config=False)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def _dispatch(args: argparse.Namespace) -> int:
    out = getattr(args, "out", None)
    if out and Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")

    if args.command == "benchmark":
        code = run_benchmark_command(args)
        if args.suite == "skab":
            print(UI_HINT.format(uri=_ui_uri(args.tracking_uri)))
        return code
    config = _settings(args)
    if config.ingest.fleet and args.command in ("train", "score"):
        return _fleet_command(args, config)
    if args.command == "review":
        from pipeline.jobs.review import review_job

        done = review_job(
            args.model_name, args.tracking_uri, args.event, args.verdict, args.note, args.asset, args.by, args.reviews
        )
        for line in done.notes:
            print(f"note: {line}", file=sys.stderr)
        given = ", ".join(f"{n} {verdict}" for verdict, n in done.counts.items() if n)
        if done.run_id is None:
            print(f"no new verdict for {args.model_name}: every one given is recorded already")
        else:
            print(f"recorded {given} for {args.model_name} (run {done.run_id}); the next train or run --retrain uses them")
        return 0

    if args.command in ("encode", "reconstruct"):
        return _uses_command(args, config)
    if args.command == "score":
        from pipeline.jobs.score import score_job  # heavy imports (MLflow, pandas) only once arguments are good

        outcome = score_job(args.input, Path(args.out), args.model_name, args.tracking_uri, args.output_format, args.chunk_rows)
        _print_score(outcome, args.output_format)
        _print_warnings(outcome.warnings)
    elif args.command == "promote":
        from pipeline.jobs.promote import promote_job

        outcome = promote_job(
            args.model_name, args.version, args.tracking_uri, config, args.input, args.label_column, args.force, args.asset
        )
        before = f"version {outcome.champion_before}" if outcome.champion_before else "none"
        verb = "promoted" if outcome.promoted else "kept"
        name = f"{args.model_name} asset {args.asset}" if args.asset else args.model_name
        print(
            f"{verb}: {name} version {outcome.version if outcome.promoted else outcome.champion_before} holds @champion "
            f"(before: {before}); gate {outcome.gate}: {outcome.reason} (run {outcome.run_id})"
        )
        return 0
    elif args.command == "train":
        from pipeline.jobs.train import train_job

        outcome = train_job(args.input, config, args.model_name, args.tracking_uri)
        _print_warnings(outcome.warnings)
        print(
            f"trained {args.model_name} version {outcome.model_version}: threshold {outcome.threshold:.6g} (run {outcome.run_id})"
        )
    else:
        if config.ingest.fleet:
            from pipeline.jobs.fleet_run import run_fleet_job as run_job
        else:
            from pipeline.jobs.run import run_job

        outcome = run_job(
            Path(args.input),
            Path(args.out),
            Path(args.state),
            config,
            args.model_name,
            args.tracking_uri,
            config_given=args.config is not None,
            retrain=args.retrain,
            dry_run=args.dry_run,
            retrain_when_stale=args.retrain_when_stale,
        )
        code = _print_run(outcome, args)
        if code:
            return code
    print(UI_HINT.format(uri=_ui_uri(args.tracking_uri)))
    return 0


def _uses_command(args: argparse.Namespace, config: PipelineConfig) -> int:
    """encode or reconstruct; 2 when an asset of a fleet was not written."""
    from pipeline.jobs.encode import encode_job, reconstruct_job

    if args.command == "encode":
        outcome = encode_job(args.input, Path(args.out), args.model_name, args.tracking_uri, config.ingest)
    else:
        outcome = reconstruct_job(args.input, Path(args.out), args.model_name, args.tracking_uri, config.ingest, args.estimate)
    print(
        f"{args.command}: {outcome.rows_written} of {outcome.rows_in} rows (those with a full window) written to "
        f"{outcome.path} with model version {outcome.model_version} (sha256 {outcome.digest[:12]}, run {outcome.run_id})"
    )
    _print_warnings(outcome.warnings)
    for problem in outcome.problems:
        print(f"error: {problem}", file=sys.stderr)
    print(UI_HINT.format(uri=_ui_uri(args.tracking_uri)))
    return 2 if outcome.problems else 0


def _fleet_command(args: argparse.Namespace, config: PipelineConfig) -> int:
    """train or score a fleet; 2 when an asset was not trained or scored, or rows were set aside."""
    if args.command == "train":
        from pipeline.jobs.fleet_train import train_fleet_job

        outcome = train_fleet_job(args.input, config, args.model_name, args.tracking_uri)
        verb = "trained"
    else:
        from pipeline.jobs.fleet_score import score_fleet_job

        outcome = score_fleet_job(
            args.input, Path(args.out), args.model_name, args.tracking_uri, config.ingest, config.engine, args.output_format
        )
        verb = "scored"
    fleet = outcome.fleet
    done = int((fleet["status"] == "ok").sum())
    print(
        f"{verb} {done} of {len(fleet)} asset(s) of fleet {args.model_name}: {int(fleet['rows_flagged'].sum())} rows flagged "
        f"in {int(fleet['events'].sum())} event(s) (run {outcome.run_id})"
    )
    if args.command == "score":
        print(f"report: {Path(args.out) / 'anomalies.csv'} (per asset: {Path(args.out) / 'fleet.csv'})")
    for problem in outcome.problems:
        print(f"error: {problem}", file=sys.stderr)
    print(UI_HINT.format(uri=_ui_uri(args.tracking_uri)))
    return 2 if outcome.problems else 0


def _print_run(outcome, args: argparse.Namespace) -> int:
    """Print what a scheduled run did; 2 when it quarantined a file (the scheduler should alert)."""
    if outcome.dry_run:
        print(f"dry run: nothing written; model: {outcome.model_version}")
        for c in outcome.candidates:
            action = {
                "new": "would process",
                "appended": "would process new rows of",
                "processed": "skip (processed)",
                "quarantined": "skip (quarantined)",
                "changed": "would quarantine",
            }[c.kind]
            print(f"  {action}: {c.name}" + (f" ({c.note})" if c.note else ""))
        return 0
    for asset, summary in sorted((outcome.fleet_trained or {}).items()):
        if summary.status == "ok":
            print(f"trained {args.model_name} asset {asset} version {summary.model_version}: threshold {summary.threshold:.6g}")
    if outcome.trained:
        print(f"trained {args.model_name} version {outcome.trained.model_version}: threshold {outcome.trained.threshold:.6g}")
    if outcome.folder is not None:
        print(
            f"processed {len(outcome.processed)} file(s), {outcome.rows_in} new rows, "
            f"with model version {outcome.model_version}: "
            f"{outcome.rows_written} rows written ({outcome.rows_held} held back until the next batch decides their flag), "
            f"{outcome.rows_flagged} flagged, {outcome.events} event(s) touched\n"
            f"report: {outcome.folder} (all events so far: {Path(args.out) / 'anomalies.csv'})"
        )
    elif not outcome.quarantined:
        print(f"nothing new in {args.input}")
    _print_warnings(outcome.warnings)
    for line in outcome.stale:
        print(f"stale: {line}", file=sys.stderr)
    for name, reason in outcome.quarantined:
        print(f"error: quarantined {name}: {reason}", file=sys.stderr)
    for problem in outcome.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if outcome.quarantined or outcome.problems else 0


def _print_score(outcome, output_format: str = "csv") -> None:
    from pipeline.store.names import scores_file

    scores = scores_file(output_format)
    print(
        f"scored {outcome.rows_in} rows with model version {outcome.model_version}: "
        f"{outcome.rows_flagged} flagged in {outcome.events} event(s)\n"
        f"report: {outcome.out_dir / 'anomalies.csv'} (per-row scores: {outcome.out_dir / scores})"
    )


def _print_warnings(lines: list[str]) -> None:
    """One ``warning:`` line on stderr per file with more than ingest.max_set_aside_share set aside."""
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _ui_uri(flag: str | None) -> str:
    from pipeline.tracking import resolve_tracking_uri

    return resolve_tracking_uri(flag)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # CPU machines: skip the failing GPU probe
    try:
        code = _dispatch(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # unexpected: one line, the traceback with --verbose
        log.debug("unexpected failure", exc_info=True)
        print(f"error: unexpected failure: {type(exc).__name__}: {exc} (run with --verbose for the traceback)", file=sys.stderr)
        return 1
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
