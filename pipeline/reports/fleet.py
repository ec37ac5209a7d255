"""Fleet tables: ``fleet.csv`` (one row per asset), and the ``asset`` column that fleet
``scores.csv`` and ``anomalies.csv`` gain first.

Assets may have different sensors: the fleet ``scores.csv`` has a ``contrib_<sensor>`` column for
every sensor of any asset, empty for the assets without that sensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import pandas as pd
import pyarrow as pa

from pipeline.reports.tables import EVENT_COLUMNS, scores_schema

FLEET_COLUMNS = [
    "asset",
    "model_version",
    "threshold",
    "rows_in",
    "rows_scored",
    "rows_set_aside",
    "rows_flagged",
    "events",
    "alarm_rate",
    "drift_max_psi",
    "drifting_sensors",
    "status",
]


@dataclass
class AssetSummary:
    """One row of ``fleet.csv``; ``status`` is ``ok`` or why the asset was not trained or scored."""

    asset: str
    model_version: str = ""
    threshold: float | None = None
    rows_in: int = 0
    rows_scored: int = 0
    rows_set_aside: int = 0
    rows_flagged: int = 0
    events: int = 0
    drift_max_psi: float | None = None  # the largest PSI of a sensor of this batch (None: not measured)
    drifting_sensors: str = ""  # sensors past the drift limits in this batch; '(stale)' after those that made the model stale
    status: str = "ok"

    @property
    def alarm_rate(self) -> float | None:
        return self.rows_flagged / self.rows_scored if self.rows_scored else None


def fleet_table(summaries: Iterable[AssetSummary]) -> pd.DataFrame:
    """``fleet.csv``: one row per asset, sorted by asset."""
    rows = [{**asdict(s), "alarm_rate": s.alarm_rate} for s in sorted(summaries, key=lambda s: s.asset)]
    return pd.DataFrame(rows, columns=FLEET_COLUMNS)


def fleet_scores_schema(sensors: list[str]) -> pa.Schema:
    """The fleet ``scores.csv`` columns: ``asset``, then those of ``scores_schema`` over every sensor."""
    return scores_schema(sensors).insert(0, pa.field("asset", pa.string()))


def with_asset(batches: Iterable[pa.RecordBatch], asset: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """One asset's ``scores.csv`` batches in the fleet schema: the asset first, absent sensors empty."""
    for batch in batches:
        columns = []
        for field in schema:
            if field.name == "asset":
                columns.append(pa.array([asset] * batch.num_rows, pa.string()))
            elif field.name in batch.schema.names:
                columns.append(batch.column(field.name))
            else:
                columns.append(pa.nulls(batch.num_rows, field.type))
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def set_aside_batches(rejected: pd.DataFrame, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Rows no asset could be scored for (``asset, source, row, timestamp, status``), in the fleet schema."""
    if not len(rejected):
        return
    frame = rejected.sort_values(["asset", "source", "row"], kind="stable")
    values = {
        "asset": frame["asset"].astype(str),
        "source": frame["source"].astype(str),
        "timestamp": frame["timestamp"].astype(str),
        "anomaly": [0] * len(frame),
        "status": frame["status"].astype(str),
    }
    columns = [pa.array(values[f.name], f.type) if f.name in values else pa.nulls(len(frame), f.type) for f in schema]
    yield pa.RecordBatch.from_arrays(columns, schema=schema)


def fleet_events(per_asset: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Fleet ``anomalies.csv``: ``asset`` then ``EVENT_COLUMNS``; event ids are per asset."""
    frames = [events.assign(asset=asset) for asset, events in sorted(per_asset.items()) if len(events)]
    columns = ["asset", *EVENT_COLUMNS]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
