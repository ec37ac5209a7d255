"""Fleet benchmark: generate a fleet, train a model per asset and score it, on the chosen engine.

Each asset is the project's pump generator (``pipeline.sample_data``) with its own seed, level,
noise, load-cycle phase and swing, at 1-minute steps. The first half of each asset's rows is
normal and is the training input (``train/<asset>/``); the second half is scored
(``score/<asset>/``), and every third asset gets one fault there (the four kinds of the sample
data in turn). Training and scoring run as the real command line in child processes
(``--asset-folders``), so the wall time and peak memory are the product's own.

A fault is caught when an event of its asset overlaps it. An event is false when it overlaps no
fault of its asset, counting the hour after a fault's end as the fault's (thermal sensors take
that long to settle).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.sample_data import FAULTS, SENSORS, START, Fault, generate
from pipeline.store.names import (
    ANOMALIES_FILE,
    FLEET_BENCHMARK_FAULTS,
    FLEET_BENCHMARK_JSON,
    FLEET_BENCHMARK_SCORE,
    FLEET_BENCHMARK_TRAIN,
    FLEET_FILE,
)
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)

STEP_SECONDS = 60
FAULT_EVERY = 3  # every third asset gets a fault
AFTERMATH = pd.Timedelta(hours=1)
TIME_BINARY = "/usr/bin/time"  # GNU time: the child's wall time and peak resident memory


@dataclass(frozen=True)
class Phase:
    """One child command: its wall time, its largest process's peak resident memory, its exit code."""

    seconds: float
    peak_rss_mb: float
    exit_code: int


def asset_id(index: int) -> str:
    return f"P-{index:03d}"


def generate_fleet(assets: int, rows: int, folder: Path, seed: int = 0) -> pd.DataFrame:
    """Write the fleet's train and score folders; returns the injected faults (asset, kind, sensor, start, end)."""
    rng = np.random.default_rng(seed)
    half = rows // 2
    spare_hours = (rows - half) * STEP_SECONDS / 3600
    faults = []
    for index in range(assets):
        asset = asset_id(index)
        fault = []
        if index % FAULT_EVERY == 0:
            kind = FAULTS[(index // FAULT_EVERY) % len(FAULTS)]
            hours = min(kind.hours, spare_hours / 4)
            start = START + pd.Timedelta(seconds=(half + int(rng.uniform(0.2, 0.7) * (rows - half))) * STEP_SECONDS)
            fault = [Fault(kind.kind, kind.sensor, str(start), hours, kind.description)]
            faults.append({"asset": asset, "kind": kind.kind, "sensor": kind.sensor, "start": start,
                           "end": start + pd.Timedelta(hours=hours)})  # fmt: skip
        frame = generate(
            days=rows * STEP_SECONDS / 86400 + 1 / 1440,
            seed=1000 + index,
            faults=fault,
            step_seconds=STEP_SECONDS,
            phase_hours=float(rng.uniform(0, 24)),
            load_swing=float(rng.uniform(0.12, 0.28)),
        ).iloc[:rows]
        level, noise = rng.uniform(0.9, 1.1, len(SENSORS)), rng.uniform(0.0, 0.05, len(SENSORS))
        values = frame[SENSORS].to_numpy()
        values = values * level + rng.normal(0, 1, values.shape) * noise * values.std(axis=0)
        frame[SENSORS] = np.round(values, 4)
        for part, rows_of in ((FLEET_BENCHMARK_TRAIN, frame.iloc[:half]), (FLEET_BENCHMARK_SCORE, frame.iloc[half:])):
            (folder / part / asset).mkdir(parents=True, exist_ok=True)
            rows_of.to_csv(folder / part / asset / "readings.csv", index=False, date_format="%Y-%m-%d %H:%M:%S")
    table = pd.DataFrame(faults, columns=["asset", "kind", "sensor", "start", "end"])
    table.to_csv(folder / FLEET_BENCHMARK_FAULTS, index=False)
    return table


def judge_events(events: pd.DataFrame, faults: pd.DataFrame) -> dict[str, int]:
    """Faults caught (an event of the asset overlaps the fault) and false events (an event overlapping no fault)."""
    starts, ends = pd.to_datetime(events["start"], utc=True), pd.to_datetime(events["end"], utc=True)
    fault_start, fault_end = pd.to_datetime(faults["start"], utc=True), pd.to_datetime(faults["end"], utc=True)
    caught, explained = 0, np.zeros(len(events), dtype=bool)
    for asset, f_start, f_end in zip(faults["asset"], fault_start, fault_end):
        after_start = (events["asset"].to_numpy() == asset) & (ends >= f_start).to_numpy()
        caught += bool((after_start & (starts <= f_end).to_numpy()).any())
        explained |= after_start & (starts <= f_end + AFTERMATH).to_numpy()
    return {"faults": len(faults), "faults_caught": caught, "false_events": int((~explained).sum()), "events": len(events)}


def run_phase(command: list[str], log_file: Path) -> Phase:
    """Run the command line as a child under GNU time (when present); its wall time and peak RSS."""
    usage = log_file.with_suffix(".time")
    timed = [TIME_BINARY, "-o", str(usage), "-f", "%e %M", *command] if Path(TIME_BINARY).exists() else command
    log.info("running: %s", " ".join(command))
    started = time.perf_counter()
    with log_file.open("w") as stderr:
        child = subprocess.run(timed, env={**os.environ, "PYTHONPATH": _package_root()}, stdout=stderr, stderr=stderr)
    seconds, peak_mb = time.perf_counter() - started, float("nan")
    if timed is not command and usage.exists():
        wall, max_kb = usage.read_text().split()[-2:]
        seconds, peak_mb = float(wall), int(max_kb) / 1024
    return Phase(round(seconds, 2), round(peak_mb, 1), child.returncode)


def _package_root() -> str:
    """This checkout first on the children's path, so they run the code being measured."""
    return os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))


