"""The Spark engine: a real Spark session in local mode gives the local engine's models, scores and flags.

Skipped only where pyspark is not installed (``.ci/run`` installs the ``[spark]`` extra, so CI runs it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.engines.local import Task
from pipeline.engines.spark import ASSET, _rebuild, _to_spark_frame
from tests.fleet_fixtures import ASSETS, ODD, read_fleet_table, read_scores


def test_each_assets_frame_comes_back_exactly_whatever_the_row_order():
    odd = pd.DataFrame(
        {
            "source": ["a.csv", None, "c.csv"],
            "row": np.array([5, 6, 7]),
            "timestamp": pd.to_datetime(
                ["2026-01-01 00:00:00.123456789", "2026-01-02 00:00:00", "2026-03-29 01:30:00"], utc=True, format="ISO8601"
            ),
            "temp. °C": [1.5, np.nan, -2.0],
            "label": [0, 1, 0],
        }
    )
    other = pd.DataFrame({"timestamp": pd.to_datetime(["2026-01-01"]), "x y": [3.0]})  # naive times, other columns
    tasks = {"P/1": Task(odd, ("arg",)), ODD: Task(other)}
    frame, shapes = _to_spark_frame(tasks)
    assert all(name.startswith("c") or name.startswith("__") for name in frame.columns)  # no data-made names reach Spark
    for asset, task in tasks.items():
        rows = frame[frame[ASSET] == asset].sample(frac=1, random_state=1)  # Spark hands a group over in any order
        pd.testing.assert_frame_equal(_rebuild(rows, shapes[asset]), task.rows)


def test_spark_engine_trains_and_scores_as_the_local_engine(fleet, fleet_scored, tmp_path, capsys):
    """The session's tiny fleet (three assets, one of them the id ``Pumpe Ü/2``, a short asset and
    unusable ids) trained and scored on Spark ``local[1]`` equals the local engine's reference."""
    pytest.importorskip("pyspark")
    plant = str(fleet["root"] / "plant.csv")
    common = ["--model-name", "plant", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--asset-column", "asset",
              "--engine", "spark", "--spark-master", "local[1]"]  # fmt: skip
    code = main(["train", "--input", plant, "--config", str(fleet["config"]), *common])
    assert code == fleet["train_code"] == 2, capsys.readouterr().err  # the short asset and the unusable ids
    out = tmp_path / "out"
    assert main(["score", "--input", plant, "--out", str(out), *common]) == fleet_scored["code"], capsys.readouterr().err
    local, spark = read_scores(fleet_scored["out"]), read_scores(out)
    assert local["anomaly"].sum() > 0 and set(ASSETS) < set(local["asset"].dropna())
    pd.testing.assert_frame_equal(spark.drop(columns="score"), local.drop(columns="score"))  # same rows, flags and events
    np.testing.assert_allclose(spark["score"], local["score"], rtol=0, atol=1e-6)
    # same thresholds, counts and statuses
    pd.testing.assert_frame_equal(read_fleet_table(out), read_fleet_table(fleet_scored["out"]))
