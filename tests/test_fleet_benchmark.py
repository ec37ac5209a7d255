"""The fleet benchmark: its generated fleet, its event judging, and one tiny run through the real command line."""

from __future__ import annotations

import json

import pandas as pd

from pipeline.benchmark.fleet import FAULT_EVERY, asset_id, generate_fleet, judge_events
from pipeline.cli import main
from tests.conftest import TINY_CONFIG_YAML


def test_generated_fleet_has_assets_that_differ_and_faults_only_in_the_scored_half(tmp_path):
    faults = generate_fleet(assets=4, rows=2000, folder=tmp_path)
    train = {a: pd.read_csv(tmp_path / "train" / a / "readings.csv", parse_dates=["timestamp"]) for a in map(asset_id, range(4))}
    score = {a: pd.read_csv(tmp_path / "score" / a / "readings.csv", parse_dates=["timestamp"]) for a in train}
    assert all(len(train[a]) == 1000 and len(score[a]) == 1000 for a in train)
    assert list(faults["asset"]) == [asset_id(i) for i in range(0, 4, FAULT_EVERY)]
    for _, fault in faults.iterrows():
        assert pd.Timestamp(fault["start"]) > train[fault["asset"]]["timestamp"].max()
        assert pd.Timestamp(fault["end"]) <= score[fault["asset"]]["timestamp"].max()
    means = pd.DataFrame({a: f.drop(columns="timestamp").mean() for a, f in train.items()})
    assert (means.std(axis=1) > 0).all()  # levels differ between assets


def test_faults_caught_and_false_events_by_overlap():
    faults = pd.DataFrame({"asset": ["A", "B"], "start": ["2026-01-01 10:00", "2026-01-01 10:00"],
                           "end": ["2026-01-01 12:00", "2026-01-01 12:00"]})  # fmt: skip
    events = pd.DataFrame(
        {
            "asset": ["A", "A", "B", "C"],
            "start": ["2026-01-01 11:00", "2026-01-01 12:30", "2026-01-01 14:00", "2026-01-01 11:00"],
            "end": ["2026-01-01 11:30", "2026-01-01 12:40", "2026-01-01 14:10", "2026-01-01 11:10"],
        }
    )
    # A is caught; A's second event falls in the hour after its fault; B's event is late and C has no fault.
    assert judge_events(events, faults) == {"faults": 2, "faults_caught": 1, "false_events": 2, "events": 4}


def test_tiny_fleet_benchmark_runs_end_to_end(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG_YAML)
    out = tmp_path / "bench"
    code = main(["benchmark", "fleet", "--assets", "2", "--rows", "1200", "--workers", "1", "--out", str(out),
                 "--config", str(config)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    figures = json.loads((out / "fleet_benchmark.json").read_text())
    assert figures["assets_scored"] == 2 and figures["faults"] == 1
    assert figures["train"]["exit_code"] == 0 and figures["score"]["rows_per_second"] > 0
    assert pd.read_csv(out / "reports" / "fleet.csv")["rows_in"].tolist() == [600, 600]
