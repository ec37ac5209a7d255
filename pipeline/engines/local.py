"""Per-asset tasks on one machine: in worker processes, or in this one when ``workers`` is 1."""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pipeline.detector.window_error import SCORING_THREADS_ENV
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failed:
    """An asset whose task raised a user-facing error."""

    reason: str


@dataclass(frozen=True)
class Task:
    """One asset's work: its rows, and the function's other arguments."""

    rows: pd.DataFrame
    args: tuple = ()


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def map_local(function: Callable[..., Any], tasks: dict[str, Task], workers: int | None = None) -> dict[str, Any]:
    """``function(task.rows, *task.args)`` for each asset; results keyed by asset, in the order of ``tasks``.

    ``workers`` processes (default: the number of cores; 1 runs in this process). Worker
    processes are spawned, not forked (a forked TensorFlow or MLflow client is not safe), and
    reused by a fleet's waves, so TensorFlow loads once per worker, not per wave; they are
    replaced after ``TASKS_PER_WORKER`` tasks each, because TensorFlow's runtime keeps about
    13 MB of every model it has fitted (in C++, out of Python's reach) until its process ends.
    One worker runs in this process, which therefore grows by that much per fitted asset.
    """
    workers = workers or default_workers()
    if workers == 1 or not tasks:
        return {asset: guarded(function, task.rows, *task.args) for asset, task in tasks.items()}
    log.info("%d assets on %d worker processes", len(tasks), workers)
    pool = _pool(workers)
    try:
        futures = {asset: pool.submit(guarded, function, task.rows, *task.args) for asset, task in tasks.items()}
        results = {asset: future.result() for asset, future in futures.items()}
    except BrokenProcessPool:
        _retire(workers)  # a worker died (killed, out of memory): start afresh next time
        raise
    _TASKS_DONE[workers] = _TASKS_DONE.get(workers, 0) + len(tasks)
    if _TASKS_DONE[workers] >= TASKS_PER_WORKER * workers:
        _retire(workers)
    return results


TASKS_PER_WORKER = 16  # tasks a worker process runs before it is replaced (see map_local)
_POOLS: dict[int, ProcessPoolExecutor] = {}
_TASKS_DONE: dict[int, int] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    """This command's pool of ``workers`` processes, shut down when the command ends."""
    if workers not in _POOLS:
        threads = max(1, default_workers() // workers)  # each worker its share of the cores, not all of them
        context = multiprocessing.get_context("spawn")
        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=context, initializer=quiet_worker, initargs=(threads,))
    return _POOLS[workers]


def _retire(workers: int) -> None:
    _TASKS_DONE.pop(workers, None)
    _POOLS.pop(workers).shutdown(cancel_futures=True)


@atexit.register
def _shutdown_pools() -> None:
    while _POOLS:
        _retire(next(iter(_POOLS)))


def guarded(function: Callable[..., Any], *args: Any) -> Any:
    """The function's value, or ``Failed`` with its user-facing error."""
    try:
        return function(*args)
    except PipelineError as exc:
        return Failed(str(exc))


def quiet_worker(threads: int = 1) -> None:
    """A worker process's settings: its share of the cores for scoring and for TensorFlow (as PySpark
    does for its workers; without it two workers' thread pools fight over two cores), and quiet logs."""
    os.environ[SCORING_THREADS_ENV] = str(threads)
    for variable in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[variable] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    logging.basicConfig(level=logging.WARNING)
