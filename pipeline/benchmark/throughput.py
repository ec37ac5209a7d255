"""Throughput benchmark: the product's ``score`` against a naive Keras scorer, and its training
feed against ``model.fit`` on materialised windows, on one generated file, in one run.

    anomaly-pipeline benchmark throughput --rows 1000000 [--sensors 8] [--work DIR]

Generates a CSV of ``--rows`` rows x ``--sensors`` pump-like sensors at 1-second steps
(deterministic seed, faults injected after the normal leading part), trains the default model
briefly on the leading part with ``anomaly-pipeline train`` as a child, then measures, each as
a child process with its own peak resident memory (``os.wait4``):

* the product: ``anomaly-pipeline score`` on the whole file (wall time, end to end), and on a
  1,000-row file (start-up);
* the naive scorer (``pipeline.benchmark.naive``: copy every window, ``model.predict``) on a
  prefix it can hold in memory, scaled to rows per second;
* training windows per second of ``model.fit`` on materialised windows and through the
  product's ``WindowFeed``, same model shape, same rows.

Prints the figures and the ratios, writes ``WORK/throughput.json`` and logs them to MLflow.
Timings on a shared machine vary with its load: the ratios are measured side by side, and the
load average is recorded with them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from pipeline.sample_data import FAULTS, SENSORS, START, Fault, generate
from pipeline.store.names import BUNDLE_FILE, MODEL_FILE, THROUGHPUT_JSON, THROUGHPUT_TRAIN_CONFIG, THROUGHPUT_TRAINED

log = logging.getLogger("pipeline.benchmark.throughput")

SEED = 11
MODEL_NAME = "throughput-benchmark"
STARTUP_ROWS = 1_000
NAIVE_SCORE_ROWS = 200_000  # the naive scorer holds every window: 200,000 x 32 x 8 float32 is 200 MB
NAIVE_TRAIN_ROWS = 50_000
TRAIN_EPOCHS = 1  # of each training measurement (the product's model itself trains --epochs)


def generate_series(rows: int, normal_rows: int, seed: int = SEED, sensors: int = len(SENSORS)) -> pd.DataFrame:
    """The sample pump at 1-second steps: ``timestamp`` + ``sensors`` sensors, ``rows`` rows.

    The first ``normal_rows`` rows are fault-free; the four fault kinds of the sample data
    (drift, step, spike burst, stuck sensor) are injected at fixed fractions of the rest. Beyond
    the eight pump sensors, sensor ``k`` is pump sensor ``k % 8`` rescaled with its own noise.
    """
    rest = rows - normal_rows
    hours = min(3.0, rest / 8 / 3600)

    def at(fraction: float) -> str:
        return str(START + pd.Timedelta(seconds=normal_rows + int(rest * fraction)))

    faults = (
        [
            Fault(fault.kind, fault.sensor, at(fraction), hours, fault.description)
            for fault, fraction in zip(FAULTS, (0.15, 0.4, 0.65, 0.9))
        ]
        if rest > 4 * 3600
        else []
    )
    frame = generate(days=rows / 86400, seed=seed, faults=faults, step_seconds=1).iloc[:rows]
    rng = np.random.default_rng(seed + 1)
    extra = {}
    for k in range(len(SENSORS), sensors):
        base = frame[SENSORS[k % len(SENSORS)]].to_numpy()
        extra[f"{SENSORS[k % len(SENSORS)]}_{k // len(SENSORS)}"] = base * (1 + 0.05 * (k // len(SENSORS))) + rng.normal(
            0, 0.01 * float(np.std(base[:normal_rows])) + 1e-6, len(base)
        )
    frame = frame[["timestamp", *SENSORS[:sensors]]]
    return frame.assign(**extra) if extra else frame


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write with pyarrow (pandas ``to_csv`` is slow at millions of rows); naive timestamps as text."""
    stamps = pc.strftime(pa.array(frame["timestamp"]).cast(pa.timestamp("s")), format="%Y-%m-%d %H:%M:%S")
    table = pa.table({"timestamp": stamps, **{c: pa.array(frame[c].to_numpy()) for c in frame.columns if c != "timestamp"}})
    pa_csv.write_csv(table, path, write_options=pa_csv.WriteOptions(quoting_style="needed"))
    return path


def _child_env() -> dict[str, str]:
    """This environment, with this checkout's package first on the path."""
    checkout = Path(__file__).resolve().parents[2]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))}


def run_child(command: list[str], log_file: Path) -> dict:
    """Run a child process; its exit code, wall seconds, peak RSS (MB, from ``os.wait4``) and stdout."""
    out_file = log_file.with_suffix(".out")
    log.info("running: %s", " ".join(command))
    started = time.perf_counter()
    with out_file.open("w") as stdout, log_file.open("w") as stderr:
        child = subprocess.Popen(command, env=_child_env(), stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed with exit code {child.returncode}; see {log_file}")
    # Linux reports ru_maxrss in kilobytes
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out_file.read_text()}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


