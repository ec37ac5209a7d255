"""The registered model: a pyfunc that scores like the CLI, served by MLflow, with champion and
challenger aliases and a gated promotion; and what training and scoring runs show a reviewer."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

import mlflow
from pipeline.cli import main
from pipeline.jobs.train import train_job
from tests.conftest import local_server, tiny_config


def in_process(*args: str, capsys) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _numeric(frame: pd.DataFrame) -> list[str]:
    return ["score", "threshold", "anomaly", "event_id", *[c for c in frame.columns if c.startswith("contrib_")]]


def test_pyfunc_from_the_registry_scores_like_the_cli(trained_store):
    mlflow.set_tracking_uri(trained_store.uri)
    model = mlflow.pyfunc.load_model("models:/pump@champion")
    returned = model.predict(pd.read_csv(trained_store.csv), params={"source": "pump.csv"})
    expected = pd.read_csv(trained_store.out / "scores.csv")

    assert list(returned.columns) == list(expected.columns)
    assert (returned["source"] == expected["source"]).all() and (returned["timestamp"] == expected["timestamp"]).all()
    for column in _numeric(expected):
        np.testing.assert_allclose(
            returned[column].to_numpy(float), expected[column].to_numpy(float), rtol=1e-6, atol=1e-9, equal_nan=True
        )
    assert expected["anomaly"].sum() > 0  # the comparison covers flagged rows too

    sensors = [c for c in pd.read_csv(trained_store.csv, nrows=1).columns if c != "timestamp"]
    assert model.metadata.signature.inputs.input_names() == ["timestamp", *sensors]
    assert "contrib_" + sensors[0] in model.metadata.signature.outputs.input_names()
    example = model.input_example
    assert list(example.columns) == ["timestamp", *sensors] and len(example) > 8  # more rows than one window


def test_pyfunc_scores_without_tensorflow(trained_store):
    code = (
        "import sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({trained_store.uri!r})\n"
        "model = mlflow.pyfunc.load_model('models:/pump@champion')\n"
        f"scores = model.predict(pd.read_csv({str(trained_store.csv)!r}))\n"
        "assert scores['score'].notna().sum() > 1000\n"
        "print('tensorflow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def test_mlflow_models_serve_answers_invocations(trained_store, tmp_path):
    command = [
        "mlflow",
        "models",
        "serve",
        "-m",
        "models:/pump@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        "{port}",
    ]
    with local_server(command, "/ping", tmp_path / "serve.log", {"MLFLOW_TRACKING_URI": trained_store.uri}, timeout=180) as base:
        frame = pd.read_csv(trained_store.csv).head(60)
        body = {"dataframe_split": json.loads(frame.to_json(orient="split", index=False)), "params": {"source": "pump.csv"}}
        request = urllib.request.Request(f"{base}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"})
        returned = pd.DataFrame(json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"])
    expected = pd.read_csv(trained_store.out / "scores.csv").head(60)
    assert len(returned) == 60 and returned["score"].notna().sum() == 60 - 7  # window 8
    for column in ("score", "anomaly", "contrib_vibration_rms"):
        np.testing.assert_allclose(returned[column].to_numpy(float), expected[column].to_numpy(float), rtol=1e-5, equal_nan=True)


def test_training_run_tells_its_story(trained_store):
    client = MlflowClient(trained_store.uri)
    run = client.get_run(trained_store.train_run_id)
    tags = run.data.tags
    assert tags["stage"] == "train" and tags["model_name"] == "pump" and tags["source"] == "pump.csv"
    assert run.info.run_name == "train pump pump.csv"
    description = tags["mlflow.note.content"]
    method = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/threshold.json")["method"]
    for needed in ("pump.csv", "2026-10-01 12:00:00", f"`{method}`", f"{run.data.metrics['threshold']:.5g}", "p99", "@champion"):
        assert needed in description, needed
    assert "judged by" in description.lower()  # which sensors are judged by shape, level and shape

    plots = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"training_curves.png", "holdout_errors.png", "scores.png"} <= plots
    assert any(name.startswith("event_") for name in plots)
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) >= 1

    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.digest == tags["input_digest"][:32]
    assert json.loads(dataset.source)["uri"] == str(trained_store.csv.resolve())
    schema_names = [column["name"] for column in json.loads(dataset.schema)["mlflow_colspec"]]
    assert schema_names[0] == "timestamp" and "vibration_rms" in schema_names
    assert json.loads(dataset.profile)["num_rows"] == 1440
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"


def test_scoring_run_shows_what_it_scored(trained_store):
    client = MlflowClient(trained_store.uri)
    run = client.get_run(trained_store.score_run_id)
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["stage"] == "score" and tags["model_version"] == "1" and tags["source"] == "pump.csv"
    anomalies = pd.read_csv(trained_store.out / "anomalies.csv")
    assert metrics["rows_scored"] == 1440 - 7 and metrics["events"] == len(anomalies) > 0
    assert {"anomalies.csv", "scores.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "version 1" in tags["mlflow.note.content"] and f"{len(anomalies)} event(s)" in tags["mlflow.note.content"]
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == tags["input_digest"][:32]


def test_champion_challenger_and_gated_promotion(tmp_path, tiny_frame, tracking_uri, capsys):
    """First version champion, next challenger; the gate refuses a worse challenger on labelled
    data and passes it on alarm rate; promotion moves champion; every decision is a run."""
    client = MlflowClient(tracking_uri)
    live = tmp_path / "live.csv"
    tiny_frame.to_csv(live, index=False)
    faulty = (tiny_frame["timestamp"].between("2026-10-01 14:00", "2026-10-01 17:00")) | (
        tiny_frame["timestamp"].between("2026-10-01 20:00", "2026-10-01 21:00")
    )
    labelled = tmp_path / "labelled.csv"
    tiny_frame.assign(anomaly=faulty.astype(int)).to_csv(labelled, index=False)

    train_job([live], tiny_config(), "gate", tracking_uri)
    assert _aliases(client, "gate") == {"champion": "1"}
    code, out, err = in_process(
        "score",
        "--input",
        str(live),
        "--out",
        str(tmp_path / "out"),
        "--model-name",
        "gate",
        "--tracking-uri",
        tracking_uri,
        capsys=capsys,
    )
    assert code == 0 and "model version 1" in out, err

    # A challenger whose threshold is far above any error: it never raises an alarm.
    blind = tiny_config().model_copy(deep=True)
    blind.threshold.method, blind.threshold.k, blind.model.epochs = "mean_std", 1000.0, 1
    train_job([live], blind, "gate", tracking_uri)
    assert _aliases(client, "gate") == {"champion": "1", "challenger": "2"}

    code, out, err = in_process(
        "promote",
        "--model-name",
        "gate",
        "--input",
        str(labelled),
        "--label-column",
        "anomaly",
        "--tracking-uri",
        tracking_uri,
        capsys=capsys,
    )
    assert code == 4 and "not promoted" in err and "the challenger is worse" in err
    assert _aliases(client, "gate") == {"champion": "1", "challenger": "2"}

    code, _, err = in_process("promote", "--model-name", "gate", "--version", "9", "--tracking-uri", tracking_uri, capsys=capsys)
    assert code == 2 and "no version '9'" in err
    code, _, err = in_process("promote", "--model-name", "nosuch", "--tracking-uri", tracking_uri, capsys=capsys)
    assert code == 2 and "no registered model named 'nosuch'" in err

    # Without labels: the challenger's alarm rate on the latest scored data is within budget.
    code, out, err = in_process("promote", "--model-name", "gate", "--tracking-uri", tracking_uri, capsys=capsys)
    assert code == 0 and "promoted" in out, err
    assert _aliases(client, "gate") == {"champion": "2"}

    experiment = client.get_experiment_by_name("gate").experiment_id
    promotions = client.search_runs([experiment], "tags.stage = 'promote'", order_by=["attributes.start_time ASC"])
    refused, passed = [r for r in promotions if r.data.tags["decision"] != "kept"]
    assert refused.data.tags["decision"] == "refused" and refused.data.tags["gate"] == "labels"
    assert refused.data.metrics["challenger_f1"] == 0 < refused.data.metrics["champion_f1"]
    assert passed.data.tags["decision"] == "promoted" and passed.data.tags["gate"] == "alarm_rate"
    assert passed.data.metrics["challenger_alarm_rate"] == 0 and passed.data.metrics["champion_alarm_rate"] > 0
    assert "Decision: promoted" in passed.data.tags["mlflow.note.content"]

    code, out, err = in_process(
        "score",
        "--input",
        str(live),
        "--out",
        str(tmp_path / "out2"),
        "--model-name",
        "gate",
        "--tracking-uri",
        tracking_uri,
        capsys=capsys,
    )
    assert code == 0 and "model version 2" in out, err


def test_score_without_a_champion_says_how_to_promote(tmp_path, trained_store, capsys):
    mlflow.set_tracking_uri(trained_store.uri)  # a models:/ source is looked up in the current store
    client = MlflowClient(trained_store.uri)
    pump = client.get_model_version("pump", "1")
    client.create_registered_model("solo")
    client.create_model_version("solo", source=pump.source, run_id=pump.run_id)  # registered without an alias
    code, _, err = in_process(
        "score",
        "--input",
        str(trained_store.csv),
        "--out",
        str(tmp_path / "out"),
        "--model-name",
        "solo",
        "--tracking-uri",
        trained_store.uri,
        capsys=capsys,
    )
    assert code == 2 and "no version with alias 'champion'" in err and "anomaly-pipeline promote" in err


def test_promote_on_labels_that_mark_no_anomaly_judges_false_alarms(tmp_path, tiny_frame, tracking_uri, capsys):
    """F1 is 0 for both versions on fault-free labelled data: the gate compares false alarms instead."""
    client = MlflowClient(tracking_uri)
    live = tmp_path / "live.csv"
    tiny_frame.to_csv(live, index=False)
    healthy = tmp_path / "healthy.csv"
    tiny_frame[tiny_frame["timestamp"] < "2026-10-01 14:00"].assign(anomaly=0).to_csv(healthy, index=False)
    train_job([live], tiny_config(), "quiet", tracking_uri)
    jumpy = tiny_config().model_copy(deep=True)
    jumpy.threshold.margin = 0.01  # a threshold far below normal errors: alarms everywhere
    train_job([live], jumpy, "quiet", tracking_uri)

    code, _, err = in_process(
        "promote",
        "--model-name",
        "quiet",
        "--input",
        str(healthy),
        "--label-column",
        "anomaly",
        "--tracking-uri",
        tracking_uri,
        capsys=capsys,
    )
    assert code == 4 and "mark no anomaly" in err, err
    assert _aliases(client, "quiet") == {"champion": "1", "challenger": "2"}
    experiment = client.get_experiment_by_name("quiet").experiment_id
    (refused,) = client.search_runs([experiment], "tags.stage = 'promote'")
    assert refused.data.tags["gate"] == "false_alarms"
    assert refused.data.metrics["challenger_far"] > refused.data.metrics["champion_far"] + 0.05
