"""End to end through the real command line, a real sqlite MLflow store and real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from tests.conftest import TINY_NORMAL_UNTIL

SCORE_COLUMNS = ["source", "timestamp", "score", "threshold", "anomaly", "event_id"]
EVENT_COLUMNS = [
    "event_id",
    "source",
    "start",
    "end",
    "n_rows",
    "peak_score",
    "mean_score",
    "threshold",
    "top_sensors",
    "model_version",
    "run_id",
]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _runs(uri: str):
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments)


def test_train_then_score_end_to_end(tmp_path, tiny_csv, tiny_config_file, tracking_uri):
    train = cli(
        "train",
        "--input",
        str(tiny_csv),
        "--normal-until",
        TINY_NORMAL_UNTIL,
        "--config",
        str(tiny_config_file),
        "--model-name",
        "pump",
        "--tracking-uri",
        tracking_uri,
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr
    assert "version 1" in train.stdout

    out = tmp_path / "out"
    score = cli(
        "score", "--input", str(tiny_csv), "--out", str(out), "--model-name", "pump", "--tracking-uri", tracking_uri, cwd=tmp_path
    )
    assert score.returncode == 0, score.stderr
    scores = pd.read_csv(out / "scores.csv")
    source = pd.read_csv(tiny_csv)
    assert len(scores) == len(source)
    assert list(scores.columns[:6]) == SCORE_COLUMNS
    assert [c for c in scores.columns if c.startswith("contrib_")] == [f"contrib_{c}" for c in source.columns[1:]]
    assert (pd.to_datetime(scores["timestamp"]).dt.tz_localize(None) == pd.to_datetime(source["timestamp"])).all()
    assert scores["score"].isna().sum() == 7  # window 8: the first 7 rows have no full window
    assert set(scores["anomaly"]) <= {0, 1} and scores["anomaly"].sum() > 0
    assert (
        scores.loc[scores["anomaly"] == 1, "event_id"].notna().all()
        and scores.loc[scores["anomaly"] == 0, "event_id"].isna().all()
    )

    anomalies = pd.read_csv(out / "anomalies.csv")
    assert list(anomalies.columns) == EVENT_COLUMNS and len(anomalies) >= 1
    assert set(anomalies["model_version"]) == {1}
    spikes = anomalies[(anomalies["start"] <= "2026-10-01T21:00") & (anomalies["end"] >= "2026-10-01T20:00")]
    assert len(spikes) >= 1 and spikes["top_sensors"].str.startswith("vibration_rms").any()
    assert (out / "scores.png").is_file() and (out / "validated.parquet").is_file()

    client, runs = _runs(tracking_uri)
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert {r.info.status for r in runs} == {"FINISHED"}
    trained = by_stage["train"]
    assert trained.data.params["features.window_size"] == "8"
    assert "threshold" in trained.data.metrics and "holdout_error.p99" in trained.data.metrics
    assert len(client.get_metric_history(trained.info.run_id, "loss")) >= 1
    assert {"input_digest", "project_version", "model_version"} <= set(trained.data.tags)
    artifacts = {a.path for a in client.list_artifacts(trained.info.run_id)}
    assert {"config.yaml", "quality_report.json", "threshold.json", "plots"} <= artifacts
    scored = by_stage["score"]
    assert scored.data.metrics["events"] == len(anomalies)
    assert {"anomalies.csv", "scores.png", "quality_report.json"} <= {a.path for a in client.list_artifacts(scored.info.run_id)}
    assert client.get_registered_model("pump").name == "pump"


def test_run_trains_once_then_processes_only_new_files(tmp_path, tiny_frame, tiny_config_file, tracking_uri):
    landing = tmp_path / "landing"
    landing.mkdir()
    half = len(tiny_frame) // 2
    tiny_frame.iloc[:half].to_csv(landing / "a.csv", index=False)
    config = tmp_path / "run.yaml"
    config.write_text(tiny_config_file.read_text() + f"training:\n  normal_until: '{TINY_NORMAL_UNTIL}'\n")
    args = (
        "run",
        "--input",
        str(landing),
        "--out",
        str(tmp_path / "out"),
        "--state",
        str(tmp_path / "state"),
        "--config",
        str(config),
        "--tracking-uri",
        tracking_uri,
    )
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    folders = sorted(p for p in (tmp_path / "out").iterdir() if p.is_dir())
    assert "trained" in first.stdout and len(folders) == 1 and len(pd.read_csv(folders[0] / "scores.csv")) == half

    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing new" in again.stdout

    tiny_frame.iloc[half:].to_csv(landing / "b.csv", index=False)
    third = cli(*args, cwd=tmp_path)
    assert third.returncode == 0 and "trained" not in third.stdout
    folders = sorted(p for p in (tmp_path / "out").iterdir() if p.is_dir())
    assert len(folders) == 2 and sum(len(pd.read_csv(f / "scores.csv")) for f in folders) == len(tiny_frame)
    assert (tmp_path / "out" / "anomalies.csv").is_file()
    _, runs = _runs(tracking_uri)
    assert sum(r.data.tags["stage"] == "train" for r in runs) == 1
    assert {r.info.status for r in runs} == {"FINISHED"}


def in_process(*args: str, capsys) -> tuple[int, str, str]:
    """The CLI's own entry point in this process: the same code path, without re-importing TensorFlow."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing", "file not found"),
        ("empty", "file is empty"),
        ("no_timestamp", "no timestamp column"),
        ("no_sensor", "no numeric sensor column"),
        ("too_short", "normal rows, need at least"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, tracking_uri, capsys, case, expected):
    path = tmp_path / "in.csv"
    if case == "empty":
        path.write_text("")
    elif case == "no_timestamp":
        path.write_text("a,b\n1,2\n3,4\n")
    elif case == "no_sensor":
        path.write_text("time,site\n2026-01-01 00:00:00,north\n2026-01-01 00:01:00,south\n")
    elif case == "too_short":
        path.write_text("time,a\n" + "".join(f"2026-01-01 00:{m:02d}:00,{m % 3}\n" for m in range(20)))
    code, _, err = in_process("train", "--input", str(path), "--tracking-uri", tracking_uri, capsys=capsys)
    assert code == 2
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and expected in error_lines[0] and "in.csv" in error_lines[0]
    if case != "missing":  # the failed training is a FAILED run with the message
        _, runs = _runs(tracking_uri)
        assert [r.info.status for r in runs] == ["FAILED"] and expected in runs[0].data.tags["error"]


