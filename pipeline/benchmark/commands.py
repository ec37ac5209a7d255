"""The ``benchmark`` command's suites: their arguments and how each is run (heavy imports only when one runs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.config import load_config
from pipeline.errors import InputError

STARTUP_MIN_ROWS = 1_000  # the throughput benchmark's start-up file


def add_benchmark_parsers(commands) -> None:
    """``benchmark skab | skab-fleet | fleet | architectures | denoise | throughput | reviews`` as subcommands."""
    benchmark = commands.add_parser("benchmark", help="measure detection quality on a public benchmark, beside peer detectors")
    suites = benchmark.add_subparsers(dest="suite", required=True, metavar="SUITE")
    skab = suites.add_parser("skab", help="SKAB outlier detection: fit on rows 0..399 of each labelled file, predict the rest")
    skab.add_argument("--data", required=True, metavar="DIR", help="SKAB folder holding valve1/, valve2/ and other/")
    skab.add_argument("--out", required=True, metavar="DIR", help="folder for predictions and summary.json / summary.md")
    skab.add_argument(
        "--detector",
        nargs="+",
        metavar="NAME",
        help="detectors to run (default: all): product, isolation_forest, pca_t2q, conv_ae, ecod, pyod_iforest (PyOD)",
    )
    _config_tracking_verbose(skab)

    skab_fleet = suites.add_parser(
        "skab-fleet", help="SKAB with each file an asset of one fleet: a model per asset vs one shared model"
    )
    skab_fleet.add_argument("--data", required=True, metavar="DIR", help="SKAB folder holding valve1/, valve2/ and other/")
    skab_fleet.add_argument("--out", required=True, metavar="DIR", help="folder for summary.json")
    _config_tracking_verbose(skab_fleet)

    fleet = suites.add_parser("fleet", help="generate a fleet, train a model per asset and score it; wall time, memory, faults")
    fleet.add_argument("--assets", type=int, default=100, metavar="N", help="assets in the fleet (default 100)")
    fleet.add_argument("--rows", type=int, default=20_000, metavar="R", help="rows per asset, 1-minute steps (default 20,000)")
    fleet.add_argument(
        "--out", required=True, metavar="DIR", help="folder for the generated fleet, reports and fleet_benchmark.json"
    )
    fleet.add_argument("--config", metavar="FILE", help="product settings for training (YAML; default: the defaults)")
    fleet.add_argument("--workers", type=int, metavar="N", help="local engine: parallel processes (default: the number of cores)")
    fleet.add_argument("--engine", choices=["local", "spark"], default="local", help="per-asset engine (default local)")
    fleet.add_argument("--spark-master", metavar="URL", help="with --engine spark: the master (default local[*])")
    fleet.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: sqlite:///OUT/mlflow.db)")
    fleet.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks on unexpected failures")
    architectures = suites.add_parser(
        "architectures", help="SKAB per model family (conv, dense, lstm, vae), product only, several seeds each"
    )
    architectures.add_argument("--data", required=True, metavar="DIR", help="SKAB folder holding valve1/, valve2/ and other/")
    architectures.add_argument(
        "--out", required=True, metavar="DIR", help="folder for each pass and architectures.json / .md (rerun to finish)"
    )
    architectures.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds per architecture, 1..3 (default 3)")
    architectures.add_argument(
        "--architectures", nargs="+", metavar="NAME", help="default: conv dense lstm vae (one seed of each first)"
    )
    _config_tracking_verbose(architectures)
    denoise = suites.add_parser(
        "denoise", help="reconstruction vs known clean signals on the pump generator: noise-reduction ratios"
    )
    denoise.add_argument("--out", required=True, metavar="DIR", help="folder for the generated data and denoise.json / .md")
    denoise.add_argument(
        "--noise", nargs="+", type=float, default=[1.0, 3.0], metavar="K", help="noise levels, x the generator's (default 1 3)"
    )
    denoise.add_argument(
        "--input-noise", type=float, default=0.3, metavar="SD", help="the denoising model's model.input_noise (default 0.3)"
    )
    denoise.add_argument("--days", type=float, default=6.0, metavar="D", help="days generated at 1 min (default 6)")
    denoise.add_argument("--train-days", type=float, default=4.0, metavar="D", help="the first days, trained on (default 4)")
    _config_tracking_verbose(denoise)
    throughput = suites.add_parser(
        "throughput", help="scoring and training speed and memory on a generated file, against naive Keras, in one run"
    )
    throughput.add_argument("--rows", type=int, required=True, metavar="N", help="rows of the generated file to score")
    throughput.add_argument("--sensors", type=int, default=8, metavar="S", help="sensors per row (default: 8)")
    throughput.add_argument(
        "--work", default="data/benchmark/throughput", metavar="DIR", help="data, model store and reports (default: %(default)s)"
    )
    throughput.add_argument("--normal-rows", type=int, default=100_000, metavar="N", help="leading rows to train on")
    throughput.add_argument("--epochs", type=int, default=2, metavar="N", help="epochs of the scored model's brief training")
    throughput.add_argument("--fresh", action="store_true", help="regenerate the data and retrain even if present")
    _config_tracking_verbose(throughput, config=False)
    reviews = suites.add_parser(
        "reviews", help="a scripted reviewer's verdicts, one retrain with them: repeat false alarms gone, confirmed events kept"
    )
    reviews.add_argument("--sample", metavar="DIR", help="the bundled sample's folder (data/sample)")
    reviews.add_argument("--sample-config", metavar="FILE", help="its settings (default: sample.yaml beside the folder)")
    reviews.add_argument("--skab", metavar="DIR", help="SKAB folder: its valve1 and valve2 streams")
    reviews.add_argument("--recurring", action="store_true", help="also a synthetic stream with a daily benign pattern")
    reviews.add_argument("--out", required=True, metavar="DIR", help="folder for review_benchmark.json")
    _config_tracking_verbose(reviews)


def _config_tracking_verbose(parser: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        parser.add_argument("--config", metavar="FILE", help="product settings to measure instead of the defaults (YAML)")
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow/mlflow.db)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks on unexpected failures")


def run_benchmark_command(args: argparse.Namespace) -> int:
    """Run the chosen suite; its exit code."""
    if args.suite == "fleet":
        return _fleet_benchmark(args)
    if args.suite == "reviews":
        from pipeline.benchmark.reviews import render, run_review_benchmark

        base = load_config(args.config) if args.config else None
        paths = {k: Path(v) if v else None for k, v in (("sample", args.sample), ("skab", args.skab))}
        config = Path(args.sample_config) if args.sample_config else None
        summary = run_review_benchmark(
            Path(args.out), paths["sample"], config, paths["skab"], base, args.tracking_uri, args.recurring
        )
        print(render(summary))
        print(f"figures: {Path(args.out) / 'review_benchmark.json'}")
        return 0
    if args.suite == "skab-fleet":
        from pipeline.benchmark.skab_fleet import render, run_skab_fleet

        if not Path(args.data).is_dir():
            raise InputError(f"--data {args.data}: not a folder")
        summary = run_skab_fleet(Path(args.data), Path(args.out), args.tracking_uri, load_config(args.config))
        print(f"SKAB as a fleet of {summary['files']} assets in {summary['wall_seconds']:.0f} s (F1 / FAR / MAR):")
        print(render(summary))
        return 0
    if args.suite == "architectures":
        from pipeline.benchmark.architectures import render, run_architectures

        if not Path(args.data).is_dir():
            raise InputError(f"--data {args.data}: not a folder")
        result = run_architectures(
            Path(args.data), Path(args.out), args.tracking_uri, args.architectures, args.seeds, load_config(args.config)
        )
        print(render(result), end="")
        return 0
    if args.suite == "denoise":
        from pipeline.benchmark.denoise import render as render_denoise
        from pipeline.benchmark.denoise import run_denoise

        if not 0 < args.train_days < args.days or any(k < 0 for k in args.noise) or args.input_noise < 0:
            raise InputError("--days, --train-days, --noise, --input-noise: need 0 < train days < days and no negative noise")
        result = run_denoise(
            Path(args.out), args.noise, args.input_noise, load_config(args.config), args.tracking_uri, args.days, args.train_days
        )
        print(render_denoise(result), end="")
        return 0
    if args.suite == "throughput":
        from pipeline.benchmark import throughput

        if args.rows < 2 * STARTUP_MIN_ROWS or not 1 <= args.sensors <= 1000:
            raise InputError(
                f"--rows {args.rows} --sensors {args.sensors}: need at least {2 * STARTUP_MIN_ROWS} rows and 1..1000 sensors"
            )
        figures = throughput.run_benchmark(
            args.rows, Path(args.work), args.sensors, args.normal_rows, args.epochs, args.tracking_uri, args.fresh
        )
        print("\n".join(throughput.summary_lines(figures)))
        print(f"figures: {Path(args.work) / 'throughput.json'}")
        return 0
    from pipeline.benchmark.skab import run_benchmark

    if not Path(args.data).is_dir():
        raise InputError(f"--data {args.data}: not a folder")
    summary = run_benchmark(Path(args.data), Path(args.out), args.tracking_uri, args.detector, load_config(args.config))
    _print_benchmark(summary, Path(args.out))
    return 0


def _fleet_benchmark(args: argparse.Namespace) -> int:
    from pipeline.benchmark.fleet import run_fleet_benchmark

    if args.assets < 1 or args.rows < 2:
        raise InputError(f"--assets {args.assets} --rows {args.rows}: need at least one asset and two rows")
    engine = ["--engine", args.engine]
    engine += ["--workers", str(args.workers)] if args.workers else []
    engine += ["--spark-master", args.spark_master] if args.spark_master else []
    figures = run_fleet_benchmark(args.assets, args.rows, Path(args.out), args.tracking_uri, engine, args.config)
    print(json.dumps(figures, indent=2))
    train, score = figures["train"], figures["score"]
    peak = max(train["peak_rss_mb"], score["peak_rss_mb"])
    print(
        f"fleet {figures['assets']} x {figures['rows_per_asset']} ({figures['engine']}): train {train['seconds']:.0f} s, "
        f"score {score['seconds']:.0f} s ({score['rows_per_second']:.0f} rows/s), peak {peak:.0f} MB; "
        f"faults caught {figures['faults_caught']} of {figures['faults']}, false events {figures.get('false_events', 'n/a')}"
    )
    return 0 if train["exit_code"] == 0 and score["exit_code"] == 0 else 1


def _print_benchmark(summary: dict, out: Path) -> None:
    print(f"SKAB: {summary['files']} files in {summary['wall_seconds']:.0f} s (F1 / FAR / MAR, point-wise over all test rows)")
    for name, result in summary["detectors"].items():
        o = result["overall"]
        print(f"  {name:<17} {o['f1']:.3f} / {100 * o['far']:5.2f} % / {100 * o['mar']:5.2f} %")
    print(f"summary: {out / 'summary.md'} (per group and per file; predictions in {out / 'predictions'})")
