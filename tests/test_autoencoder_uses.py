"""The trained model's other uses: ``encode`` (latent codes), ``reconstruct`` (denoised values),
the pyfunc's three outputs, the per-sensor reconstruction quality of training and the denoise
benchmark, on the session's tiny trained store."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import mlflow
from pipeline.cli import main
from pipeline.detector.bundle import load_bundle
from pipeline.serving import predict_frame
from pipeline.tracking import Tracker

WINDOW = 8  # the tiny config's


@pytest.fixture()
def encoded(tmp_path, store, trained_store):
    """encode and reconstruct of the tiny file with the trained ``pump`` (a copy of the session's store)."""
    common = ["--model-name", "pump", "--tracking-uri", store]
    assert main(["encode", "--input", str(trained_store.csv), "--out", str(tmp_path / "enc"), *common]) == 0
    assert main(["reconstruct", "--input", str(trained_store.csv), "--out", str(tmp_path / "rec"), *common]) == 0
    return tmp_path / "enc" / "latent.parquet", tmp_path / "rec" / "reconstructed.parquet", store


def _bundle(store: str, tmp_path):
    tracker = Tracker(store, "pump")
    with tracker.downloaded_bundle("pump", "1") as folder:
        return load_bundle(folder)


def test_encode_writes_a_code_and_the_score_for_every_row_with_a_full_window(encoded, trained_store):
    latent_path, _, store = encoded
    latent = pd.read_parquet(latent_path)
    scores = pd.read_csv(trained_store.out / "scores.csv")
    assert list(latent.columns) == ["source", "timestamp", "latent_0", "latent_1", "latent_2", "latent_3", "score"]
    assert len(latent) == scores["score"].notna().sum() == len(scores) - (WINDOW - 1)
    assert latent["latent_0"].dtype == np.float32 and np.isfinite(latent.filter(like="latent_").to_numpy()).all()
    joined = latent.merge(scores[["timestamp", "score"]], on="timestamp", suffixes=("", "_scored"))
    assert len(joined) == len(latent)  # the same timestamps (text, UTC) as scores.csv
    np.testing.assert_allclose(joined["score"], joined["score_scored"], rtol=1e-6)

    client = MlflowClient(store)
    run = client.search_runs([client.get_experiment_by_name("pump").experiment_id], "tags.stage = 'encode'")[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["output_digest"] == hashlib.sha256(latent_path.read_bytes()).hexdigest()
    assert run.data.metrics["rows_written"] == len(latent)
    assert "plots/latent_pca.png" in [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    assert (latent_path.parent / "latent_pca.png").stat().st_size > 10_000


def test_reconstruct_writes_each_sensor_in_its_original_units(encoded, trained_store):
    _, reconstructed_path, _ = encoded
    rebuilt = pd.read_parquet(reconstructed_path)
    measured = pd.read_csv(trained_store.csv)
    sensors = [c for c in measured.columns if c != "timestamp"]
    assert list(rebuilt.columns) == ["source", "timestamp", *sensors]
    assert len(rebuilt) == len(measured) - (WINDOW - 1)
    aligned = measured.iloc[WINDOW - 1 :].reset_index(drop=True)
    for sensor in sensors:  # in the sensor's units: close to its readings on the scale of its spread
        error = np.abs(rebuilt[sensor].to_numpy() - aligned[sensor].to_numpy())
        assert np.median(error) < 1.5 * aligned[sensor].std(), sensor
    assert abs(rebuilt["speed"].mean() - aligned["speed"].mean()) < 0.05 * aligned["speed"].mean()


def test_codes_and_reconstructions_are_causal(store, trained_store, tmp_path):
    bundle = _bundle(store, tmp_path)
    frame = pd.read_csv(trained_store.csv)
    cut = 600
    later = frame.copy()
    later.loc[cut:, "speed"] *= 3  # change every row after the cut
    for output in ("latent", "reconstruction"):
        whole = predict_frame(bundle, frame, "pump.csv", output)
        head = predict_frame(bundle, frame.head(cut), "pump.csv", output)
        changed = predict_frame(bundle, later, "pump.csv", output)
        assert len(head) == cut - (WINDOW - 1)
        numeric = [c for c in whole.columns if c not in ("source", "timestamp", "score")]
        # a row's output depends on its window only: the rows before the cut are the same (to float
        # rounding: the prediction batches are cut elsewhere), whatever the rows after it hold
        np.testing.assert_allclose(head[numeric].to_numpy(), whole[numeric].head(len(head)).to_numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(changed[numeric].head(len(head)).to_numpy(), whole[numeric].head(len(head)).to_numpy())
        assert not np.allclose(changed[numeric].tail(100).to_numpy(), whole[numeric].tail(100).to_numpy())


def test_pyfunc_serves_scores_codes_and_reconstructions_as_the_commands_write_them(encoded, trained_store):
    latent_path, reconstructed_path, store = encoded
    mlflow.set_tracking_uri(store)
    model = mlflow.pyfunc.load_model("models:/pump@champion")
    frame = pd.read_csv(trained_store.csv)
    scores = model.predict(frame, params={"source": "pump.csv"})
    expected = pd.read_csv(trained_store.out / "scores.csv")
    np.testing.assert_allclose(scores["score"].to_numpy(float), expected["score"].to_numpy(float), rtol=1e-6, equal_nan=True)
    pd.testing.assert_frame_equal(
        model.predict(frame, params={"source": "pump.csv", "output": "latent"}), pd.read_parquet(latent_path)
    )
    pd.testing.assert_frame_equal(
        model.predict(frame, params={"source": "pump.csv", "output": "reconstruction"}), pd.read_parquet(reconstructed_path)
    )
    params = {p.name: p.default for p in model.metadata.signature.params.params}
    assert params == {"source": "input", "output": "scores", "estimate": "last"}
    with pytest.raises(Exception, match="output 'codes'"):
        model.predict(frame, params={"output": "codes"})


def test_the_mean_over_windows_estimate_streams_what_the_offline_mean_gives(store, trained_store, tmp_path):
    from pipeline.benchmark.denoise import mean_over_windows
    from pipeline.data.loading import load_input
    from pipeline.detector.latent import reconstruction_batches
    from pipeline.serving import scoring_ingest

    bundle = _bundle(store, tmp_path)
    loaded = load_input([("pump.csv", trained_store.csv)], scoring_ingest(bundle), sensors=bundle.sensors)
    table = loaded.result.table
    expected = mean_over_windows(bundle, table)  # all windows at once, offline
    for batch_size in (4096, 37):  # one batch, and many: the sums carried across batches
        ends, values = zip(*reconstruction_batches(bundle, table, batch_size, estimate="mean"))
        ends, values = np.concatenate(ends), np.concatenate(values)
        np.testing.assert_array_equal(ends, np.arange(WINDOW - 1, len(table)))
        np.testing.assert_allclose(values, expected[ends], rtol=1e-6)  # float32 rounding of other batch cuts
    mean = predict_frame(bundle, pd.read_csv(trained_store.csv), "pump.csv", "reconstruction", "mean")
    np.testing.assert_allclose(mean[bundle.sensors].to_numpy(), expected[WINDOW - 1 :], rtol=1e-6)
    common = ["--model-name", "pump", "--tracking-uri", store]
    out = tmp_path / "mean"
    assert main(["reconstruct", "--input", str(trained_store.csv), "--out", str(out), "--estimate", "mean", *common]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "reconstructed.parquet"), mean)


def test_training_logs_each_sensors_reconstruction_quality(trained_store):
    client = MlflowClient(trained_store.uri)
    run = client.get_run(trained_store.train_run_id)
    sensors = [c for c in pd.read_csv(trained_store.csv, nrows=1).columns if c != "timestamp"]
    for sensor in sensors:
        assert run.data.metrics[f"reconstruction.{sensor}.rmse"] > 0
        assert run.data.metrics[f"reconstruction.{sensor}.variance_explained"] <= 1
    table = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/reconstruction_quality.json"))
    assert [row["sensor"] for row in table["sensors"]] == sensors


def test_denoise_benchmark_measures_noise_reduction(tmp_path, tiny_config_file):
    out = tmp_path / "denoise"
    code = main(
        ["benchmark", "denoise", "--out", str(out), "--noise", "2", "--days", "1.5", "--train-days", "1", "--config",
         str(tiny_config_file), "--tracking-uri", f"sqlite:///{tmp_path / 'd.db'}"]
    )  # fmt: skip
    assert code == 0
    result = json.loads((out / "denoise.json").read_text())
    assert [r["model"] for r in result["runs"]] == ["plain", "denoising"]
    for run in result["runs"]:
        assert run["test_rows"] > 600
        for figures in run["sensors"].values():
            assert figures["rmse_input"] > 0 and figures["ratio_last"] == pytest.approx(
                figures["rmse_input"] / figures["rmse_last"]
            )
    assert "| 2 | plain (0) |" in (out / "denoise.md").read_text()
