"""The SKAB benchmark: metrics by hand, peers on synthetic data, the command end to end on two real files."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.benchmark.peers import KerasFit, run_peer
from pipeline.cli import main
from pipeline.config import EventsConfig
from pipeline.evaluation.metrics import Counts, confusion

SKAB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "skab"
needs_skab = pytest.mark.skipif(not (SKAB / "valve1" / "1.csv").is_file(), reason="SKAB data not beside the repository")


def test_confusion_counts_and_figures_by_hand():
    predicted = np.array([1, 1, 0, 0, 1, 0, 0, 1])
    actual = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    counts = confusion(predicted, actual)
    assert counts == Counts(tp=2, fp=2, fn=2, tn=2)
    assert counts.f1 == pytest.approx(2 / (2 + (2 + 2) / 2))  # 0.5
    assert counts.far == pytest.approx(2 / 4)
    assert counts.mar == pytest.approx(2 / 4)


def test_counts_are_summed_before_the_figures_micro_average():
    one = confusion(np.array([1, 1, 1, 0]), np.array([1, 1, 1, 1]))  # tp 3, fn 1
    two = confusion(np.array([1, 0, 0, 0, 0, 0]), np.array([0, 0, 0, 0, 0, 1]))  # fp 1, fn 1, tn 4
    total = one + two
    assert total == Counts(tp=3, fp=1, fn=2, tn=4)
    assert total.f1 == pytest.approx(3 / (3 + 1.5))
    assert total.far == pytest.approx(1 / 5)
    assert total.mar == pytest.approx(2 / 5)
    # Flag everything: FAR 1, MAR 0, F1 = 2p / (1 + p) for anomalous share p.
    everything = confusion(np.ones(10), np.r_[np.ones(4), np.zeros(6)])
    assert (everything.far, everything.mar) == (1.0, 0.0)
    assert everything.f1 == pytest.approx(2 * 0.4 / 1.4)


def test_undefined_figures_are_nan_and_null_in_json():
    counts = confusion(np.zeros(3), np.zeros(3))
    assert math.isnan(counts.f1) and math.isnan(counts.mar) and counts.far == 0.0
    assert counts.figures()["f1"] is None
    with pytest.raises(ValueError):
        confusion(np.zeros(3), np.zeros(4))


def _steady_then_shifted(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """500 rows x 4 correlated sensors; rows 450..499 of one sensor leave its range (an anomaly)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(500, 1))
    values = np.hstack([base + 0.1 * rng.normal(size=(500, 1)) for _ in range(4)])
    values[450:, 2] += 8.0  # far outside its training range
    labels = np.zeros(500, dtype=int)
    labels[450:] = 1
    return values, labels


@pytest.mark.parametrize("name", ["ecod", "pyod_iforest"])
def test_pyod_peers_on_windows_flag_a_sensor_leaving_its_range(name):
    pytest.importorskip("pyod")
    values, labels = _steady_then_shifted()
    result = run_peer(name, values, test_start=400)
    assert result.anomaly.shape == result.score.shape == (100,)
    test_labels = labels[400:]
    # A row's window is its 32 rows: from row 481 on, the whole window is shifted.
    whole = np.arange(400, 500) >= 481
    assert result.score[whole].min() > result.score[test_labels == 0].max()
    assert result.anomaly[whole].all()


def test_pyod_peers_are_named_only_where_pyod_is_installed(tmp_path, monkeypatch, capsys):
    from pipeline.benchmark import peers

    monkeypatch.setattr(peers, "pyod_available", lambda: False)
    assert "ecod" not in peers.available_peers() and "conv_ae" in peers.available_peers()
    (tmp_path / "d" / "valve1").mkdir(parents=True)
    argv = ["benchmark", "skab", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--detector", "ecod"]
    assert main(argv) == 2
    assert "need PyOD" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["isolation_forest", "pca_t2q"])
def test_classic_peers_flag_a_sensor_leaving_its_range(name):
    values, labels = _steady_then_shifted()
    result = run_peer(name, values, test_start=400)
    assert result.anomaly.shape == result.score.shape == (100,)
    test_labels = labels[400:]
    assert result.score[test_labels == 1].min() > np.median(result.score[test_labels == 0])
    counts = confusion(result.anomaly, test_labels)
    assert counts.far < 0.2
    if name == "pca_t2q":  # the forest's limit (contamination 0.001) sits at its deepest training points
        assert counts.mar < 0.2