def _load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def _prepare(work: Path, rows: int, sensors: int, normal_rows: int) -> tuple[Path, Path, Path]:
    """The scored file, the training file and the 1,000-row start-up file (generated once)."""
    data_file = work / f"sensors_{rows}x{sensors}.csv"
    train_file = work / f"train_{normal_rows}x{sensors}.csv"
    small_file = work / f"startup_{STARTUP_ROWS}x{sensors}.csv"
    if not (data_file.exists() and train_file.exists() and small_file.exists()):
        # In a child: a forked child's peak RSS starts at its parent's, so the parent stays small.
        code = "from pipeline.benchmark.throughput import write_files; "
        code += f"write_files({rows}, {sensors}, {normal_rows}, {str(work)!r})"
        measured = run_child([sys.executable, "-c", code], work / "generate.log")
        log.info("wrote %s (%d rows x %d sensors) in %.1f s", data_file, rows, sensors, measured["seconds"])
    return data_file, train_file, small_file


def write_files(rows: int, sensors: int, normal_rows: int, work: str) -> None:
    """Generate the series and write the scored, training and start-up files into ``work``."""
    frame = generate_series(rows, normal_rows, sensors=sensors)
    folder = Path(work)
    write_csv(frame.iloc[:normal_rows], folder / f"train_{normal_rows}x{sensors}.csv")
    write_csv(frame.iloc[:STARTUP_ROWS], folder / f"startup_{STARTUP_ROWS}x{sensors}.csv")
    write_csv(frame, folder / f"sensors_{rows}x{sensors}.csv")


def _train(work: Path, train_file: Path, normal_rows: int, tracking_uri: str, epochs: int) -> dict:
    """Train and register the default model briefly (``epochs``) on the training file, once per work folder."""
    done = work / THROUGHPUT_TRAINED
    if done.exists():
        return json.loads(done.read_text())
    config = work / THROUGHPUT_TRAIN_CONFIG
    config.write_text(f"model:\n  epochs: {epochs}\n  patience: 1\n")
    normal_until = str(START + pd.Timedelta(seconds=normal_rows))
    command = _cli("train", "--input", str(train_file), "--normal-until", normal_until, "--config", str(config))
    measured = run_child([*command, "--tracking-uri", tracking_uri, "--model-name", MODEL_NAME], work / "train.log")
    trained = {"seconds": round(measured["seconds"], 1), "peak_rss_mb": round(measured["peak_rss_mb"], 1)}
    done.write_text(json.dumps(trained))
    return trained


def _bundle(work: Path, tracking_uri: str) -> Path:
    """The champion's bundle folder, copied out of the store into ``WORK/bundle``."""
    from pipeline.tracking import Tracker

    target = work / "bundle"
    if not (target / MODEL_FILE).exists():
        tracker = Tracker(tracking_uri, MODEL_NAME)
        version = tracker.model_version(MODEL_NAME).version
        with tracker.downloaded_bundle(MODEL_NAME, version) as folder:
            target.mkdir(exist_ok=True)
            for name in (MODEL_FILE, BUNDLE_FILE):
                shutil.copy(folder / name, target / name)
    return target


def _naive(mode: str, work: Path, bundle: Path, data: Path, rows: int, *extra: str) -> dict:
    command = [sys.executable, "-m", "pipeline.benchmark.naive", mode, str(bundle), str(data), str(rows), *extra]
    measured = run_child(command, work / f"naive_{mode}.log")
    figures = json.loads(measured["stdout"].strip().splitlines()[-1])
    return {**figures, "wall_seconds": measured["seconds"], "peak_rss_mb": measured["peak_rss_mb"]}


