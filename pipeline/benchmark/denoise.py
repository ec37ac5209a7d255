"""Denoising measured: the autoencoder's reconstruction against known clean signals.

The project's pump generator (``pipeline.sample_data``, no faults) gives the clean signals
(``noise=0``) and, with the same seed, the same signals with measurement noise (``noise=k``:
each sensor's own noise level times k). A model trains on the noisy rows of the first
``train_days`` (exactly as ``train`` with ``--normal-until``) and reconstructs the noisy rows
after them; per sensor, in original units, over the test rows that have a full window:

* ``rmse_input``: RMSE of the noisy input against the clean signal (the noise itself);
* ``rmse_last``: RMSE of the reconstruction the product writes (``reconstruct``: the last row of
  the window ending at the row, causal) against the clean signal;
* ``rmse_mean``: the same for the mean over every window holding the row (not causal: it uses the
  ``window_size - 1`` rows after the row), for comparison;
* the **noise-reduction ratio** ``rmse_input / rmse_*``: above 1 the reconstruction is closer to
  the clean signal than the input was.

Two models per noise level: ``plain`` (``model.input_noise: 0``) and ``denoising`` (trained on
inputs with Gaussian noise of ``input_noise`` standard deviations added, targets as given).
Overall figures are the means over sensors of the per-sensor ratios.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import PipelineConfig, with_overrides
from pipeline.data.loading import load_input
from pipeline.detector.bundle import ModelBundle, load_bundle
from pipeline.detector.fitting import fit_bundle
from pipeline.detector.latent import reconstruction_batches
from pipeline.features.windows import gather_windows, segment_ids, window_starts
from pipeline.sample_data import SENSORS, START, generate

log = logging.getLogger(__name__)

EXPERIMENT = "denoise-benchmark"
RESULT_JSON = "denoise.json"
RESULT_MD = "denoise.md"


def mean_over_windows(bundle: ModelBundle, table: pd.DataFrame) -> np.ndarray:
    """Per row, the mean of the reconstructions of every window holding it, in original units
    (NaN for rows in no full window), (n_rows, n_sensors). Offline: needs the rows after each row."""
    values = bundle.scaler.transform_frame(table)
    window = bundle.window_size
    centred = bundle.scaler.centred_mask
    starts = window_starts(segment_ids(table["timestamp"], bundle.max_gap_seconds), window)
    total = np.zeros(values.shape, dtype=np.float64)
    count = np.zeros(len(values), dtype=np.int64)
    for lo in range(0, len(starts), 4096):
        batch = starts[lo : lo + 4096]
        windows = gather_windows(values, batch, window)
        means = windows.mean(axis=1) if centred is not None else None
        if centred is not None:
            windows[:, :, centred] -= means[:, None, centred]
        rebuilt = np.asarray(bundle.model.predict_on_batch(windows), dtype=np.float64)
        if centred is not None:
            rebuilt[:, :, centred] += means[:, None, centred]
        for offset in range(window):
            np.add.at(total, batch + offset, rebuilt[:, offset])
        np.add.at(count, (batch[:, None] + np.arange(window)).ravel(), 1)
    with np.errstate(invalid="ignore"):
        scaled = total / count[:, None]
    return scaled * np.asarray(bundle.scaler.scale) + np.asarray(bundle.scaler.mean)


def last_of_window(bundle: ModelBundle, table: pd.DataFrame) -> np.ndarray:
    """Per row, the product's reconstruction (``reconstruct``), NaN without a full window."""
    out = np.full((len(table), len(bundle.sensors)), np.nan)
    for ends, rebuilt in reconstruction_batches(bundle, table):
        out[ends] = rebuilt
    return out


def _rmse(error: np.ndarray) -> np.ndarray:
    return np.sqrt(np.nanmean(np.square(error), axis=0))


