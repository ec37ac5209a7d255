"""Throughput benchmark of ``anomaly-pipeline score`` on a large generated file.

Generates a CSV of ``--rows`` rows x 8 pump-like sensors at 1-second steps (deterministic seed,
faults injected after the normal leading part), trains a small model on the leading part with
``runner.train_job`` against ``sqlite:///WORK/mlflow.db``, then runs the real CLI
``score`` as a child process and measures its wall time and peak resident memory.

    python -m pipeline.benchmark.throughput --rows 5000000 --work /tmp/bench

Writes ``WORK/throughput.json`` and prints the same figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from pipeline.sample_data import FAULTS, SENSORS, START, Fault, generate
from pipeline.store.names import THROUGHPUT_JSON, THROUGHPUT_TRAIN_CONFIG, THROUGHPUT_TRAINED

log = logging.getLogger("pipeline.benchmark.throughput")

SEED = 11
TIME_BINARY = "/usr/bin/time"


def generate_series(rows: int, normal_rows: int, seed: int = SEED) -> pd.DataFrame:
    """The sample pump at 1-second steps: ``timestamp`` + eight sensors, ``rows`` rows.

    The first ``normal_rows`` rows are fault-free; the four fault kinds of the sample data
    (drift, step, spike burst, stuck sensor) are injected at fixed fractions of the rest.
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
    frame = generate(days=rows / 86400, seed=seed, faults=faults, step_seconds=1)
    return frame.iloc[:rows]


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write with pyarrow (pandas ``to_csv`` is slow at millions of rows); naive timestamps as text."""
    stamps = pc.strftime(pa.array(frame["timestamp"]).cast(pa.timestamp("s")), format="%Y-%m-%d %H:%M:%S")
    table = pa.table({"timestamp": stamps, **{s: pa.array(frame[s].to_numpy()) for s in SENSORS}})
    pa_csv.write_csv(table, path, write_options=pa_csv.WriteOptions(quoting_style="needed"))
    return path


def train_model(train_file: Path, normal_until: str, tracking_uri: str, model_name: str, epochs: int, work: Path) -> str:
    """Train and register a small model on the leading normal part (few epochs) with
    ``anomaly-pipeline train`` as a child; returns what it printed."""
    config = work / THROUGHPUT_TRAIN_CONFIG
    config.write_text(f"model:\n  epochs: {epochs}\n  patience: 1\n  batch_size: 256\n")
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "train",
        "--input",
        str(train_file),
        "--normal-until",
        normal_until,
        "--config",
        str(config),
        "--tracking-uri",
        tracking_uri,
        "--model-name",
        model_name,
    ]
    child = subprocess.run(command, env=_child_env(), stdout=subprocess.PIPE, text=True)
    if child.returncode != 0:
        raise SystemExit(f"train failed with exit code {child.returncode}")
    return child.stdout


def _child_env() -> dict[str, str]:
    """This environment, with this worktree's package first on the path."""
    worktree = Path(__file__).resolve().parents[2]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(worktree), os.environ.get("PYTHONPATH")]))}


def run_score(input_file: Path, out_dir: Path, tracking_uri: str, model_name: str, log_file: Path) -> dict:
    """Run ``python -m pipeline score`` as a child; its wall time (s) and peak RSS (MB)."""
    env = _child_env()
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "score",
        "--input",
        str(input_file),
        "--out",
        str(out_dir),
        "--tracking-uri",
        tracking_uri,
        "--model-name",
        model_name,
    ]
    usage_file = log_file.with_suffix(".time")
    wrapped = [TIME_BINARY, "-o", str(usage_file), "-f", "%e %M"] + command if Path(TIME_BINARY).exists() else command
    log.info("running: %s", " ".join(command))
    started = time.perf_counter()
    with log_file.open("w") as stderr:
        child = subprocess.run(wrapped, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"score failed with exit code {child.returncode}; see {log_file}")
    if wrapped is not command:
        wall, max_kb = usage_file.read_text().split()[-2:]
        seconds, peak_kb = float(wall), int(max_kb)
    else:  # Linux reports ru_maxrss in kilobytes
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"command": command, "stdout": child.stdout, "seconds": seconds, "peak_rss_mb": peak_kb / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows of the scored file (default: 5,000,000)")
    parser.add_argument("--work", required=True, type=Path, help="working folder (data, MLflow store, reports)")
    parser.add_argument(
        "--normal-rows", type=int, default=172_800, help="fault-free leading rows used for training (default: two days)"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model-name", default="throughput-benchmark")
    parser.add_argument("--fresh", action="store_true", help="regenerate data and retrain even if present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

    work = args.work.resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    normal_rows = min(args.normal_rows, args.rows)
    data_file = work / f"sensors_{args.rows}.csv"
    train_file = work / f"train_{normal_rows}.csv"
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"

    if not data_file.exists() or not train_file.exists():
        started = time.perf_counter()
        frame = generate_series(args.rows, normal_rows)
        write_csv(frame.iloc[:normal_rows], train_file)
        write_csv(frame, data_file)
        del frame
        log.info(
            "wrote %s (%d rows x %d sensors, %.0f MB) in %.1f s",
            data_file,
            args.rows,
            len(SENSORS),
            data_file.stat().st_size / 2**20,
            time.perf_counter() - started,
        )

    normal_until = str(START + pd.Timedelta(seconds=normal_rows))
    if not (work / THROUGHPUT_TRAINED).exists():
        started = time.perf_counter()
        printed = train_model(train_file, normal_until, tracking_uri, args.model_name, args.epochs, work)
        (work / THROUGHPUT_TRAINED).write_text(json.dumps({"train": printed.splitlines()[0] if printed else ""}))
        log.info("%s in %.1f s", printed.splitlines()[0] if printed else "trained", time.perf_counter() - started)

    measured = run_score(data_file, work / "out", tracking_uri, args.model_name, work / "score.log")
    print(measured["stdout"], end="")
    figures = {
        "rows": args.rows,
        "sensors": len(SENSORS),
        "seconds": round(measured["seconds"], 2),
        "rows_per_second": round(args.rows / measured["seconds"], 1),
        "peak_rss_mb": round(measured["peak_rss_mb"], 1),
        "command": " ".join(measured["command"]),
        "input_mb": round(data_file.stat().st_size / 2**20, 1),
    }
    (work / THROUGHPUT_JSON).write_text(json.dumps(figures, indent=2))
    log.info(
        "score: %d rows in %.1f s (%.0f rows/s), peak RSS %.0f MB",
        args.rows,
        figures["seconds"],
        figures["rows_per_second"],
        figures["peak_rss_mb"],
    )
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