def run_benchmark(
    rows: int,
    work: Path,
    sensors: int = len(SENSORS),
    normal_rows: int = 100_000,
    epochs: int = 2,
    tracking_uri: str | None = None,
    fresh: bool = False,
) -> dict:
    """Measure everything the module docstring lists; returns the figures written to ``throughput.json``."""
    work = work.resolve()
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    normal_rows = min(normal_rows, rows)
    store_uri = f"sqlite:///{work / 'mlflow.db'}"  # the benchmark's own store: the model it trains stays out of yours
    data_file, train_file, small_file = _prepare(work, rows, sensors, normal_rows)
    trained = _train(work, train_file, normal_rows, store_uri, epochs)
    bundle = _bundle(work, store_uri)
    load_before = _load()

    score_args = ("--tracking-uri", store_uri, "--model-name", MODEL_NAME)
    startup_command = _cli("score", "--input", str(small_file), "--out", str(work / "out_startup"), *score_args)
    startup = run_child(startup_command, work / "startup.log")
    product = run_child(_cli("score", "--input", str(data_file), "--out", str(work / "out"), *score_args), work / "score.log")
    naive = _naive("score", work, bundle, data_file, min(rows, NAIVE_SCORE_ROWS))
    train_rows = min(normal_rows, NAIVE_TRAIN_ROWS)
    fit_naive = _naive("train-naive", work, bundle, train_file, train_rows, str(TRAIN_EPOCHS))
    fit_feed = _naive("train-feed", work, bundle, train_file, train_rows, str(TRAIN_EPOCHS))

    product_rate = rows / product["seconds"]
    naive_rate = naive["rows"] / naive["seconds"]
    figures = {
        "rows": rows,
        "sensors": sensors,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": _load(),
        "input_mb": round(data_file.stat().st_size / 2**20, 1),
        "product_score": {
            "seconds": round(product["seconds"], 2),
            "rows_per_second": round(product_rate),
            "peak_rss_mb": round(product["peak_rss_mb"], 1),
        },
        "startup": {
            "rows": STARTUP_ROWS,
            "seconds": round(startup["seconds"], 2),
            "peak_rss_mb": round(startup["peak_rss_mb"], 1),
        },
        "naive_score": {
            "rows": naive["rows"],
            "seconds": round(naive["seconds"], 2),  # windows + predict + errors, without import and load
            "rows_per_second": round(naive_rate),
            "wall_seconds": round(naive["wall_seconds"], 2),
            "peak_rss_mb": round(naive["peak_rss_mb"], 1),
        },
        "score_ratio": round(product_rate / naive_rate, 2),
        "train_naive": _train_figures(fit_naive),
        "train_feed": _train_figures(fit_feed),
        "train_ratio": round((fit_feed["windows"] / fit_feed["seconds"]) / (fit_naive["windows"] / fit_naive["seconds"]), 2),
        "model_training": trained,
    }
    (work / THROUGHPUT_JSON).write_text(json.dumps(figures, indent=2))
    _log_to_mlflow(figures, work / THROUGHPUT_JSON, tracking_uri)
    return figures


def _train_figures(measured: dict) -> dict:
    return {
        "windows": measured["windows"],
        "seconds": round(measured["seconds"], 2),
        "windows_per_second": round(measured["windows"] / measured["seconds"]),
        "peak_rss_mb": round(measured["peak_rss_mb"], 1),
    }


def _log_to_mlflow(figures: dict, path: Path, tracking_uri: str | None) -> None:
    from pipeline.tracking import Tracker

    tracker = Tracker(tracking_uri, "throughput-benchmark")
    with tracker.run("benchmark", run_name=f"throughput {figures['rows']:,} rows x {figures['sensors']} sensors"):
        tracker.log_params({"rows": figures["rows"], "sensors": figures["sensors"], "cpu_count": figures["cpu_count"]})
        metrics = {"score_ratio": figures["score_ratio"], "train_ratio": figures["train_ratio"]}
        metrics["load_average_1min"] = figures["load_average_before"]["1min"]
        for part in ("product_score", "startup", "naive_score", "train_naive", "train_feed"):
            for key, value in figures[part].items():
                metrics[f"{part}.{key}"] = value
        tracker.log_metrics(metrics)
        tracker.log_artifact(path)


def summary_lines(figures: dict) -> list[str]:
    """What the CLI prints: the figures and the ratios."""
    p, n, s = figures["product_score"], figures["naive_score"], figures["startup"]
    tn, tf = figures["train_naive"], figures["train_feed"]
    load = figures["load_average_before"]
    return [
        f"throughput: {figures['rows']:,} rows x {figures['sensors']} sensors on {figures['cpu_count']} cores "
        f"(load average {load['1min']} / {load['5min']} / {load['15min']} before)",
        f"  product score   {p['rows_per_second']:>9,} rows/s  ({p['seconds']:.1f} s, peak RSS {p['peak_rss_mb']:.0f} MB)",
        f"  naive Keras     {n['rows_per_second']:>9,} rows/s  ({n['rows']:,}-row prefix, peak RSS {n['peak_rss_mb']:.0f} MB)",
        f"  ratio           {figures['score_ratio']:.2f} x",
        f"  start-up        {s['seconds']:.2f} s for {s['rows']:,} rows (peak RSS {s['peak_rss_mb']:.0f} MB)",
        f"  training feed   {tf['windows_per_second']:>9,} windows/s (peak RSS {tf['peak_rss_mb']:.0f} MB)",
        f"  naive model.fit {tn['windows_per_second']:>9,} windows/s (peak RSS {tn['peak_rss_mb']:.0f} MB)",
        f"  ratio           {figures['train_ratio']:.2f} x",
    ]
