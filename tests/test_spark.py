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
from pipeline.sample_data import generate
from tests.conftest import TINY_CONFIG_YAML, TINY_FAULTS, TINY_NORMAL_UNTIL
from tests.test_fleet import ODD, _scores


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


def test_spark_engine_trains_and_scores_as_the_local_engine(tmp_path, capsys):
    pytest.importorskip("pyspark")
    frames = {asset: generate(days=1, seed=3 + i, faults=TINY_FAULTS) for i, asset in enumerate(["P-101", "../etc", ODD])}
    plant = tmp_path / "plant.csv"
    pd.concat([f.assign(asset=a) for a, f in frames.items()]).sample(frac=1, random_state=0).to_csv(plant, index=False)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG_YAML + f"training:\n  normal_until: '{TINY_NORMAL_UNTIL}'\n")
    results, fleets = {}, {}
    for engine in (["--engine", "local", "--workers", "1"], ["--engine", "spark", "--spark-master", "local[1]"]):
        name = engine[1]
        common = [
            "--model-name",
            "plant",
            "--tracking-uri",
            f"sqlite:///{tmp_path / name / 'mlflow.db'}",
            "--asset-column",
            "asset",
        ]
        assert main(["train", "--input", str(plant), "--config", str(config), *common, *engine]) == 0, capsys.readouterr().err
        out = tmp_path / name / "out"
        assert main(["score", "--input", str(plant), "--out", str(out), *common, *engine]) == 0, capsys.readouterr().err
        results[name] = _scores(out)
        fleets[name] = pd.read_csv(out / "fleet.csv")
    local, spark = results["local"], results["spark"]
    assert local["anomaly"].sum() > 0 and set(local["asset"]) == set(frames)
    pd.testing.assert_frame_equal(spark.drop(columns="score"), local.drop(columns="score"))  # same rows, flags and events
    np.testing.assert_allclose(spark["score"], local["score"], rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(fleets["spark"], fleets["local"])  # same thresholds, counts and statuses
