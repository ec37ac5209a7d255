"""Per-asset work on one machine: one task per asset, in worker processes or in this one.

A task is a top-level function and its arguments (both picklable). Each asset's result is the
function's return value, or ``Failed`` with the one-line message of the ``PipelineError`` it
raised, so one bad asset never stops the others. Results do not depend on the number of workers:
every task starts from its own arguments only (training seeds its model itself).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failed:
    """An asset whose task raised a user-facing error."""

    reason: str


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def map_assets(function: Callable[..., Any], tasks: dict[str, tuple], workers: int | None = None) -> dict[str, Any]:
    """``function(*args)`` for each asset's ``args``; results keyed by asset, in the order of ``tasks``.

    ``workers`` processes (default: the number of cores; 1 runs in this process). Worker
    processes are spawned, not forked: a forked TensorFlow or MLflow client is not safe.
    """
    workers = min(workers or default_workers(), max(len(tasks), 1))
    if workers == 1:
        return {asset: _guarded(function, *args) for asset, args in tasks.items()}
    log.info("%d assets on %d worker processes", len(tasks), workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet_worker) as pool:
        futures = {asset: pool.submit(_guarded, function, *args) for asset, args in tasks.items()}
        return {asset: future.result() for asset, future in futures.items()}


def _guarded(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except PipelineError as exc:
        return Failed(str(exc))


def _quiet_worker() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    logging.basicConfig(level=logging.WARNING)