def measure(
    work: Path, noise: float, model_noise: float, base: PipelineConfig, days: float, train_days: float, seed: int
) -> dict[str, Any]:
    """One noise level, one model: its per-sensor RMSEs and ratios."""
    clean = generate(days=days, seed=seed, faults=[], noise=0.0)
    noisy = generate(days=days, seed=seed, faults=[], noise=noise)
    path = work / f"noisy_{noise:g}.csv"
    if not path.is_file():
        noisy.to_csv(path, index=False, date_format="%Y-%m-%d %H:%M:%S")
    until = START + pd.Timedelta(days=train_days)
    config = with_overrides(
        base, {"training.normal_until": until.isoformat(sep=" "), "model.input_noise": model_noise, "model.seed": seed}
    )
    loaded = load_input([(path.name, path)], config.ingest)
    tick = time.perf_counter()
    fitted, fit = fit_bundle(loaded.result, config)
    seconds = time.perf_counter() - tick
    with tempfile.TemporaryDirectory(prefix="denoise-") as folder:
        bundle = load_bundle(fitted.save(Path(folder)))  # as reconstruct loads it (NumPy twin)
    table = loaded.result.table
    rows = table["row"].to_numpy()
    test = (table["timestamp"] >= until.tz_localize("UTC")).to_numpy()
    truth = clean[bundle.sensors].to_numpy(np.float64)[rows][test]
    measured = noisy[bundle.sensors].to_numpy(np.float64)[rows][test]
    last = last_of_window(bundle, table)[test]
    mean = mean_over_windows(bundle, table)[test]
    usable = np.isfinite(last).all(axis=1) & np.isfinite(mean).all(axis=1)
    rmse_input = _rmse((measured - truth)[usable])
    rmse_last = _rmse((last - truth)[usable])
    rmse_mean = _rmse((mean - truth)[usable])
    sensors = {
        sensor: {
            "rmse_input": float(rmse_input[i]),
            "rmse_last": float(rmse_last[i]),
            "rmse_mean": float(rmse_mean[i]),
            "ratio_last": float(rmse_input[i] / rmse_last[i]),
            "ratio_mean": float(rmse_input[i] / rmse_mean[i]),
        }
        for i, sensor in enumerate(bundle.sensors)
    }
    return {
        "noise": noise,
        "input_noise": model_noise,
        "test_rows": int(usable.sum()),
        "best_epoch": fit.best_epoch,
        "train_seconds": round(seconds, 1),
        "ratio_last": float(np.mean([s["ratio_last"] for s in sensors.values()])),
        "ratio_mean": float(np.mean([s["ratio_mean"] for s in sensors.values()])),
        "sensors": sensors,
    }


def run_denoise(
    out_dir: Path,
    noises: list[float],
    input_noise: float = 0.3,
    base: PipelineConfig | None = None,
    tracking_uri: str | None = None,
    days: float = 6.0,
    train_days: float = 4.0,
    seed: int = 7,
) -> dict[str, Any]:
    """Every noise level with a plain and a denoising model; writes ``denoise.json`` / ``.md`` and an MLflow run."""
    base = base or PipelineConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs = []
    for noise in noises:
        for name, model_noise in (("plain", 0.0), ("denoising", input_noise)):
            log.info("noise x%g, %s model (input_noise %g)", noise, name, model_noise)
            runs.append({"model": name, **measure(out_dir, noise, model_noise, base, days, train_days, seed)})
    result = {
        "generator": f"pump, {days:g} days at 1 min, seed {seed}, no faults; train on the first {train_days:g} days",
        "sensors": SENSORS,
        "architecture": base.model.architecture,
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / RESULT_JSON).write_text(json.dumps(result, indent=2))
    (out_dir / RESULT_MD).write_text(render(result))
    _track(result, out_dir, tracking_uri, base)
    return result


def render(result: dict[str, Any]) -> str:
    """Markdown: one row per noise level and model, the mean ratios and each sensor's (last-row) ratio."""
    sensors = result["sensors"]
    head = ["noise x", "model", "ratio, last row (product)", "ratio, mean over windows", *sensors]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in result["runs"]:
        cells = [f"{run['noise']:g}", f"{run['model']} ({run['input_noise']:g})", f"{run['ratio_last']:.2f}"]
        cells += [f"{run['ratio_mean']:.2f}", *(f"{run['sensors'][s]['ratio_last']:.2f}" for s in sensors)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _track(result: dict[str, Any], out_dir: Path, tracking_uri: str | None, base: PipelineConfig) -> None:
    from pipeline.tracking import Tracker

    tracker = Tracker(tracking_uri, EXPERIMENT)
    with tracker.run("benchmark", "denoise"):
        tracker.log_params({"generator": result["generator"], **base.flat()})
        metrics = {"wall_seconds": result["wall_seconds"]}
        for run in result["runs"]:
            key = f"{run['model']}_x{run['noise']:g}"
            metrics[f"{key}.ratio_last"] = run["ratio_last"]
            metrics[f"{key}.ratio_mean"] = run["ratio_mean"]
        tracker.log_metrics(metrics)
        tracker.log_artifact(out_dir / RESULT_JSON)
        tracker.log_artifact(out_dir / RESULT_MD)
