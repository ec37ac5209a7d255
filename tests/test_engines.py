"""The local engine: results by asset in order, one bad asset reported alone, and worker processes
reused across calls until they have run their share of tasks."""

from __future__ import annotations

import os

import pandas as pd

from pipeline.engines import local
from pipeline.engines.local import Failed, Task, map_local
from pipeline.errors import InputError


def rows_and_pid(rows: pd.DataFrame, scale: int) -> tuple[int, int]:
    if scale < 0:
        raise InputError("a scale below zero")
    return len(rows) * scale, os.getpid()


def test_workers_are_reused_across_calls_then_replaced(monkeypatch):
    monkeypatch.setattr(local, "TASKS_PER_WORKER", 2)  # replaced after 2 x 2 tasks
    tasks = {name: Task(pd.DataFrame({"x": range(n)}), (10,)) for name, n in [("b", 3), ("a", 1)]}

    first = map_local(rows_and_pid, tasks, workers=2)
    pool = set(local._POOLS[2]._processes)  # the pool's worker pids
    second = map_local(rows_and_pid, tasks, workers=2)  # the same pool; 4 tasks done, so it retires
    assert 2 not in local._POOLS
    third = map_local(rows_and_pid, tasks, workers=2)

    assert list(first) == ["b", "a"] and [value for value, _ in first.values()] == [30, 10]
    pids = [{pid for _, pid in result.values()} for result in (first, second, third)]
    assert pids[0] <= pool and pids[1] <= pool
    assert os.getpid() not in pids[0] | pids[1] | pids[2]
    assert not pids[2] & (pids[0] | pids[1])  # new processes after the old ones retired


def test_a_failing_asset_is_reported_alone_on_one_worker_and_on_two():
    tasks = {"good": Task(pd.DataFrame({"x": [1, 2]}), (2,)), "bad": Task(pd.DataFrame({"x": [1]}), (-1,))}
    for workers in (1, 2):
        returned = map_local(rows_and_pid, tasks, workers=workers)
        assert returned["good"][0] == 4
        assert returned["bad"] == Failed("a scale below zero")
