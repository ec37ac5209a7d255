"""A reduced check on real industrial data: one SKAB file (read from ../shared, never copied)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import with_overrides
from pipeline.jobs.score import score_job
from pipeline.jobs.train import train_job
from tests.conftest import tiny_config

SKAB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "skab"
pytestmark = pytest.mark.skipif(not (SKAB / "valve1" / "1.csv").is_file(), reason="SKAB data not beside the repository")


def test_skab_file_trained_on_its_normal_start_and_scored_whole(tmp_path):
    path = SKAB / "valve1" / "1.csv"
    source = pd.read_csv(path, sep=";")
    normal_until = source["datetime"].iloc[400]  # the SKAB protocol: rows 0..399 are for training
    config = with_overrides(tiny_config(), {"training.normal_until": normal_until, "features.window_size": 16, "model.epochs": 5})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    trained = train_job([path], config, "skab", uri)
    assert trained.model_version == "1"
    outcome = score_job([path], tmp_path / "out", "skab", uri)

    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert len(scores) == len(source) == outcome.rows_in
    assert [c for c in scores.columns if c.startswith("contrib_")] == [f"contrib_{c}" for c in source.columns[1:9]]
    test = scores.iloc[400:].assign(label=source["anomaly"].iloc[400:].to_numpy())
    # The labelled anomaly must stand out from the normal test rows, by score and by flags.
    assert test.loc[test["label"] == 1, "score"].median() > test.loc[test["label"] == 0, "score"].median()
    assert test.loc[test["label"] == 1, "anomaly"].mean() > test.loc[test["label"] == 0, "anomaly"].mean()
