"""Drift: figures on hand-made distributions, the streak that makes a model stale, and a ``run``
whose input drifts until the model is stale and a challenger is trained."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy.stats import norm

from pipeline.config import DriftConfig, PipelineConfig
from pipeline.detector.bundle import load_bundle
from pipeline.detector.drift import (
    advance_streaks,
    drift_metrics,
    drift_report,
    fit_reference,
    psi,
    sensor_figures,
    stale_sensors,
)
from pipeline.jobs import drift_watch
from pipeline.jobs.run import run_job
from pipeline.store.names import QUALITY_FILE, STATE_FILE
from pipeline.tracking import Tracker
from tests.conftest import tiny_config

RNG = np.random.default_rng(0)
NORMAL = RNG.normal(0.0, 1.0, 200_000)


def test_a_known_mean_shift_gives_its_sigma_shift_and_psi():
    reference = fit_reference(NORMAL[:, None], ["x"], bins=10)["x"]
    shifted = RNG.normal(0.5, 1.0, 200_000)

    returned = sensor_figures(reference, shifted)

    # Deciles of N(0, 1); the shifted batch's share of each bin is Phi(edge - 0.5) differences.
    edges = norm.ppf(np.arange(1, 10) / 10)
    q = np.diff(np.concatenate([[0.0], norm.cdf(edges - 0.5), [1.0]]))
    expected_psi = float(np.sum((q - 0.1) * np.log(q / 0.1)))
    assert returned["mean_shift_sigma"] == pytest.approx(0.5, abs=0.02)
    assert returned["psi"] == pytest.approx(expected_psi, abs=0.01)
    assert 0.2 < expected_psi < 0.3  # a half-sigma shift: near the conventional 0.25 limit
    assert returned["outside_range_share"] < 0.01


def test_the_same_distribution_has_no_drift_and_a_range_shift_shows_outside_share():
    reference = fit_reference(NORMAL[:, None], ["x"], bins=10)["x"]
    assert sensor_figures(reference, RNG.normal(0.0, 1.0, 100_000))["psi"] < 0.005
    uniform = fit_reference(RNG.uniform(0, 1, (50_000, 1)), ["u"], bins=10)["u"]
    assert sensor_figures(uniform, RNG.uniform(0.5, 1.5, 50_000))["outside_range_share"] == pytest.approx(0.5, abs=0.01)
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0


def test_past_limits_per_sensor_and_too_few_rows_not_judged():
    values = np.column_stack([NORMAL[:5000], NORMAL[5000:10000]])
    reference = fit_reference(values, ["a", "b"], bins=10)
    batch = pd.DataFrame({"a": NORMAL[10000:10500] + 4.0, "b": NORMAL[10500:11000]})
    limits = DriftConfig()

    report = drift_report(reference, batch, ["a", "b"], limits)

    assert report["drifting"] == ["a"]
    assert set(report["sensors"]["a"]["past_limits"]) == {"mean_shift_sigma", "psi", "outside_range_share"}
    assert drift_report(reference, batch.head(50), ["a", "b"], limits)["drifting"] == []  # under drift.min_rows
    metrics = drift_metrics(report)
    assert metrics["drift_sensors_past_limits"] == 1 and metrics["drift_mean_shift_sigma.a"] == pytest.approx(4, abs=0.2)
    assert drift_report(None, batch, ["a"], limits) == {
        "computed": False,
        "reason": "the model has no training reference (trained before drift was measured)",
    }


def _report(drifting: dict[str, bool], rows: int = 500) -> dict:
    sensors = {s: {"rows": rows, "past_limits": ["psi"] if past else []} for s, past in drifting.items()}
    return {"computed": True, "sensors": sensors, "drifting": [s for s, past in drifting.items() if past]}


def test_a_sensor_is_stale_after_n_batches_in_a_row():
    limits = DriftConfig(stale_batches=3)
    streaks: dict[str, int] = {}
    for expected_stale in ([], [], ["a"]):
        streaks = advance_streaks(streaks, _report({"a": True, "b": False}), limits)
        assert stale_sensors(streaks, limits) == expected_stale
    assert advance_streaks(streaks, _report({"a": False}, rows=10), limits) == {"a": 3}  # too few rows to judge: kept
    assert advance_streaks(streaks, _report({"a": False}), limits) == {}  # within the limits: starts again
    assert advance_streaks({"a": 2}, {"computed": False}, limits) == {"a": 2}


def test_an_old_bundle_without_reference_loads_and_drift_is_said_once(trained_store, tmp_path, caplog):
    tracker = Tracker(trained_store.uri, "pump")
    with tracker.downloaded_bundle("pump", "1") as folder:
        meta = json.loads((folder / "bundle.json").read_text())
        assert set(meta["sensor_reference"]) == set(meta["sensors"])
        del meta["sensor_reference"]
        (folder / "bundle.json").write_text(json.dumps(meta))
        bundle = load_bundle(folder)
    assert bundle.sensor_reference is None
    drift_watch._said = False
    table = pd.read_csv(trained_store.csv)
    with caplog.at_level(logging.WARNING, logger="pipeline.jobs.drift_watch"):
        first = drift_watch.batch_drift(bundle, table, DriftConfig())
        drift_watch.batch_drift(bundle, table, DriftConfig())
    assert first["computed"] is False
    assert sum("drift not computed" in r.getMessage() for r in caplog.records) == 1


def test_run_batches_that_drift_make_the_model_stale_and_retrain_a_challenger(tmp_path, tiny_frame):
    """Batch 1 trains and scores normal data; batches 2 and 3 carry a bearing temperature 10 training
    standard deviations higher: after the second drifted batch (drift.stale_batches 2) the model is stale."""
    config = PipelineConfig.model_validate({**tiny_config().model_dump(exclude_unset=True), "drift": {"stale_batches": 2}})
    uri = f"sqlite:///{tmp_path / 'ml' / 'mlflow.db'}"
    inbox, out, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    inbox.mkdir()
    normal = tiny_frame.iloc[:720]
    normal.to_csv(inbox / "a.csv", index=False)
    kwargs = dict(config_given=True, retrain_when_stale=True)
    first = run_job(inbox, out, state, config, "pump", uri, **kwargs)
    assert first.trained is not None and first.stale == []

    sd = normal["bearing_temperature"].std()
    outcomes, streaks = [], []
    for name, day in (("b.csv", 1), ("c.csv", 2)):
        later = normal.assign(
            timestamp=normal["timestamp"] + pd.Timedelta(days=day), bearing_temperature=normal["bearing_temperature"] + 10 * sd
        )
        later.to_csv(inbox / name, index=False)
        outcomes.append(run_job(inbox, out, state, config, "pump", uri, **kwargs))
        streaks.append(json.loads((state / STATE_FILE).read_text())["drift"])

    assert outcomes[0].stale == [] and outcomes[0].trained is None
    assert streaks[0] == {"": {"bearing_temperature": 1}}
    quality = json.loads((outcomes[0].folder / QUALITY_FILE).read_text())["drift"]
    assert quality["drifting"] == ["bearing_temperature"]
    assert quality["sensors"]["bearing_temperature"]["mean_shift_sigma"] > 5
    assert abs(quality["sensors"]["speed"]["mean_shift_sigma"]) < 1

    stale = outcomes[1]
    assert len(stale.stale) == 1 and "bearing_temperature (2 batches" in stale.stale[0]
    assert stale.trained is not None and stale.trained.model_version == "2"  # a challenger: promote decides
    client = MlflowClient(uri)
    run = client.get_run(stale.run_id)
    assert "stale" in run.data.tags and run.data.metrics["drift_mean_shift_sigma.bearing_temperature"] > 5
    assert Tracker(uri, "pump").aliases("pump") == {"champion": "1", "challenger": "2"}
    assert streaks[1] == {"": {}}  # counted afresh after the retrain
