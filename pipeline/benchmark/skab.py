"""The SKAB outlier-detection benchmark: the product's detector and its peers, side by side.

Protocol (GUIDE section 4): for each of the labelled files (``valve1/``, ``valve2/``,
``other/``), fit on rows 0..399 only and predict rows 400..end; earlier rows may serve as window
context, their labels are never read by a detector. Point-wise confusion counts are summed over
all files (micro-average) for F1, FAR and MAR, overall and per group.

The product runs with the default ``PipelineConfig``: only the column roles (timestamp, the
label columns left out of the sensors) and the train/test split are set, exactly as a user
would run ``train`` with ``--normal-until`` on the file.

Writes ``OUT/predictions/<group>/<file>.csv`` (product) and
``OUT/peers/<detector>/<group>/<file>.csv`` with columns ``datetime`` (as in the source),
``anomaly`` (0/1) and ``score``, one row per test row; ``OUT/summary.json`` and
``OUT/summary.md``; and one MLflow parent run with a nested run per detector.

The peers run in worker processes, file by file, while the product trains in this one: the
machine's cores then serve both (each detector's figures are the same as run alone).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.benchmark.peers import PEERS, PYOD_PEERS, available_peers, run_peer
from pipeline.benchmark.summary import GROUPS, DetectorResult, render_markdown, summarise
from pipeline.config import PipelineConfig, to_yaml, with_overrides
from pipeline.data.loading import load_input
from pipeline.detector.bundle import ModelBundle, load_bundle
from pipeline.detector.fitting import fit_bundle
from pipeline.detector.scoring import flag_events, score_rows
from pipeline.errors import InputError
from pipeline.store.names import PEERS_FOLDER, PREDICTIONS_FOLDER, PRODUCT_CONFIG_ARTIFACT, SUMMARY_JSON, SUMMARY_MD

log = logging.getLogger(__name__)

TRAIN_ROWS = 400
PRODUCT = "product"
DETECTORS = (PRODUCT, *PEERS, *PYOD_PEERS)
LABEL_COLUMNS = ["anomaly", "changepoint"]
EXPERIMENT = "skab-benchmark"
TRACKED_EVENT_FIGURES = ("event_precision", "event_recall", "event_f1", "false_events_per_1000_normal_rows")


@dataclass
class SkabFile:
    group: str
    name: str  # file stem, e.g. "3"
    path: Path

    @property
    def key(self) -> str:
        return f"{self.group}/{self.name}"


def discover(data_dir: Path) -> list[SkabFile]:
    """The labelled files of a SKAB folder, group by group, in numeric order.

    Raises:
        InputError: the folder holds none of the groups.
    """
    files = []
    for group in GROUPS:
        paths = sorted((data_dir / group).glob("*.csv"), key=lambda p: (len(p.stem), p.stem))
        files += [SkabFile(group, p.stem, p) for p in paths]
    if not files:
        raise InputError(f"{data_dir}: no SKAB files (expected {', '.join(g + '/*.csv' for g in GROUPS)})")
    return files


def read_skab(path: Path) -> pd.DataFrame:
    """A SKAB file as text datetimes, sensor floats and the two label columns.

    Raises:
        InputError: the file lacks the ``datetime`` or ``anomaly`` column or has too few rows.
    """
    frame = pd.read_csv(path, sep=";")
    for column in ("datetime", "anomaly"):
        if column not in frame.columns:
            raise InputError(f"{path}: no '{column}' column (not a SKAB file)")
    if len(frame) <= TRAIN_ROWS:
        raise InputError(f"{path}: {len(frame)} rows, the protocol needs more than {TRAIN_ROWS}")
    return frame


def sensor_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("datetime", *LABEL_COLUMNS)]


def product_config(frame: pd.DataFrame, base: PipelineConfig | None = None) -> PipelineConfig:
    """The default configuration with only the column roles and the train/test split set."""
    return with_overrides(
        base or PipelineConfig(),
        {
            "ingest.timestamp_column": "datetime",
            "ingest.exclude_columns": LABEL_COLUMNS,
            "training.normal_until": str(frame["datetime"].iloc[TRAIN_ROWS]),
        },
    )


def run_product(path: Path, frame: pd.DataFrame, base: PipelineConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train the product on rows 0..399 of one file and flag rows 400..end, as ``train`` + ``score`` do."""
    config = product_config(frame, base)
    loaded = load_input([(path.name, path)], config.ingest)
    fitted, _ = fit_bundle(loaded.result, config)
    return predict_test_rows(fitted, loaded.result.table, len(frame))


