"""Deterministic generator of the demo data in ``data/sample/``: a pump-like machine.

Eight sensors sampled every minute follow a daily load cycle with noise and thermal lag.
The first days are normal; then four kinds of fault are injected (see ``FAULTS``).

    python -m pipeline.sample_data --out data/sample
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import lfilter

SENSORS = [
    "vibration_rms",
    "motor_current",
    "discharge_pressure",
    "suction_pressure",
    "bearing_temperature",
    "motor_temperature",
    "flow_rate",
    "speed",
]
START = pd.Timestamp("2026-10-01 00:00:00")
NORMAL_UNTIL = "2026-10-10 00:00:00"


@dataclass(frozen=True)
class Fault:
    kind: str
    sensor: str
    start: str
    hours: float
    description: str


FAULTS = [
    Fault("drift", "bearing_temperature", "2026-10-10 08:00", 8, "bearing wear: temperature creeps up to +10 degC"),
    Fault("step", "discharge_pressure", "2026-10-11 14:00", 3, "valve partly closed: pressure -0.8 bar, flow -15 %"),
    Fault("spike_burst", "vibration_rms", "2026-10-12 20:00", 0.75, "cavitation: bursts of vibration spikes"),
    Fault("stuck", "flow_rate", "2026-10-13 06:00", 6, "flow transmitter stuck at its last value"),
]


def _lag(signal: np.ndarray, steps: float) -> np.ndarray:
    """First-order lag (thermal inertia) with a time constant of ``steps`` samples."""
    alpha = 1.0 / steps
    out, _ = lfilter([alpha], [1.0, alpha - 1.0], signal[1:], zi=[(1.0 - alpha) * signal[0]])
    return np.concatenate([signal[:1], out])


def generate(
    days: float = 14,
    seed: int = 7,
    faults: list[Fault] = FAULTS,
    step_seconds: int = 60,
    phase_hours: float = 0.0,
    load_swing: float = 0.22,
    noise: float = 1.0,
) -> pd.DataFrame:
    """A frame with ``timestamp`` (naive, UTC) and the eight sensors, one row every ``step_seconds``.

    ``phase_hours`` shifts the daily load cycle and ``load_swing`` sets its amplitude (machines of
    one fleet run on different schedules). ``noise`` multiplies each sensor's measurement noise:
    0 gives the clean signals, and the same seed gives the same signals at every ``noise`` (the
    noise is drawn all the same), so ``generate(noise=k) - generate(noise=0)`` is the added noise.
    """
    rng = np.random.default_rng(seed)
    n = int(days * 86400 // step_seconds)
    minutes = np.arange(n) * (step_seconds / 60.0)
    hours = minutes / 60.0
    per_minute = 60.0 / step_seconds  # samples per minute: time constants are given in minutes
    wander = np.cumsum(rng.normal(0, 0.002 / np.sqrt(per_minute), n))
    wander -= _lag(wander, 600 * per_minute)  # keep the random walk from drifting far
    load = 0.7 + load_swing * np.sin(2 * np.pi * (hours - 8 - phase_hours) / 24) + 0.04 * np.sin(2 * np.pi * hours / 3.3) + wander
    data = {
        "vibration_rms": 2.0 + 1.2 * load + noise * rng.normal(0, 0.08, n),
        "motor_current": 28 + 42 * load + noise * rng.normal(0, 0.5, n),
        "discharge_pressure": 5.8 + 2.6 * load + noise * rng.normal(0, 0.05, n),
        "suction_pressure": 1.3 - 0.25 * load + noise * rng.normal(0, 0.02, n),
        "bearing_temperature": _lag(44 + 16 * load, 90 * per_minute) + noise * rng.normal(0, 0.15, n),
        "motor_temperature": _lag(52 + 24 * load, 40 * per_minute) + noise * rng.normal(0, 0.25, n),
        "flow_rate": 125 * load + noise * rng.normal(0, 1.5, n),
        "speed": 1420 + 110 * load + noise * rng.normal(0, 4, n),
    }
    timestamps = START + pd.to_timedelta(np.arange(n, dtype=np.int64) * step_seconds, unit="s")
    for fault in faults:
        span = (timestamps >= pd.Timestamp(fault.start)) & (
            timestamps < pd.Timestamp(fault.start) + pd.Timedelta(hours=fault.hours)
        )
        k = int(span.sum())
        if k == 0:
            continue
        if fault.kind == "drift":
            data[fault.sensor][span] += np.linspace(0, 10, k)
        elif fault.kind == "step":
            data[fault.sensor][span] -= 0.8
            data["flow_rate"][span] *= 0.85
        elif fault.kind == "spike_burst":
            spikes = rng.random(k) < 0.3
            data[fault.sensor][span] += spikes * rng.uniform(2, 5, k)
        elif fault.kind == "stuck":
            first = int(np.flatnonzero(span)[0])
            data[fault.sensor][span] = data[fault.sensor][first - 1]
    return pd.DataFrame({"timestamp": timestamps, **{s: np.round(data[s], 4) for s in SENSORS}})


def write_sample(out: Path, days: int = 14, seed: int = 7) -> list[Path]:
    """Write the series as weekly CSV files (consecutive pieces of one stream)."""
    out.mkdir(parents=True, exist_ok=True)
    frame = generate(days, seed)
    paths = []
    for _, part in frame.groupby(frame.index // (7 * 24 * 60)):
        first_day = part["timestamp"].iloc[0].strftime("%Y-%m-%d")
        path = out / f"pump_{first_day}.csv"
        part.to_csv(path, index=False, date_format="%Y-%m-%d %H:%M:%S")
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/sample", help="folder to write to (default: data/sample)")
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for path in write_sample(Path(args.out), args.days, args.seed):
        print(path)


if __name__ == "__main__":
    main()
