"""PNG plots for review in the MLflow UI (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import LogFormatter  # noqa: E402

MAX_PANELS = 8
MAX_POINTS = 20_000  # per source; longer series are reduced to bin maxima so peaks survive


def peak_preserving(timestamps: np.ndarray, score: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of a score line: each bin's highest score (its first row when
    all are NaN), so peaks survive; bins of equal width, in one NumPy pass (no loop per bin)."""
    if score.size <= max_points:
        return timestamps, score
    width = -(-score.size // max_points)
    padded = np.full(-(-score.size // width) * width, -np.inf)
    padded[: score.size] = np.nan_to_num(score.astype(np.float64), nan=-np.inf)
    picks = np.argmax(padded.reshape(-1, width), axis=1) + np.arange(0, padded.size, width)
    return timestamps[picks], score[picks]


MAX_DETAIL_POINTS = 4_000  # per line of an event's signals; longer events are drawn as bin minima and maxima


def _envelope(n: int, values: list[np.ndarray], max_points: int = MAX_DETAIL_POINTS) -> np.ndarray:
    """Row positions to draw of ``n`` rows: all of them, or the rows holding each bin's minimum and
    maximum of any of ``values`` (arrays of shape (n,)), in time order, so spikes survive."""
    if n <= max_points:
        return np.arange(n)
    width = -(-2 * n // max_points)
    picks = [np.arange(0, n, width)]
    for y in values:
        padded = np.full(-(-n // width) * width, np.nan)
        padded[:n] = y
        bins = padded.reshape(-1, width)
        usable = ~np.all(np.isnan(bins), axis=1)
        offsets = np.arange(len(bins))[usable] * width
        picks += [offsets + np.nanargmin(bins[usable], axis=1), offsets + np.nanargmax(bins[usable], axis=1)]
    return np.unique(np.concatenate(picks))


def score_plot(
    timestamps: pd.Series, sources: pd.Series, score: np.ndarray, threshold: float, events: pd.DataFrame, path: Path
) -> Path:
    """Score over time per source, the threshold line and flagged events shaded.

    Up to ``MAX_PANELS`` sources get a panel each; more are drawn as one series in one panel
    (hundreds of small files would otherwise make a picture nobody can read).
    """
    codes, names = pd.factorize(sources)  # in order of appearance, without a Python object per row
    if len(names) > MAX_PANELS:
        codes, names = np.zeros(len(codes), dtype=np.int64), pd.Index([f"{len(names)} sources"])
        events = events.assign(source=names[0])
    # Naive UTC datetime64 rather than an object array of tz-aware Timestamps (millions of rows).
    times = (
        timestamps.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy() if timestamps.dt.tz is not None else timestamps.to_numpy()
    )
    height = 2.6 * len(names) + 0.6
    # Fixed margins (inches): tight_layout measured every tick label, about half the plot's time.
    panel = (height - 0.85 - 0.45 * (len(names) - 1)) / len(names)
    fig, axes = plt.subplots(len(names), 1, figsize=(12, height), squeeze=False, sharey=True)
    fig.subplots_adjust(left=0.07, right=0.99, top=1 - 0.3 / height, bottom=0.55 / height, hspace=0.45 / panel)
    for code, (ax, name) in enumerate(zip(axes[:, 0], names)):
        mask = codes == code
        x, y = peak_preserving(times[mask], score[mask])
        ax.plot(x, y, lw=0.7, color="tab:blue", label="score")
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:.3g}")
        for _, event in events[events["source"] == name].iterrows():
            ax.axvspan(
                pd.Timestamp(event["start"]).tz_localize(None),
                pd.Timestamp(event["end"]).tz_localize(None),
                color="tab:orange",
                alpha=0.3,
            )
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_yscale("log")
        # Plain tick labels ("10", "0.1"): the default ones are typeset with mathtext, whose parser
        # takes about 0.4 s to build in every process.
        ax.yaxis.set_major_formatter(LogFormatter())
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        ax.legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel("time (UTC)")
    return _save(fig, path, tight=False)


def training_curves(history: dict[str, list[float]], path: Path) -> Path:
    """Training and validation loss per epoch."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, series in history.items():
        ax.plot(range(1, len(series) + 1), series, marker="o", ms=3, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mse")
    ax.set_yscale("log")
    ax.legend()
    return _save(fig, path)


def error_histogram(errors: np.ndarray, threshold: float, path: Path) -> Path:
    """Reconstruction errors of held-out normal windows with the calibrated threshold."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(errors, bins=60, color="tab:blue", alpha=0.8)
    ax.axvline(threshold, color="tab:red", ls="--", label=f"threshold {threshold:.3g}")
    ax.set_xlabel("reconstruction error (held-out normal windows)")
    ax.set_ylabel("windows")
    ax.legend()
    return _save(fig, path)


def _save(fig, path: Path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


DETAIL_SENSORS = 3  # signals drawn per event: the largest shares of its error


def event_detail(detail, threshold: float, path: Path) -> Path:
    """One event (an ``explain.EventDetail``): per-sensor shares of its error as bars, and for
    the sensors with the largest shares the measured signal against the model's reconstruction,
    the event's rows shaded."""
    order = np.argsort(-detail.shares)
    shown = order[:DETAIL_SENSORS]
    fig = plt.figure(figsize=(12, 2.2 * len(shown) + 0.8))
    # fixed margins: the constrained layout engine measured every tick label, ~40% of the plot's time
    grid = fig.add_gridspec(len(shown), 2, width_ratios=[1, 2.4], left=0.16, right=0.98, top=0.93, bottom=0.08, wspace=0.22)
    bars = fig.add_subplot(grid[:, 0])
    names = [detail.sensors[i] for i in order][::-1]
    bars.barh(names, detail.shares[order][::-1] * 100, color=["tab:red" if i in shown else "tab:gray" for i in order][::-1])
    bars.set_xlabel("share of the event's reconstruction error (%)")
    bars.set_title(
        f"event {detail.event_id} in {detail.source}: peak score {detail.peak_score:.3g} (threshold {threshold:.3g})",
        fontsize=9,
        loc="left",
    )
    bars.tick_params(axis="y", labelsize=8)
    times = (
        detail.timestamps.dt.tz_convert("UTC").dt.tz_localize(None) if detail.timestamps.dt.tz is not None else detail.timestamps
    )
    times = times.to_numpy()
    marked = np.flatnonzero(detail.in_event)
    for row, i in enumerate(shown):
        ax = fig.add_subplot(grid[row, 1])
        at = _envelope(len(times), [detail.actual[:, i], detail.expected[:, i]])
        ax.plot(times[at], detail.actual[at, i], lw=1, color="tab:blue", label="measured")
        ax.plot(times[at], detail.expected[at, i], lw=1, ls="--", color="tab:green", label="expected (reconstructed)")
        if marked.size:
            ax.axvspan(times[marked[0]], times[marked[-1]], color="tab:orange", alpha=0.25, label="event")
        ax.set_ylabel(detail.sensors[i], fontsize=8)
        ax.tick_params(labelsize=7)
        if row == 0:
            ax.legend(loc="upper left", fontsize=7, ncol=3)
    return _save(fig, path, tight=False)


MAX_FLEET_BARS = 40  # the noisiest assets shown in the alarm-rate chart


def fleet_alarm_rates(fleet: pd.DataFrame, path: Path) -> Path:
    """Alarm rate (flagged / scored rows) per asset, noisiest first (``fleet.csv`` rows)."""
    shown = fleet.dropna(subset=["alarm_rate"]).sort_values("alarm_rate", ascending=False).head(MAX_FLEET_BARS)
    fig, ax = plt.subplots(figsize=(7, 0.3 * max(len(shown), 3) + 1))
    ax.barh(shown["asset"].astype(str)[::-1], 100 * shown["alarm_rate"][::-1], color="tab:red", alpha=0.8)
    ax.set_xlabel("alarm rate (% of scored rows flagged)")
    ax.set_title(f"alarm rate per asset, noisiest first ({len(shown)} of {len(fleet)} assets)")
    return _save(fig, path)


def fleet_timeline(events: pd.DataFrame, assets: list[str], path: Path) -> Path:
    """Events over time, one line per asset (fleet ``anomalies.csv`` rows)."""
    fig, ax = plt.subplots(figsize=(9, 0.3 * max(len(assets), 3) + 1))
    position = {asset: i for i, asset in enumerate(assets)}
    for event in events.itertuples(index=False):
        start, end = pd.Timestamp(event.start), pd.Timestamp(event.end)
        ax.plot([start, end], [position[event.asset]] * 2, lw=6, color="tab:red", solid_capstyle="butt")
        ax.plot([start], [position[event.asset]], "|", color="tab:red", ms=10)
    ax.set_yticks(range(len(assets)), assets)
    ax.set_ylim(-1, len(assets))
    ax.set_xlabel("time (UTC)")
    ax.set_title(f"{len(events)} event(s) on {events['asset'].nunique() if len(events) else 0} of {len(assets)} assets")
    return _save(fig, path)


def latent_plot(points: np.ndarray, score: np.ndarray, share: np.ndarray, threshold: float, path: Path) -> Path:
    """The latent codes on their first two principal components, coloured by the row's score
    (log scale), rows above the threshold ringed."""
    fig, ax = plt.subplots(figsize=(7, 6))
    score = np.asarray(score, dtype=np.float64)
    positive = np.where(np.isfinite(score) & (score > 0), score, np.nan)
    floor = np.nanmin(positive) if np.isfinite(positive).any() else 1.0
    colour = np.log10(np.where(np.isfinite(positive), positive, floor))
    drawn = ax.scatter(points[:, 0], points[:, 1], c=colour, s=4, cmap="viridis", linewidths=0)
    above = np.isfinite(score) & (score > threshold)
    if above.any():
        ax.scatter(
            points[above, 0],
            points[above, 1],
            s=14,
            facecolors="none",
            edgecolors="tab:red",
            lw=0.6,
            label=f"score > threshold {threshold:.3g}",
        )
        ax.legend(loc="upper right", fontsize=8)
    fig.colorbar(drawn, ax=ax, label="log10 score")
    ax.set_xlabel(f"PC 1 ({100 * share[0]:.0f} % of the codes' variance)")
    ax.set_ylabel(f"PC 2 ({100 * share[1]:.0f} %)")
    ax.set_title(f"latent codes of {len(points):,} rows, coloured by score", fontsize=10, loc="left")
    return _save(fig, path)