def test_conv_ae_peer_predicts_one_flag_per_test_row():
    values, _ = _steady_then_shifted(1)
    result = run_peer("conv_ae", values, test_start=400, epochs=2)
    assert result.anomaly.shape == result.score.shape == (100,) and np.all(np.isfinite(result.score))
    # A row is flagged exactly when every window holding it exceeds: its score (the smallest of
    # those windows' residuals over the limit) is above 1.
    np.testing.assert_array_equal(result.anomaly == 1, result.score > 1)


def _tiny_autoencoder(seed: int, learning_rate: float = 0.01):
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(12, 3)),
            layers.Conv1D(4, 3, padding="same", strides=2, activation="relu"),
            layers.Dropout(0.2),
            layers.Conv1DTranspose(3, 3, padding="same", strides=2),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss=keras.losses.MeanSquaredError())
    return model


def _tiny_windows() -> np.ndarray:
    rng = np.random.default_rng(3)
    wave = np.sin(np.arange(12) / 2)[None, :, None] * rng.normal(size=(75, 1, 3))
    return (wave + 0.05 * rng.normal(size=(75, 12, 3))).astype(np.float32)


def test_conv_ae_epoch_graph_makes_the_same_updates_as_train_on_batch():
    """The in-graph epoch loop against one ``train_on_batch`` per batch: same batches, same dropout, same weights."""
    windows = _tiny_windows()  # 67 train windows: two batches of 32 and one of 3 per epoch
    fast = _tiny_autoencoder(seed=5)
    assert KerasFit(fast, batch_size=32).fit(windows, epochs=3, validation_split=0.1, patience=10, seed=7) == 3
    slow = _tiny_autoencoder(seed=5)
    split = int(len(windows) * 0.9)
    rng = np.random.default_rng(7)
    for _ in range(3):
        order = rng.permutation(split)
        for lo in range(0, split, 32):
            batch = windows[:split][order[lo : lo + 32]]
            slow.train_on_batch(batch, batch)
    for got, want in zip(fast.get_weights(), slow.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fast.get_weights()[0], _tiny_autoencoder(seed=5).get_weights()[0])  # it did train


def test_conv_ae_training_lowers_the_loss_and_stops_on_its_validation_rule():
    windows = _tiny_windows()

    def loss(model) -> float:
        return float(np.mean(np.square(windows - np.asarray(model.predict_on_batch(windows)))))

    model = _tiny_autoencoder(seed=0)
    before = loss(model)
    KerasFit(model, batch_size=32).fit(windows, epochs=30, validation_split=0.1, patience=30, seed=0)
    assert loss(model) < 0.5 * before
    # Learning rate 0: the validation loss never improves on the first epoch's, so training
    # stops after 1 + patience epochs.
    frozen = _tiny_autoencoder(seed=0, learning_rate=0.0)
    assert KerasFit(frozen, batch_size=32).fit(windows, epochs=30, validation_split=0.1, patience=4, seed=0) == 5


