"""The tables of ``encode`` and ``reconstruct``: ``latent.parquet`` and ``reconstructed.parquet``,
a record batch per prediction batch (never the whole table at once).

``latent.parquet``: ``source``, ``timestamp`` (UTC ISO 8601 text, as in ``scores.csv``),
``latent_0 .. latent_{k-1}`` (float32) and ``score``, one row per row that has a full window, in
time order. ``reconstructed.parquet``: ``source``, ``timestamp`` and one float64 column per
sensor, named as the sensor, holding its reconstructed value in original units. Fleets put an
``asset`` column first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.utc import format_utc, utc_ns

PLOT_POINTS = 20_000  # codes kept (evenly over the rows) for the 2-D view


def latent_columns(k: int) -> list[str]:
    return [f"latent_{i}" for i in range(k)]


def latent_schema(k: int, asset: bool = False) -> pa.Schema:
    fields = [("asset", pa.string())] if asset else []
    fields += [("source", pa.string()), ("timestamp", pa.string())]
    fields += [(name, pa.float32()) for name in latent_columns(k)]
    return pa.schema(fields + [("score", pa.float32())])


def reconstructed_schema(sensors: list[str], asset: bool = False) -> pa.Schema:
    fields = [("asset", pa.string())] if asset else []
    fields += [("source", pa.string()), ("timestamp", pa.string())]
    return pa.schema(fields + [(sensor, pa.float64()) for sensor in sensors])


class _Rows:
    """A validated table's source and time text per row, taken a batch of rows at a time."""

    def __init__(self, table: pd.DataFrame, asset: str | None):
        self.codes, names = pd.factorize(table["source"])
        self.names = pa.array([str(n) for n in names], pa.string())
        self.ns = utc_ns(table["timestamp"])
        self.asset = asset

    def columns(self, ends: np.ndarray) -> list[pa.Array]:
        head = [pa.array(np.full(len(ends), self.asset, dtype=object), pa.string())] if self.asset is not None else []
        return [*head, self.names.take(pa.array(self.codes[ends])), format_utc(self.ns[ends])]


def latent_batches(
    table: pd.DataFrame,
    codes: Iterable[tuple[np.ndarray, np.ndarray]],
    score: np.ndarray,
    sample: list[tuple[np.ndarray, np.ndarray]] | None = None,
    asset: str | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of ``latent.parquet`` from (row indices, codes) batches; ``score`` per table row.

    ``sample`` collects (codes, scores) of about ``PLOT_POINTS`` rows spread over the table, for the 2-D view.
    """
    rows = _Rows(table, asset)
    every = max(1, -(-len(table) // PLOT_POINTS))
    schema = None
    for ends, batch in codes:
        if schema is None:
            schema = latent_schema(batch.shape[1], asset is not None)
        values = [pa.array(batch[:, i].astype(np.float32)) for i in range(batch.shape[1])]
        yield pa.RecordBatch.from_arrays(
            [*rows.columns(ends), *values, pa.array(score[ends].astype(np.float32), from_pandas=True)], schema=schema
        )
        if sample is not None:
            keep = ends % every == 0
            sample.append((batch[keep], score[ends[keep]]))


def reconstructed_batches(
    table: pd.DataFrame, sensors: list[str], values: Iterable[tuple[np.ndarray, np.ndarray]], asset: str | None = None
) -> Iterator[pa.RecordBatch]:
    """Record batches of ``reconstructed.parquet`` from (row indices, values in original units) batches."""
    rows = _Rows(table, asset)
    schema = reconstructed_schema(sensors, asset is not None)
    for ends, batch in values:
        columns = [pa.array(batch[:, i].astype(np.float64)) for i in range(batch.shape[1])]
        yield pa.RecordBatch.from_arrays([*rows.columns(ends), *columns], schema=schema)


def principal_plane(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The codes projected on their first two principal components, (n, 2), and the share of
    the codes' variance each explains, (2,) (a single-unit code gets a zero second axis)."""
    codes = np.asarray(codes, dtype=np.float64)
    if len(codes) == 0:
        return np.zeros((0, 2)), np.zeros(2)
    centred = codes - codes.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    points = centred @ vt[:2].T
    share = np.square(singular) / max(float(np.square(singular).sum()), 1e-300)
    if points.shape[1] < 2:
        points, share = np.column_stack([points, np.zeros(len(points))]), np.append(share, 0.0)
    return points, share[:2]
