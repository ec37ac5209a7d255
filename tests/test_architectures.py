"""The model families (conv, dense, lstm, vae): the NumPy twin equals Keras for each (whole model,
encoder and decoder halves, the VAE's NLL), LSTM and VAE train and score end to end without
TensorFlow at scoring, and training that diverges fails the run with one clear line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from pipeline.config import ModelConfig
from pipeline.detector.sampled import SampledNLL
from pipeline.errors import TrainingFailed
from pipeline.model.autoencoder import build_autoencoder, inference_model
from pipeline.model.halves import KerasHalves
from pipeline.model.numpy_twin import NumpyAutoencoder
from pipeline.model.training import check_training
from tests.conftest import TINY_CONFIG_YAML, TINY_NORMAL_UNTIL

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = {
    "conv": {"filters": [8, 4], "kernel_size": 3},
    "dense": {"units": [24, 12]},
    "lstm": {"lstm_units": 12},
    "vae": {"filters": [8, 4], "kernel_size": 3},
}


def _randomize(model: keras.Model, seed: int = 0) -> None:
    """Non-zero biases (freshly built layers have zero ones), kernels as initialised."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if weight.path.endswith("bias"):
            weight.assign(rng.normal(0.0, 0.3, weight.shape).astype("float32"))


def _saved(
    tmp_path: Path, architecture: str, window: int = 10, sensors: int = 3, **extra
) -> tuple[keras.Model, NumpyAutoencoder]:
    config = ModelConfig(architecture=architecture, latent_dim=4, **ARCHITECTURES[architecture])
    model = inference_model(build_autoencoder(config, window, sensors), config)
    _randomize(model)
    model.save(tmp_path / "m.keras")
    return model, NumpyAutoencoder.from_keras_file(tmp_path / "m.keras")


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("window", [12])
def test_twin_equals_keras_for_every_architecture(tmp_path, architecture, window):
    model, twin = _saved(tmp_path, architecture, window)
    windows = np.random.default_rng(1).normal(size=(300, window, 3)).astype("float32")  # more than one twin chunk
    np.testing.assert_allclose(twin.predict_on_batch(windows), model.predict_on_batch(windows), rtol=1e-4, atol=1e-5)
    keras_halves = KerasHalves(model)
    codes = twin.encode(windows)
    assert codes.shape == (300, 4)
    np.testing.assert_allclose(codes, keras_halves.encode(windows), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(twin.decode(codes), keras_halves.decode(codes), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(twin.decode(codes), twin.predict_on_batch(windows), rtol=1e-5, atol=1e-6)


def test_vae_is_saved_as_its_mean_path_and_its_nll_matches_keras(tmp_path):
    config = ModelConfig(architecture="vae", latent_dim=4, vae_score="nll", vae_samples=8, **ARCHITECTURES["vae"])
    trained = build_autoencoder(config, 10, 3)
    data = np.random.default_rng(0).normal(size=(128, 10, 3)).astype("float32")
    trained.fit(data, data, epochs=1, batch_size=64, verbose=0)
    chain = inference_model(trained, config)
    # the training model at inference (sampling gives the mean) and the saved chain are one function
    np.testing.assert_allclose(trained.predict_on_batch(data), chain.predict_on_batch(data), rtol=1e-5, atol=1e-6)
    assert "sampling" not in [layer.name for layer in chain.layers]
    chain.save(tmp_path / "vae.keras")
    twin = NumpyAutoencoder.from_keras_file(tmp_path / "vae.keras")
    keras_nll, twin_nll = SampledNLL(chain, config), SampledNLL(twin, config)
    expected = keras_nll.energy_on_batch(data, 3.0)
    np.testing.assert_allclose(twin_nll.energy_on_batch(data, 3.0), expected, rtol=1e-4, atol=1e-5)
    # batches do not change a window's NLL (the draws are fixed), and it is at least the mean path's error
    np.testing.assert_allclose(twin_nll.energy_on_batch(data[:7], 3.0), expected[:7], rtol=1e-5, atol=1e-6)
    mean_path = np.square(data - twin.predict_on_batch(data)).sum(axis=1)
    assert np.mean(twin_nll.energy_on_batch(data, 0.0)) >= np.mean(mean_path) * 0.99


def _cli(*args: str) -> int:
    return main(list(args))


def _config(tmp_path: Path, model_lines: str) -> Path:
    path = tmp_path / "arch.yaml"
    path.write_text(TINY_CONFIG_YAML.replace("model:\n", f"model:\n{model_lines}"))
    return path


@pytest.mark.parametrize(
    ("architecture", "extra"), [("lstm", "  lstm_units: 12\n"), ("vae", "  vae_score: nll\n  vae_samples: 4\n")]
)
def test_lstm_and_vae_train_and_score_end_to_end(tmp_path, tiny_csv, tracking_uri, architecture, extra):
    config = _config(tmp_path, f"  architecture: {architecture}\n{extra}")
    common = ["--model-name", "pump", "--tracking-uri", tracking_uri]
    assert _cli("train", "--input", str(tiny_csv), "--normal-until", TINY_NORMAL_UNTIL, "--config", str(config), *common) == 0
    assert _cli("score", "--input", str(tiny_csv), "--out", str(tmp_path / "out"), *common) == 0
    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert scores["score"].notna().sum() == len(scores) - 7  # every row with a full window of 8
    assert scores["anomaly"].sum() > 0  # the tiny data's faults are seen
    assert _cli("encode", "--input", str(tiny_csv), "--out", str(tmp_path / "enc"), *common) == 0
    latent = pd.read_parquet(tmp_path / "enc" / "latent.parquet")
    assert [c for c in latent.columns if c.startswith("latent_")] == [f"latent_{i}" for i in range(4)]

    # scoring loads the model without TensorFlow (the twin runs LSTM and the VAE's mean path)
    client = MlflowClient(tracking_uri)
    version = client.get_model_version_by_alias("pump", "champion")
    bundle = Path(client.download_artifacts(version.run_id, "model/artifacts/bundle", str(tmp_path / "dl")))
    script = textwrap.dedent(
        f"""
        import sys
        import pandas as pd
        from pipeline.detector.bundle import load_bundle
        from pipeline.serving import predict_frame
        bundle = load_bundle(__import__("pathlib").Path({str(bundle)!r}))
        got = predict_frame(bundle, pd.read_csv({str(tiny_csv)!r}), "pump.csv")
        expected = pd.read_csv({str(tmp_path / "out" / "scores.csv")!r})
        assert (got["score"].fillna(-1) - expected["score"].fillna(-1)).abs().max() < 1e-5 * expected["score"].max()
        codes = predict_frame(bundle, pd.read_csv({str(tiny_csv)!r}), "pump.csv", "latent")  # encode's path
        rebuilt = predict_frame(bundle, pd.read_csv({str(tiny_csv)!r}), "pump.csv", "reconstruction")
        assert len(codes) == len(rebuilt) == expected["score"].notna().sum()
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))
        assert not loaded, loaded
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_diverging_training_fails_the_run_with_one_line_and_exit_2(tmp_path, tiny_frame, tracking_uri, capsys):
    frame = tiny_frame.copy()
    frame["speed"] = frame["speed"] * 1e30  # a sensor with huge values
    csv = tmp_path / "huge.csv"
    frame.to_csv(csv, index=False)
    config = _config(tmp_path, "  learning_rate: 1000\n")  # and a far too high learning rate
    code = _cli(
        "train", "--input", str(csv), "--normal-until", TINY_NORMAL_UNTIL, "--config", str(config),
        "--model-name", "pump", "--tracking-uri", tracking_uri,
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    line = [x for x in err if x.startswith("error:")]
    assert len(line) == 1
    assert "training failed" in line[0] and "epoch 1" in line[0] and "learning_rate" in line[0], line[0]
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("pump")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED" and "training failed" in run.data.tags["error"]
    assert not client.search_registered_models()  # no bundle, no version


def test_check_training_rules():
    config = ModelConfig()
    check_training({"loss": [1.0, 0.5], "val_loss": [1.0, 0.6]}, None, config, 1.0)  # learned
    check_training({"loss": [1.0, 0.5], "val_loss": [0.34, 0.35]}, None, config, 0.33)  # stalled near the baseline: a warning
    with pytest.raises(TrainingFailed, match="epoch 3"):
        check_training({"loss": [1.0, 0.5]}, (3, "loss", float("nan")), config)
    with pytest.raises(TrainingFailed, match="nor did the training loss"):
        check_training({"loss": [1.0, 1.2, 1.1], "val_loss": [1.0, 1.1, 1.2]}, None, config)
    with pytest.raises(TrainingFailed, match="rebuilding every window"):
        check_training({"loss": [50.0, 20.0], "val_loss": [400.0, 900.0]}, None, config, 0.3)


def test_learning_rate_schedules_and_gradient_clipping():
    from pipeline.model.training import train_autoencoder

    cosine = build_autoencoder(ModelConfig(filters=[4], latent_dim=2, epochs=4, lr_schedule="cosine"), 8, 3, steps_per_epoch=5)
    schedule = cosine.optimizer._learning_rate  # Keras 3 keeps the schedule there (learning_rate is its current value)
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay) and schedule.decay_steps == 20

    values = np.random.default_rng(0).normal(size=(400, 3)).astype("float32")
    config = ModelConfig(filters=[4], latent_dim=2, epochs=3, batch_size=32, lr_schedule="plateau", clipnorm=1.0, patience=1)
    trained = train_autoencoder(values, np.arange(0, 300), np.arange(310, 390), 8, config)
    assert trained.model.optimizer.clipnorm == 1.0
    assert set(trained.history) == {"loss", "val_loss"} and np.isfinite(trained.history["loss"]).all()