def _flag_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of 1s."""
    edges = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), (ends - starts).tolist()))


def test_flag_runs():
    assert _flag_runs(np.array([1, 1, 0, 0, 1, 0, 1, 1, 1])) == [(0, 2), (4, 1), (6, 3)]


@needs_skab
def test_benchmark_command_end_to_end_on_two_real_files(tmp_path, capsys):
    data = tmp_path / "skab"
    for group, name in (("valve1", "1"), ("other", "2")):
        (data / group).mkdir(parents=True)
        shutil.copy(SKAB / group / f"{name}.csv", data / group / f"{name}.csv")
    config = tmp_path / "fast.yaml"
    config.write_text("model:\n  epochs: 3\n")
    out = tmp_path / "out"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["benchmark", "skab", "--data", str(data), "--out", str(out), "--tracking-uri", uri, "--config", str(config)]
    code = main([*argv, "--detector", "product", "isolation_forest", "pca_t2q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "product" in printed and "pca_t2q" in printed

    for group, name in (("valve1", "1"), ("other", "2")):
        source = pd.read_csv(data / group / f"{name}.csv", sep=";")
        for folder in (out / "predictions", out / "peers" / "isolation_forest", out / "peers" / "pca_t2q"):
            predicted = pd.read_csv(folder / group / f"{name}.csv")
            assert list(predicted.columns) == ["datetime", "anomaly", "score"]
            assert predicted["datetime"].tolist() == source["datetime"].iloc[400:].tolist()
            if folder.name == "predictions":  # the product's flags are events: runs of at least min_event_rows
                runs = _flag_runs(predicted["anomaly"].to_numpy())
                assert all(length >= EventsConfig().min_event_rows for start, length in runs if start > 0), runs

    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == 2 and set(summary["detectors"]) == {"product", "isolation_forest", "pca_t2q"}
    product = summary["detectors"]["product"]
    assert set(product["groups"]) == {"valve1", "other"} and set(product["files"]) == {"valve1/1", "other/2"}
    # The overall counts are the sum of the files' counts, and the figures follow from them.
    for key in ("tp", "fp", "fn", "tn"):
        assert product["overall"][key] == sum(f[key] for f in product["files"].values())
    o = product["overall"]
    assert o["f1"] == pytest.approx(o["tp"] / (o["tp"] + (o["fp"] + o["fn"]) / 2))
    assert o["tp"] + o["fp"] + o["fn"] + o["tn"] == sum(
        len(pd.read_csv(data / g / f"{n}.csv", sep=";")) - 400 for g, n in (("valve1", "1"), ("other", "2"))
    )
    markdown = (out / "summary.md").read_text()
    assert "| product |" in markdown and "## Event-wise" in markdown and "analysis figure" in markdown
    # Event-wise counts, recomputed from the written flags; the oracle is marked as an analysis figure.
    from pipeline.evaluation.event_metrics import event_counts

    total = None
    for group, name in (("valve1", "1"), ("other", "2")):
        labels = pd.read_csv(data / group / f"{name}.csv", sep=";")["anomaly"].to_numpy()[400:]
        flags = pd.read_csv(out / "predictions" / group / f"{name}.csv")["anomaly"].to_numpy()
        total = event_counts(flags, labels) if total is None else total + event_counts(flags, labels)
    assert o["events"] == total.figures()
    assert o["oracle"]["note"].startswith("analysis figure") and o["oracle"]["f1"] >= 0
    assert o["score_quality"]["files"] == 2 and 0 <= o["score_quality"]["roc_auc"] <= 1

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("skab-benchmark")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and sorted(r.data.tags["detector"] for r in children) == ["isolation_forest", "pca_t2q", "product"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {"f1", "far", "mar", "valve1_f1", "other_mar", "event_f1", "valve1_event_recall"} <= set(
        next(r for r in children if r.data.tags["detector"] == "product").data.metrics
    )
    artifacts = [a.path for a in client.list_artifacts(parents[0].info.run_id)]
    assert "summary.json" in artifacts and "summary.md" in artifacts


@needs_skab
def test_peers_in_worker_processes_give_the_same_predictions_as_in_process(tmp_path):
    from pipeline.benchmark.skab import run_benchmark

    data = tmp_path / "skab"
    for group, name in (("valve1", "1"), ("other", "2")):
        (data / group).mkdir(parents=True)
        shutil.copy(SKAB / group / f"{name}.csv", data / group / f"{name}.csv")
    peers = ["isolation_forest", "pca_t2q"]
    summaries = {}
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        summaries[workers] = run_benchmark(data, out, f"sqlite:///{tmp_path / 'mlflow.db'}", peers, peer_workers=workers)
    for name in peers:
        assert summaries[0]["detectors"][name]["files"] == summaries[2]["detectors"][name]["files"]
        for group, file in (("valve1", "1"), ("other", "2")):
            inline = pd.read_csv(tmp_path / "out0" / "peers" / name / group / f"{file}.csv")
            pd.testing.assert_frame_equal(inline, pd.read_csv(tmp_path / "out2" / "peers" / name / group / f"{file}.csv"))


def test_benchmark_refuses_an_unknown_detector_and_a_missing_folder(tmp_path, capsys):
    assert main(["benchmark", "skab", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "d" / "valve1").mkdir(parents=True)
    assert main(["benchmark", "skab", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--detector", "magic"]) == 2
    assert "unknown magic" in capsys.readouterr().err
