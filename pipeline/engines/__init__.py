"""How per-asset work is spread: in worker processes on this machine, or on a Spark session.

A task is a top-level function ``function(rows, *args)`` and, per asset, its rows (a DataFrame)
and its other arguments (all picklable). Every engine returns, per asset, the function's value,
or ``Failed`` with the one-line message of the ``PipelineError`` it raised, so one bad asset
never stops the others; and every engine gives the same values (each task starts from its own
arguments only; training seeds its model itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.config import EngineConfig
from pipeline.engines.local import Failed, Task, default_workers, map_local

__all__ = ["Failed", "Task", "map_assets", "wave_size"]

SPARK_WAVE = 32  # assets per wave on Spark, where the cluster's size is not known here


def map_assets(function: Callable[..., Any], tasks: dict[str, Task], engine: EngineConfig) -> dict[str, Any]:
    """``function(task.rows, *task.args)`` for each asset, on the configured engine; keyed by asset, in ``tasks``' order."""
    if engine.kind == "spark" and tasks:
        from pipeline.engines.spark import map_spark  # pyspark is an optional extra: loaded only when asked for

        return map_spark(function, tasks, engine.spark_master)
    return map_local(function, tasks, engine.workers)


def wave_size(engine: EngineConfig) -> int:
    """Assets held in memory at once by a fleet command: enough to keep every worker busy, few enough
    that memory follows the largest assets, not the fleet."""
    return SPARK_WAVE if engine.kind == "spark" else 2 * (engine.workers or default_workers())