def test_bad_config_and_unknown_model_exit_2(tmp_path, tiny_csv, tracking_uri, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("threshold:\n  method: median\n")
    code, _, err = in_process(
        "train", "--input", str(tiny_csv), "--config", str(config), "--tracking-uri", tracking_uri, capsys=capsys
    )
    assert code == 2 and "threshold.method" in err and "'median'" in err
    code, _, err = in_process(
        "score",
        "--input",
        str(tiny_csv),
        "--out",
        str(tmp_path / "o"),
        "--model-name",
        "nope",
        "--tracking-uri",
        tracking_uri,
        capsys=capsys,
    )
    assert code == 2 and "no registered model named 'nope'" in err


def test_help_on_every_command(tmp_path):
    for command in ([], ["train"], ["score"], ["run"]):
        result = cli(*command, "--help", cwd=tmp_path)
        assert result.returncode == 0 and "usage: anomaly-pipeline" in result.stdout


def test_run_exits_3_while_another_run_holds_the_lock(tmp_path, tiny_csv, tracking_uri, capsys):
    import fcntl

    state = tmp_path / "state"
    state.mkdir()
    with (state / "run.lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running job would
        code, _, err = in_process(
            "run",
            "--input",
            str(tiny_csv.parent),
            "--out",
            str(tmp_path / "out"),
            "--state",
            str(state),
            "--tracking-uri",
            tracking_uri,
            capsys=capsys,
        )
    assert code == 3 and "another run holds the lock" in err
    assert not (tmp_path / "out").exists()


def test_model_trained_on_labels_scores_unlabelled_data(tmp_path, tiny_frame, tracking_uri, capsys):
    labelled = tiny_frame.assign(anomaly=(tiny_frame["timestamp"] >= TINY_NORMAL_UNTIL).astype(int))
    labelled.to_csv(tmp_path / "labelled.csv", index=False)
    tiny_frame.to_csv(tmp_path / "live.csv", index=False)
    config = tmp_path / "tiny.yaml"
    config.write_text("features: {window_size: 8}\nmodel: {filters: [8], latent_dim: 4, epochs: 1}\n")
    code, _, err = in_process(
        "train",
        "--input",
        str(tmp_path / "labelled.csv"),
        "--label-column",
        "anomaly",
        "--config",
        str(config),
        "--model-name",
        "pump's",
        "--tracking-uri",
        tracking_uri,
        capsys=capsys,
    )
    assert code == 0, err
    code, out, err = in_process(
        "score",
        "--input",
        str(tmp_path / "live.csv"),
        "--out",
        str(tmp_path / "out"),
        "--model-name",
        "pump's",
        "--tracking-uri",
        tracking_uri,
        capsys=capsys,
    )
    assert code == 0, err
    assert "model version 1" in out and len(pd.read_csv(tmp_path / "out" / "scores.csv")) == len(tiny_frame)


def test_train_stops_when_most_rows_are_set_aside_unless_allowed_and_score_warns(tmp_path, tiny_frame, tracking_uri, capsys):
    """Issue 16: 60 % of the rows set aside -> train exits 2 naming it; --allow-set-aside trains; score warns and tags."""
    # motor_current missing in runs of 30 rows (longer than max_fill_rows), 60 % of the rows.
    frame = tiny_frame.assign(motor_current=tiny_frame["motor_current"].where((tiny_frame.index // 10) % 5 >= 3))
    frame.to_csv(tmp_path / "bad.csv", index=False)
    config = tmp_path / "tiny.yaml"
    config.write_text("features: {window_size: 8}\nmodel: {filters: [8], latent_dim: 4, epochs: 1}\n")
    train = [
        "train",
        "--input",
        str(tmp_path / "bad.csv"),
        "--config",
        str(config),
        "--model-name",
        "pump",
        "--tracking-uri",
        tracking_uri,
    ]

    code, _, err = in_process(*train, capsys=capsys)

    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2
    assert line.startswith("error: bad.csv: 60% of its rows set aside (870 of 1440), more than ingest.max_set_aside_share=0.2")
    assert "main reason: missing value (870 rows); sensors logged at different rates?" in line and line.endswith(
        "pass --allow-set-aside (training.allow_set_aside)"
    )

    code, _, err = in_process(*train, "--allow-set-aside", capsys=capsys)
    assert code == 0, err
    assert [x for x in err.splitlines() if x.startswith("warning: bad.csv: 60% of its rows set aside")]

    code, _, err = in_process(
        "score",
        "--input",
        str(tmp_path / "bad.csv"),
        "--out",
        str(tmp_path / "out"),
        "--model-name",
        "pump",
        "--tracking-uri",
        tracking_uri,
        capsys=capsys,
    )
    assert code == 0, err
    assert [x for x in err.splitlines() if x.startswith("warning: bad.csv: 60% of its rows set aside (870 of 1440)")]
    assert len(pd.read_csv(tmp_path / "out" / "scores.csv")) == len(tiny_frame)  # every row reported
    client, runs = _runs(tracking_uri)
    tags = {r.data.tags.get("stage"): r.data.tags.get("set_aside_over_limit", "") for r in runs if r.info.status == "FINISHED"}
    assert tags["score"].startswith("bad.csv: 60% of its rows set aside") and tags["train"].startswith("bad.csv: 60%")