def predict_test_rows(fitted: ModelBundle, table: pd.DataFrame, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Flags and scores of a file's test rows (400..end) by a fitted bundle, as ``score`` gives them."""
    with tempfile.TemporaryDirectory(prefix="skab-bundle-") as folder:
        # Round trip through the bundle folder, as ``train`` then ``score`` do (NumPy twin, bundle.json).
        bundle = load_bundle(fitted.save(Path(folder)))
    rows = score_rows(bundle, table)
    flagged = flag_events(bundle, rows) > 0
    # Map back to the file's rows: rows set aside by ingest are not flagged and have no score.
    anomaly = np.zeros(n_rows, dtype=np.int8)
    score = np.full(n_rows, np.nan)
    file_rows = table["row"].to_numpy()
    anomaly[file_rows] = flagged
    score[file_rows] = rows.score
    return anomaly[TRAIN_ROWS:], score[TRAIN_ROWS:]


def run_benchmark(
    data_dir: Path,
    out_dir: Path,
    tracking_uri: str | None = None,
    detectors: list[str] | None = None,
    base: PipelineConfig | None = None,
    peer_workers: int | None = None,
) -> dict[str, Any]:
    """Run every detector on every labelled file; write predictions, summaries and MLflow runs.

    ``peer_workers`` processes run the peers (``None``: one beside the product, else one per
    core up to two; ``0``: in this process, one detector after the other). Each detector's
    ``seconds`` are the time it took in its own process.

    Returns:
        The summary (also written to ``OUT/summary.json``).

    Raises:
        InputError: unknown detector, or the data folder is not SKAB.
    """
    detectors = list(detectors or (PRODUCT, *available_peers()))
    unknown = sorted(set(detectors) - set(DETECTORS))
    if unknown:
        raise InputError(f"--detector: unknown {', '.join(unknown)}; known: {', '.join(DETECTORS)}")
    missing = sorted(set(detectors) - {PRODUCT, *available_peers()})
    if missing:
        raise InputError(f"--detector: {', '.join(missing)} need PyOD: pip install 'anomaly-pipeline[bench]'")
    files = discover(data_dir)
    started = time.perf_counter()
    results = {name: DetectorResult() for name in detectors}
    peers = [name for name in detectors if name != PRODUCT]
    workers = _peer_workers(PRODUCT in detectors) if peer_workers is None else peer_workers
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if peers and workers > 0 else None
    try:
        # Every file's peers are queued at once; the product runs here meanwhile.
        pending = [pool.submit(peer_predictions, skab.path, peers) for skab in files] if pool else []
        for number, skab in enumerate(files, start=1):
            frame = read_skab(skab.path)
            labels = frame["anomaly"].to_numpy()[TRAIN_ROWS:]
            outputs = {}
            if PRODUCT in detectors:
                tick = time.perf_counter()
                anomaly, score = run_product(skab.path, frame, base)
                outputs[PRODUCT] = (anomaly, score, time.perf_counter() - tick)
            if peers:
                outputs.update(pending[number - 1].result() if pool else peer_predictions(skab.path, peers))
            for name in detectors:
                anomaly, score, seconds = outputs[name]
                results[name].seconds += seconds
                results[name].add(skab.key, anomaly, score, labels)
                folder = out_dir / PREDICTIONS_FOLDER if name == PRODUCT else out_dir / PEERS_FOLDER / name
                _write_predictions(folder / skab.group / f"{skab.name}.csv", frame["datetime"].iloc[TRAIN_ROWS:], anomaly, score)
            log.info("file %d of %d: %s done", number, len(files), skab.key)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    wall = time.perf_counter() - started
    summary = summarise(results, [(f.group, f.key) for f in files], wall, TRAIN_ROWS)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    (out_dir / SUMMARY_MD).write_text(render_markdown(summary))
    _track(summary, out_dir, tracking_uri, product_config(read_skab(files[0].path), base) if PRODUCT in detectors else None)
    return summary


def peer_predictions(path: Path, names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Run the peers ``names`` on one SKAB file: anomaly flags, scores and seconds per peer."""
    frame = read_skab(path)
    values = frame[sensor_columns(frame)].to_numpy(dtype=np.float64)
    outputs = {}
    for name in names:
        tick = time.perf_counter()
        peer = run_peer(name, values, TRAIN_ROWS)
        outputs[name] = (peer.anomaly, peer.score, time.perf_counter() - tick)
    return outputs


def _peer_workers(with_product: bool) -> int:
    # The product trains in this process on one core; the peers take the rest (two at most:
    # each worker holds a TensorFlow runtime).
    cores = os.cpu_count() or 1
    return max(1, min(2, cores - 1 if with_product else cores))


def _write_predictions(path: Path, datetimes: pd.Series, anomaly: np.ndarray, score: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"datetime": datetimes.to_numpy(), "anomaly": anomaly.astype(int), "score": score})
    frame.to_csv(path, index=False, float_format="%.6g")


def _track(summary: dict[str, Any], out_dir: Path, tracking_uri: str | None, config: PipelineConfig | None) -> None:
    from pipeline.tracking import Tracker

    tracker = Tracker(tracking_uri, EXPERIMENT)
    with tracker.run("benchmark", "skab"):
        tracker.log_params({"files": summary["files"], "detectors": ", ".join(summary["detectors"])})
        tracker.log_metrics({"wall_seconds": summary["wall_seconds"]})
        if config is not None:
            tracker.log_text(to_yaml(config), PRODUCT_CONFIG_ARTIFACT)
        tracker.log_artifact(out_dir / SUMMARY_JSON)
        tracker.log_artifact(out_dir / SUMMARY_MD)
        for name, result in summary["detectors"].items():
            with tracker.run("benchmark", name, tags={"detector": name}, nested=True):
                if name == PRODUCT and config is not None:
                    tracker.log_params(config.flat())
                metrics = {"seconds": result["seconds"]}
                for scope, figures in [("", result["overall"])] + [(f"{g}_", v) for g, v in result["groups"].items()]:
                    metrics.update({f"{scope}{k}": figures[k] for k in ("f1", "far", "mar") if figures[k] is not None})
                    events = figures["events"]
                    metrics.update({f"{scope}{k}": v for k, v in events.items() if k in TRACKED_EVENT_FIGURES and v is not None})
                tracker.log_metrics(metrics)
