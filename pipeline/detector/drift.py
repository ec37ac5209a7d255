"""Data drift: each sensor's incoming values against its training distribution (pure: no I/O).

At training, ``fit_reference`` records per sensor, over the normal rows: the interior edges of
``drift.bins`` training-quantile bins, the training share of each bin, the mean, standard
deviation, minimum and maximum. The reference travels in ``bundle.json`` (``sensor_reference``).

Each scored batch gets, per sensor (``drift_figures``):

- ``mean_shift_sigma``: (batch mean - training mean) / training standard deviation;
- ``psi``: the population stability index over the training bins, sum of (q - p) ln(q / p)
  with p the training share and q the batch share of a bin (both floored at ``PSI_FLOOR``);
- ``outside_range_share``: the share of the batch's values below the training minimum or above
  the training maximum.

A sensor is past the limits (``drift.*``) when any figure is (``|mean_shift_sigma|`` for the
shift); sensors with fewer than ``drift.min_rows`` values in the batch are not judged. The model
is stale when a sensor has been past the limits for ``drift.stale_batches`` batches in a row
(``advance_streaks``, ``stale_sensors``). Drift is a data-quality signal, apart from anomalies.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import DriftConfig

PSI_FLOOR = 1e-4  # a bin's share is at least this in the PSI (an empty bin would make it infinite)
FIGURES = ("mean_shift_sigma", "psi", "outside_range_share")


def fit_reference(values: np.ndarray, sensors: list[str], bins: int) -> dict[str, dict]:
    """The training-side reference of each sensor.

    Args:
        values: the raw normal training rows, shape (n_rows, n_sensors); NaN is left out.
        bins: how many training-quantile bins (fewer when values repeat so that edges coincide).
    """
    reference = {}
    for i, sensor in enumerate(sensors):
        column = values[:, i]
        column = column[np.isfinite(column)]
        if column.size == 0:
            continue
        edges = np.unique(np.quantile(column, np.linspace(0, 1, bins + 1)[1:-1]))
        shares = np.bincount(np.searchsorted(edges, column, side="right"), minlength=edges.size + 1) / column.size
        reference[sensor] = {
            "edges": edges.tolist(),
            "shares": shares.tolist(),
            "mean": float(column.mean()),
            "std": float(column.std()),
            "min": float(column.min()),
            "max": float(column.max()),
        }
    return reference


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of bin shares ``actual`` against ``expected`` (same bins)."""
    p = np.maximum(np.asarray(expected, dtype=float), PSI_FLOOR)
    q = np.maximum(np.asarray(actual, dtype=float), PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def sensor_figures(reference: dict, column: np.ndarray) -> dict[str, float]:
    """``FIGURES`` and ``rows`` of one sensor's batch values against its reference."""
    return figures_from_counts(reference, sensor_counts(reference, column))


def sensor_counts(reference: dict, column: np.ndarray) -> dict[str, Any]:
    """What ``FIGURES`` are computed from, added up over pieces of a batch (``add_counts``):
    finite values, their sum, per training bin and outside the training range."""
    column = column[np.isfinite(column)]
    edges = np.asarray(reference["edges"])
    return {
        "rows": int(column.size),
        "sum": float(column.sum()),
        "bins": np.bincount(np.searchsorted(edges, column, side="right"), minlength=edges.size + 1).tolist(),
        "outside": int(((column < reference["min"]) | (column > reference["max"])).sum()),
    }


def add_counts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two pieces' ``sensor_counts`` as one."""
    return {
        "rows": a["rows"] + b["rows"],
        "sum": a["sum"] + b["sum"],
        "bins": [x + y for x, y in zip(a["bins"], b["bins"])],
        "outside": a["outside"] + b["outside"],
    }


def figures_from_counts(reference: dict, counts: dict[str, Any]) -> dict[str, float]:
    n = counts["rows"]
    if n == 0:
        return {"rows": 0}
    mean, std = counts["sum"] / n, reference["std"]
    shift = (mean - reference["mean"]) / std if std > 0 else (0.0 if mean == reference["mean"] else np.inf)
    return {
        "rows": int(n),
        "mean_shift_sigma": float(shift),
        "psi": psi(reference["shares"], np.asarray(counts["bins"]) / n),
        "outside_range_share": counts["outside"] / n,
    }


def past_limits(figures: dict[str, float], limits: DriftConfig) -> list[str]:
    """Which figures of one sensor are past their limits (empty when within, or too few rows to judge)."""
    if figures.get("rows", 0) < limits.min_rows:
        return []
    past = []
    if abs(figures["mean_shift_sigma"]) > limits.mean_shift_limit:
        past.append("mean_shift_sigma")
    if figures["psi"] > limits.psi_limit:
        past.append("psi")
    if figures["outside_range_share"] > limits.outside_range_limit:
        past.append("outside_range_share")
    return past


def drift_report(reference: dict[str, dict] | None, table: pd.DataFrame, sensors: list[str], limits: DriftConfig) -> dict:
    """The batch's drift, as ``quality.json`` holds it under ``drift``.

    ``{"computed": true, "sensors": {sensor: {rows, mean_shift_sigma, psi, outside_range_share,
    past_limits}}, "drifting": [sensors past a limit], "limits": {...}}``; ``{"computed": false,
    "reason": ...}`` without a reference (a model trained before drift was measured).
    """
    return report_from_counts(reference, batch_counts(reference, table, sensors), limits)


def batch_counts(reference: dict[str, dict] | None, table: pd.DataFrame, sensors: list[str]) -> dict[str, dict]:
    """``sensor_counts`` of each referenced sensor of a batch (or of a piece of it)."""
    if not reference:
        return {}
    return {
        sensor: sensor_counts(reference[sensor], table[sensor].to_numpy(dtype=np.float64))
        for sensor in sensors
        if sensor in reference and sensor in table.columns
    }


def report_from_counts(reference: dict[str, dict] | None, counts: dict[str, dict], limits: DriftConfig) -> dict:
    """``drift_report`` of a batch from its (added-up) ``batch_counts``."""
    if not reference:
        return {"computed": False, "reason": "the model has no training reference (trained before drift was measured)"}
    per_sensor = {}
    for sensor, sensor_total in counts.items():
        figures = figures_from_counts(reference[sensor], sensor_total)
        per_sensor[sensor] = {**figures, "past_limits": past_limits(figures, limits)}
    drifting = [s for s, f in per_sensor.items() if f["past_limits"]]
    return {"computed": True, "sensors": per_sensor, "drifting": drifting, "limits": limits.model_dump()}


def advance_streaks(streaks: dict[str, int], report: dict, limits: DriftConfig) -> dict[str, int]:
    """Consecutive batches each sensor has been past the limits, after this batch's ``report``.

    A sensor past a limit counts one more; a judged sensor within the limits starts again at 0
    (and is dropped); a sensor with too few rows to judge keeps its count.
    """
    if not report.get("computed"):
        return dict(streaks)
    out = dict(streaks)
    for sensor, figures in report["sensors"].items():
        if figures["past_limits"]:
            out[sensor] = out.get(sensor, 0) + 1
        elif figures.get("rows", 0) >= limits.min_rows:
            out.pop(sensor, None)
    return out


def stale_sensors(streaks: dict[str, int], limits: DriftConfig) -> list[str]:
    """The sensors past the limits for at least ``drift.stale_batches`` batches in a row."""
    return sorted(s for s, n in streaks.items() if n >= limits.stale_batches)


def metric_key(name: str) -> str:
    """A sensor name as MLflow takes it in a metric key: letters, digits, ``_ - .`` and space (no ``/``,
    so the key never reads as a path)."""
    return re.sub(r"[^A-Za-z0-9_\-. ]", "_", name)


def drift_metrics(report: dict, prefix: str = "drift") -> dict[str, float]:
    """``<prefix>_<figure>.<sensor>`` per sensor, and ``<prefix>_sensors_past_limits``, for MLflow."""
    if not report.get("computed"):
        return {}
    metrics = {f"{prefix}_sensors_past_limits": float(len(report["drifting"]))}
    for sensor, figures in report["sensors"].items():
        for figure in FIGURES:
            if figure in figures and np.isfinite(figures[figure]):
                metrics[f"{prefix}_{figure}.{metric_key(sensor)}"] = figures[figure]
    return metrics
