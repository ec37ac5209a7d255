"""Per-asset tasks on a Spark session: the assets' rows are one Spark DataFrame, grouped by asset.

``groupBy(asset).applyInPandas`` hands each asset's rows, whole and in their order, to one Python
worker, which rebuilds the asset's frame exactly (dtypes, time zones, column names) and runs the
task there; its value comes back pickled, one row per asset. ``mlflow.pyfunc.spark_udf`` is not
used: it scores rows in arbitrary batches and cannot see an asset's previous rows.

Needs the optional extra ``pip install -e '.[spark]'`` and Java 17 or newer. On a cluster the
package must be installed on the executors (at the driver's Python path); tasks take and return
values only (a model as its files' bytes), so executors share no disk or tracking store with the driver.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.detector.window_error import SCORING_THREADS_ENV
from pipeline.engines.local import Task, guarded
from pipeline.errors import InputError

log = logging.getLogger(__name__)

ASSET = "__asset"  # the grouping column; the frames' own columns are renamed c0, c1, ... (any name is safe)
ORDER = "__order"  # each row's position in its asset's frame
RESULT_SCHEMA = f"{ASSET} string, result binary"
_stop_registered: list[bool] = []


@dataclass(frozen=True)
class FrameShape:
    """What it takes to rebuild an asset's frame from its Spark rows: column names and dtypes, in order."""

    names: list[str]
    spark_names: list[str]
    dtypes: list[Any]


def map_spark(function: Callable[..., Any], tasks: dict[str, Task], master: str) -> dict[str, Any]:
    """``function(task.rows, *task.args)`` for each asset on a Spark session at ``master``; keyed by asset."""
    spark = _session(master, len(tasks))
    frame, shapes = _to_spark_frame(tasks)
    args = {asset: task.args for asset, task in tasks.items()}

    def run_asset(rows: pd.DataFrame) -> pd.DataFrame:
        asset = rows[ASSET].iloc[0]
        value = guarded(function, _rebuild(rows, shapes[asset]), *args[asset])
        return pd.DataFrame({ASSET: [asset], "result": [pickle.dumps(value)]})

    log.info("%d assets on Spark (%s)", len(tasks), master)
    out = spark.createDataFrame(frame).groupBy(ASSET).applyInPandas(run_asset, schema=RESULT_SCHEMA).toPandas()
    results = dict(zip(out[ASSET], out["result"]))
    return {asset: pickle.loads(results[asset]) for asset in tasks}


def _session(master: str, n_assets: int):
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise InputError("engine.kind spark needs pyspark: pip install -e '.[spark]' (and Java 17 or newer)") from exc
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    # The workers run this interpreter, so they see the same package and libraries as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master).appName("anomaly-pipeline fleet")
    settings = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": str(max(1, min(n_assets, 200))),  # one group per task where possible
        "spark.ui.showConsoleProgress": "false",
        "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
        "spark.executorEnv.CUDA_VISIBLE_DEVICES": "-1",
        f"spark.executorEnv.{SCORING_THREADS_ENV}": "1",  # Spark runs a task per core already
    }
    if master.startswith("local"):  # one machine: keep the driver off the network interfaces
        settings |= {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1", "spark.ui.enabled": "false"}
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # no Java, or a master that does not answer: one line, not a JVM trace
        raise InputError(f"cannot start Spark at {master}: {str(exc).splitlines()[0]}") from exc
    spark.sparkContext.setLogLevel("ERROR")
    if not _stop_registered:  # one session for the whole command (a fleet's waves), stopped as it exits
        atexit.register(spark.stop)
        _stop_registered.append(True)
    return spark


def _to_spark_frame(tasks: dict[str, Task]) -> tuple[pd.DataFrame, dict[str, FrameShape]]:
    """All assets' rows in one frame Spark can take (times as int64 nanoseconds), and how to rebuild each."""
    spark_names: dict[str, str] = {}
    parts, shapes = [], {}
    for asset, task in tasks.items():
        rows = task.rows.reset_index(drop=True)
        names = [str(name) for name in rows.columns]
        for name in names:
            spark_names.setdefault(name, f"c{len(spark_names)}")
        shapes[asset] = FrameShape(names, [spark_names[n] for n in names], list(rows.dtypes))
        part = pd.DataFrame({spark_names[str(n)]: _plain(rows[n]) for n in rows.columns})
        part[ASSET] = asset
        part[ORDER] = np.arange(len(rows), dtype=np.int64)
        parts.append(part)
    return pd.concat(parts, ignore_index=True), shapes


def _plain(column: pd.Series) -> pd.Series:
    """A column Arrow and Spark carry without change: times as int64 ns since the epoch, text as str."""
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        stamps = column.dt.tz_convert("UTC").dt.tz_localize(None) if isinstance(column.dtype, pd.DatetimeTZDtype) else column
        return pd.Series(stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64), index=column.index)
    if column.dtype == object or isinstance(column.dtype, pd.StringDtype):
        return column.astype(object).where(column.notna(), None)
    return column


def _rebuild(rows: pd.DataFrame, shape: FrameShape) -> pd.DataFrame:
    """The asset's frame as it was given: rows in their order, original names and dtypes."""
    rows = rows.sort_values(ORDER, kind="stable").reset_index(drop=True)
    columns = {}
    for name, spark_name, dtype in zip(shape.names, shape.spark_names, shape.dtypes):
        column = rows[spark_name]
        if pd.api.types.is_datetime64_any_dtype(dtype):
            column = pd.Series(column.to_numpy(dtype=np.int64).astype("datetime64[ns]"))
            if isinstance(dtype, pd.DatetimeTZDtype):
                column = column.dt.tz_localize("UTC").dt.tz_convert(dtype.tz)
        columns[name] = column.astype(dtype)
    return pd.DataFrame(columns)
