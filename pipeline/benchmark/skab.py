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
import math
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.benchmark.peers import PEERS, run_peer
from pipeline.config import PipelineConfig, to_yaml, with_overrides
from pipeline.data.loading import load_input
from pipeline.detector.bundle import ModelBundle, load_bundle
from pipeline.detector.fitting import fit_bundle
from pipeline.detector.scoring import flag_events, score_rows
from pipeline.errors import InputError
from pipeline.evaluation.metrics import Counts, confusion
from pipeline.store.names import PEERS_FOLDER, PREDICTIONS_FOLDER, PRODUCT_CONFIG_ARTIFACT, SUMMARY_JSON, SUMMARY_MD

log = logging.getLogger(__name__)

GROUPS = ("valve1", "valve2", "other")
TRAIN_ROWS = 400
PRODUCT = "product"
DETECTORS = (PRODUCT, *PEERS)
LABEL_COLUMNS = ["anomaly", "changepoint"]
EXPERIMENT = "skab-benchmark"


@dataclass
class SkabFile:
    group: str
    name: str  # file stem, e.g. "3"
    path: Path

    @property
    def key(self) -> str:
        return f"{self.group}/{self.name}"


@dataclass
class DetectorResult:
    counts: dict[str, Counts] = field(default_factory=dict)  # file key -> counts
    seconds: float = 0.0


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
    detectors = list(detectors or DETECTORS)
    unknown = sorted(set(detectors) - set(DETECTORS))
    if unknown:
        raise InputError(f"--detector: unknown {', '.join(unknown)}; known: {', '.join(DETECTORS)}")
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
                results[name].counts[skab.key] = confusion(anomaly, labels)
                folder = out_dir / PREDICTIONS_FOLDER if name == PRODUCT else out_dir / PEERS_FOLDER / name
                _write_predictions(folder / skab.group / f"{skab.name}.csv", frame["datetime"].iloc[TRAIN_ROWS:], anomaly, score)
            log.info("file %d of %d: %s done", number, len(files), skab.key)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    wall = time.perf_counter() - started
    summary = summarise(results, files, wall)
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


def summarise(results: dict[str, DetectorResult], files: list[SkabFile], wall_seconds: float) -> dict[str, Any]:
    """Figures per detector: overall, per group and per file, with counts and seconds."""
    detectors = {}
    for name, result in results.items():
        groups = {}
        for group in GROUPS:
            keys = [f.key for f in files if f.group == group]
            if keys:
                groups[group] = sum((result.counts[k] for k in keys), Counts()).figures()
        overall = sum(result.counts.values(), Counts()).figures()
        detectors[name] = {
            "overall": overall,
            "groups": groups,
            "files": {key: counts.figures() for key, counts in result.counts.items()},
            "seconds": round(result.seconds, 2),
        }
    return {
        "protocol": (
            f"SKAB outlier detection: fit on rows 0..{TRAIN_ROWS - 1}, predict rows {TRAIN_ROWS}..end, "
            "point-wise counts summed over files"
        ),
        "files": len(files),
        "wall_seconds": round(wall_seconds, 2),
        "detectors": detectors,
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f} %"


def _f1(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render_markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# SKAB benchmark",
        "",
        f"{summary['protocol']}; {summary['files']} files; wall time {summary['wall_seconds']:.1f} s.",
        "",
        "| detector | F1 | FAR | MAR | " + " | ".join(f"{g} F1 / FAR / MAR" for g in GROUPS) + " | seconds |",
        "|---|---|---|---|" + "---|" * len(GROUPS) + "---|",
    ]
    for name, result in summary["detectors"].items():
        o = result["overall"]
        cells = [
            f"{_f1(g['f1'])} / {_pct(g['far'])} / {_pct(g['mar'])}" if (g := result["groups"].get(group)) else "-"
            for group in GROUPS
        ]
        lines.append(
            f"| {name} | {_f1(o['f1'])} | {_pct(o['far'])} | {_pct(o['mar'])} | "
            + " | ".join(cells)
            + f" | {result['seconds']:.1f} |"
        )
    names = list(summary["detectors"])
    lines += ["", "## Per file (F1 / FAR / MAR)", "", "| file | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    keys = list(next(iter(summary["detectors"].values()))["files"]) if names else []
    for key in keys:
        cells = []
        for name in names:
            f = summary["detectors"][name]["files"][key]
            cells.append(f"{_f1(f['f1'])} / {_pct(f['far'])} / {_pct(f['mar'])}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
                tracker.log_metrics(metrics)