def run_fleet_benchmark(
    assets: int, rows: int, out: Path, tracking_uri: str | None, engine: list[str], config: Path | None = None
) -> dict:
    """Generate, train, score and judge; returns the figures (also in ``OUT/fleet_benchmark.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or f"sqlite:///{out.resolve() / 'mlflow.db'}"
    started = time.perf_counter()
    faults = generate_fleet(assets, rows, out)
    generated = time.perf_counter() - started
    common = ["--asset-folders", "--model-name", "fleet-benchmark", "--tracking-uri", uri, *engine]
    cli = [sys.executable, "-m", "pipeline"]
    train_args = ["train", "--input", str(out / FLEET_BENCHMARK_TRAIN), *(["--config", str(config)] if config else [])]
    train = run_phase([*cli, *train_args, *common], out / "train.log")
    score = run_phase([*cli, "score", "--input", str(out / FLEET_BENCHMARK_SCORE), "--out", str(out / "reports"), *common],
                      out / "score.log")  # fmt: skip
    fleet = pd.read_csv(out / "reports" / FLEET_FILE) if (out / "reports" / FLEET_FILE).exists() else pd.DataFrame()
    events = pd.read_csv(out / "reports" / ANOMALIES_FILE) if (out / "reports" / ANOMALIES_FILE).exists() else pd.DataFrame()
    half = rows // 2
    figures = {
        "assets": assets,
        "rows_per_asset": rows,
        "engine": " ".join(engine) or "default",
        "cores": os.cpu_count(),
        "generate_seconds": round(generated, 2),
        "train": {**train.__dict__, "rows_per_second": round(assets * half / train.seconds, 1)},
        "score": {**score.__dict__, "rows_per_second": round(assets * (rows - half) / score.seconds, 1)},
        "assets_scored": int((fleet["status"] == "ok").sum()) if len(fleet) else 0,
        **(judge_events(events, faults) if len(events.columns) else {"faults": len(faults), "faults_caught": 0}),
    }
    (out / FLEET_BENCHMARK_JSON).write_text(json.dumps(figures, indent=2))
    _log(uri, figures, out / FLEET_BENCHMARK_JSON)
    return figures


def _log(uri: str, figures: dict, path: Path) -> None:
    tracker = Tracker(uri, "fleet-benchmark")
    with tracker.run("benchmark", run_name=f"fleet benchmark {figures['assets']} x {figures['rows_per_asset']}"):
        tracker.log_params({k: figures[k] for k in ("assets", "rows_per_asset", "engine", "cores")})
        flat = {f"{phase}_{k}": v for phase in ("train", "score") for k, v in figures[phase].items()}
        tracker.log_metrics({k: float(v) for k, v in {**flat, **figures}.items() if isinstance(v, int | float)})
        tracker.log_artifact(path)
