"""Markdown descriptions of runs, shown at the top of each run's page in the MLflow UI.

Pure text builders: the runner passes the figures, tracking sets the text as the run's
description, so a reviewer reads what was trained or scored, on what, and with what result,
without opening code.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline.detector.threshold import Threshold

TOP_EVENTS = 5


def _sources(sources: list[str], limit: int = 6) -> str:
    shown = ", ".join(f"`{s}`" for s in sources[:limit])
    return shown + (f" and {len(sources) - limit} more" if len(sources) > limit else "")


def _normal_period(normal_until: str | None, label_column: str | None) -> str:
    if normal_until and label_column:
        return f"rows before **{normal_until}** with label 0 in `{label_column}`"
    if normal_until:
        return f"rows before **{normal_until}**"
    if label_column:
        return f"rows with label 0 in `{label_column}`"
    return "**all rows** (the input was vouched for as normal)"


def _quality(quality: dict[str, Any]) -> str:
    rows = quality.get("rows", {})
    time = quality.get("time", {})
    text = (
        f"{rows.get('rows_in', 0):,} rows read: {rows.get('rows_clean', 0):,} clean, {rows.get('rows_repaired', 0):,} repaired, "
        f"{rows.get('rows_quarantined', 0):,} set aside"
    )
    if quality.get("quarantine_reasons"):
        text += " (" + ", ".join(f"{k}: {v}" for k, v in quality["quarantine_reasons"].items()) + ")"
    if time:
        text += (
            f"; {time.get('start', '?')} to {time.get('end', '?')}, one row every {time.get('sampling_interval_seconds', 0):g} s"
        )
        text += f", {time.get('gaps_beyond_interval', 0)} gap(s)"
    flat = [name for name, s in quality.get("sensors", {}).items() if s.get("flatlined") or s.get("constant")]
    if flat:
        text += f"; flat-lined or constant: {', '.join(flat)}"
    return text


def _events_table(events: pd.DataFrame, n: int = TOP_EVENTS) -> str:
    if events.empty:
        return "No events flagged."
    top = events.sort_values("peak_score", ascending=False, kind="stable").head(n)
    lines = ["| event | source | start | end | rows | peak score | top sensors |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for _, e in top.iterrows():
        lines.append(
            f"| {e['event_id']} | {e['source']} | {e['start']} | {e['end']} | {e['n_rows']} "
            f"| {e['peak_score']:.4g} | {e['top_sensors']} |"
        )
    more = f"\n\n{len(events) - n} more in `anomalies.csv`." if len(events) > n else ""
    return "\n".join(lines) + more


def training_description(
    model_name: str,
    version: str,
    alias: str,
    sources: list[str],
    input_digest: str,
    quality: dict[str, Any],
    normal_until: str | None,
    label_column: str | None,
    rows: dict[str, int],
    window_size: int,
    threshold: Threshold,
    history: dict[str, list[float]],
    best_epoch: int,
    events: pd.DataFrame,
    centred: list[str] | None = None,
) -> str:
    """The description of a training run."""
    stats = threshold.error_stats
    params = ", ".join(f"{k}={v:g}" for k, v in threshold.params.items())
    stat_cells = " | ".join(f"{stats.get(key, 0):.4g}" for key in ("mean", "std", "p50", "p95", "p99", "max"))
    losses = ", ".join(f"{key} {series[best_epoch - 1]:.4g}" for key, series in history.items() if len(series) >= best_epoch)
    return f"""### Training: `{model_name}` version {version} (`@{alias}`)

**Threshold {threshold.value:.5g}** ({threshold.method}, {params}; held-out normal error p50 {stats.get("p50", 0):.4g},
p99 {stats.get("p99", 0):.4g}); {len(events)} event(s) when the training input is scored.

**Data**: {_sources(sources)} (sha256 `{input_digest[:12]}`).
{_quality(quality)}.

**Normal period**: {_normal_period(normal_until, label_column)}: {rows.get("normal_rows", 0):,} rows,
windows of {window_size} rows: {rows.get("train_windows", 0):,} for training,
{rows.get("validation_windows", 0):,} for early stopping, {rows.get("calibration_windows", 0):,} held out for the threshold.
{_centred(centred)}

**Model**: best epoch {best_epoch} of {len(next(iter(history.values()), []))} ({losses}); curves in `plots/training_curves.png`.

**Threshold**: **{threshold.value:.5g}**, method `{threshold.method}` ({params})
on {threshold.n_windows:,} held-out normal windows.

| held-out error | mean | std | p50 | p95 | p99 | max |
| --- | --- | --- | --- | --- | --- | --- |
| | {stat_cells} |

Histogram with the threshold: `plots/holdout_errors.png`.

**The training input scored by this model** (`plots/scores.png`; per-event plots `plots/event_<id>.png`):
{len(events)} event(s).

{_events_table(events)}
"""


def scoring_description(
    model_name: str,
    version: str,
    sources: list[str],
    input_digest: str,
    quality: dict[str, Any],
    rows_in: int,
    rows_scored: int,
    rows_flagged: int,
    threshold: float,
    events: pd.DataFrame,
) -> str:
    """The description of a scoring run."""
    return f"""### Scoring with `{model_name}` version {version}

**{rows_flagged:,} of {rows_scored:,} scored rows flagged in {len(events)} event(s)** (threshold {threshold:.5g}).

**Data**: {_sources(sources)} (sha256 `{input_digest[:12]}`).
{_quality(quality)}.

**Result**: {rows_in:,} rows in, {rows_scored:,} scored, {rows_flagged:,} flagged in {len(events)} event(s).
Report: `anomalies.csv`; score over time: `scores.png`; per-event plots: `plots/event_<id>.png`.

{_events_table(events)}
"""


def promotion_description(model_name: str, decision: dict[str, Any]) -> str:
    """The description of a promotion run."""
    figures = "\n".join(
        f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in decision["figures"].items()
    )
    return f"""### Promotion of `{model_name}` version {decision["challenger"]} (champion: {decision["champion"] or "none"})

**Decision: {decision["decision"]}**. {decision["reason"]}

Gate: `{decision["gate"]}`.

| figure | value |
| --- | --- |
{figures}
"""


def _centred(centred: list[str] | None) -> str:
    if not centred:
        return "Every sensor is judged by its level and shape."
    why = "their level wandered during training, so each window is centred on its own mean"
    return f"Judged by shape only ({why}): {', '.join(centred)}."
