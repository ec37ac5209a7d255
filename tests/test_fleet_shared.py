"""``fleet.shared_model``: one autoencoder for a fleet, with a scaler, error normalisation and threshold per asset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from pipeline.data.loading import load_input
from pipeline.detector.fitting import fit_shared
from pipeline.errors import InputError
from pipeline.sample_data import generate
from tests.conftest import TINY_CONFIG_YAML, TINY_FAULTS, TINY_NORMAL_UNTIL, tiny_config


def _results(tmp_path, frames: dict[str, pd.DataFrame]):
    config = tiny_config()
    results = {}
    for asset, frame in frames.items():
        frame.to_csv(tmp_path / f"{asset}.csv", index=False)
        results[asset] = load_input([(f"{asset}.csv", tmp_path / f"{asset}.csv")], config.ingest).result
    return results, config


def test_one_model_for_all_assets_each_scaled_and_thresholded_on_its_own(tmp_path):
    frames = {"A": generate(days=1, seed=1, faults=[]), "B": generate(days=1, seed=2, faults=[])}
    frames["B"][["motor_current", "flow_rate"]] *= 3.0  # a bigger machine of the same kind
    results, config = _results(tmp_path, frames)
    fitted = fit_shared(results, config, {})
    (a, fit_a), (b, fit_b) = fitted["A"], fitted["B"]
    assert a.model is b.model and fit_a.history == fit_b.history  # trained once, on both assets' windows
    assert fit_a.rows["train_windows"] < len(results["A"].table)  # each asset keeps its own window counts
    assert not np.allclose(a.scaler.mean, b.scaler.mean)
    assert a.threshold.value != b.threshold.value


def test_shared_model_needs_the_same_sensors(tmp_path):
    frames = {"A": generate(days=1, seed=1, faults=[]), "B": generate(days=1, seed=2, faults=[]).drop(columns="speed")}
    results, config = _results(tmp_path, frames)
    with pytest.raises(InputError, match="same sensors in every asset: B has"):
        fit_shared(results, config, {})


def test_fleet_train_and_score_with_a_shared_model(tmp_path, capsys):
    frames = {asset: generate(days=1, seed=5 + i, faults=TINY_FAULTS) for i, asset in enumerate(["P-1", "P-2", "P-3"])}
    plant = tmp_path / "plant.csv"
    pd.concat([f.assign(asset=a) for a, f in frames.items()]).to_csv(plant, index=False)
    config = tmp_path / "shared.yaml"
    config.write_text(TINY_CONFIG_YAML + f"training:\n  normal_until: '{TINY_NORMAL_UNTIL}'\nfleet:\n  shared_model: true\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--asset-column", "asset", "--model-name", "plant", "--tracking-uri", uri, "--workers", "1"]
    assert main(["train", "--input", str(plant), "--config", str(config), *common]) == 0, capsys.readouterr().err
    assert main(["score", "--input", str(plant), "--out", str(tmp_path / "out"), *common]) == 0, capsys.readouterr().err
    fleet = pd.read_csv(tmp_path / "out" / "fleet.csv")
    assert list(fleet["status"]) == ["ok"] * 3 and fleet["threshold"].nunique() == 3
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("plant").experiment_id], "tags.stage = 'train'")
    parent = [r for r in runs if "asset" not in r.data.tags][0]
    assert parent.data.params["fleet.shared_model"] == "True"
