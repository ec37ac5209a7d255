"""The scheduled ``run`` through the real command line: incremental, exactly once, crash-safe.

One tiny model is trained once per session; each test works on its own copy of the sqlite store
(the model's artifacts stay in the session folder, read only). Runs that must die (kill -9) or
overlap run as child processes (``python -m pipeline``); the rest call the CLI's ``main`` in
this process, the same code path without paying the imports again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from pipeline.store.checkpoints import CRASH_ENV, PAUSE_ENV

CUTS = [0, 500, 841, 1215, 1440]  # 1215 (20:15): inside the vibration-burst event, so one runs across a cut


class Job:
    """One --input/--out/--state triple against a store."""

    def __init__(self, root: Path, uri: str, config: Path, name: str):
        self.input, self.out, self.state = root / f"{name}_in", root / f"{name}_out", root / f"{name}_state"
        self.input.mkdir(parents=True)
        self.uri, self.config = uri, config

    def args(self, *extra: str) -> list[str]:
        return [
            "run",
            "--input",
            str(self.input),
            "--out",
            str(self.out),
            "--state",
            str(self.state),
            "--config",
            str(self.config),
            "--model-name",
            "pump",
            "--tracking-uri",
            self.uri,
            *extra,
        ]

    def run(self, capsys, *extra: str) -> tuple[int, str, str]:
        code = main(self.args(*extra))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    def spawn(self, env: dict[str, str] | None = None, *extra: str) -> subprocess.Popen:
        full = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        full.pop("MLFLOW_TRACKING_URI", None)
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", *self.args(*extra)],
            cwd=self.input.parent,
            env=full,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def folders(self) -> list[Path]:
        return sorted(p for p in self.out.iterdir() if p.is_dir()) if self.out.exists() else []

    def scores(self) -> pd.DataFrame:
        """Every scores.csv row under --out."""
        frames = [pd.read_csv(folder / "scores.csv") for folder in self.folders()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def anomalies(self) -> pd.DataFrame:
        return pd.read_csv(self.out / "anomalies.csv")

    def rows_accounted(self) -> int:
        """Rows written to scores.csv so far plus those the last run held back for the next batch."""
        return len(self.scores()) + json.loads((self.folders()[-1] / "run.json").read_text())["rows"]["rows_held_back"]


def write_parts(frame: pd.DataFrame, folder: Path, upto: int) -> None:
    for i in range(upto):
        path = folder / f"part{i}.csv"
        if not path.exists():
            frame.iloc[CUTS[i] : CUTS[i + 1]].to_csv(path, index=False)


def assert_same_result(returned: Job, expected: Job) -> None:
    """Same rows exactly once, same scores (to float32 batching), flags and events."""
    got, want = returned.scores(), expected.scores()
    assert len(got) == len(want) and got["timestamp"].is_unique
    got, want = got.set_index("timestamp").sort_index(), want.set_index("timestamp").sort_index()
    assert (got.index == want.index).all()
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(got["anomaly"], want["anomaly"])
    np.testing.assert_array_equal(got["event_id"].fillna(0), want["event_id"].fillna(0))
    columns = ["event_id", "start", "end", "n_rows", "top_sensors"]
    pd.testing.assert_frame_equal(returned.anomalies()[columns], expected.anomalies()[columns])
    np.testing.assert_allclose(returned.anomalies()["mean_score"], expected.anomalies()["mean_score"], rtol=1e-5)


def no_leftovers(job: Job) -> None:
    for folder in (job.out, job.state):
        names = [p.name for p in folder.rglob("*")]
        assert not [n for n in names if n.endswith(".tmp") or n.startswith(".partial")], names


def statuses(uri: str) -> list[str]:
    client = MlflowClient(uri)
    return [r.info.status for r in client.search_runs([e.experiment_id for e in client.search_experiments()])]


def test_consecutive_files_give_the_scores_and_flags_of_one_run(tmp_path, tiny_frame, store, run_config, capsys):
    whole = Job(tmp_path, store, run_config, "whole")
    tiny_frame.to_csv(whole.input / "all.csv", index=False)
    code, out, err = whole.run(capsys)
    assert code == 0, err

    split = Job(tmp_path, store, run_config, "split")
    for upto in range(1, len(CUTS)):
        write_parts(tiny_frame, split.input, upto)
        code, out, err = split.run(capsys)
        assert code == 0, err
    assert len(split.folders()) == 4
    assert_same_result(split, whole)
    # One event runs across the cut at row 1215: it keeps one id, and the cumulative report
    # holds it once with its full length.
    crossing = split.anomalies()[
        (split.anomalies()["start"] < "2026-10-01T20:15") & (split.anomalies()["end"] > "2026-10-01T20:15")
    ]
    assert len(crossing) == 1

    # Nothing new: no new folder, nothing written.
    before = sorted(p.name for p in split.out.rglob("*"))
    code, out, err = split.run(capsys)
    assert code == 0 and "nothing new" in out
    assert sorted(p.name for p in split.out.rglob("*")) == before
    # Every run's scores.csv rows carry the model version through anomalies.csv/run.json.
    assert set(split.anomalies()["model_version"].astype(str)) == {"1"}


def test_appended_rows_only_and_changed_file_is_quarantined(tmp_path, tiny_frame, store, run_config, capsys):
    whole = Job(tmp_path, store, run_config, "whole")
    tiny_frame.to_csv(whole.input / "live.csv", index=False)
    assert whole.run(capsys)[0] == 0

    live = Job(tmp_path, store, run_config, "live")
    path = live.input / "live.csv"
    tiny_frame.iloc[:700].to_csv(path, index=False)
    assert live.run(capsys)[0] == 0
    with path.open("a") as handle:  # the historian appends rows to the same file
        tiny_frame.iloc[700:].to_csv(handle, index=False, header=False)
    code, out, err = live.run(capsys)
    assert code == 0, err
    assert "740 new rows" in out
    assert_same_result(live, whole)

    # Re-exported with the same bytes (new modification time): nothing to do.
    path.write_bytes(path.read_bytes())
    assert "nothing new" in live.run(capsys)[1]
    # Edited (not appended): quarantined, exit 2, its rows are not reported twice.
    path.write_text(path.read_text().replace("2026-10-01 00:00:00", "2026-10-01 00:00:30", 1))
    code, out, err = live.run(capsys)
    assert code == 2 and "live.csv" in err and "not by appending" in err
    assert len(live.scores()) == len(tiny_frame)
    assert "live.csv" in (live.state / "quarantine.csv").read_text()
    # Not retried while its content stays the same: no alert again.
    code, out, err = live.run(capsys)
    assert code == 0 and "nothing new" in out


def test_dry_run_lists_and_writes_nothing(tmp_path, tiny_frame, store, run_config, capsys):
    job = Job(tmp_path, store, run_config, "dry")
    write_parts(tiny_frame, job.input, 2)
    code, out, err = job.run(capsys, "--dry-run")
    assert code == 0, err
    assert "would process: part0.csv" in out and "would process: part1.csv" in out and "model: current" in out
    assert not job.out.exists() and not job.state.exists()
    assert job.run(capsys)[0] == 0
    code, out, _ = job.run(capsys, "--dry-run")
    assert "skip (processed): part0.csv" in out


def test_retrain_registers_a_challenger_and_the_run_scores_with_the_champion(tmp_path, tiny_frame, store, run_config, capsys):
    job = Job(tmp_path, store, run_config, "re")
    write_parts(tiny_frame, job.input, 2)
    code, out, err = job.run(capsys, "--retrain")
    assert code == 0, err
    assert "trained pump version 2" in out and "model version 1" in out
    import json

    from mlflow import MlflowClient

    manifest = json.loads((job.folders()[0] / "run.json").read_text())
    assert manifest["model_version"] == "1"
    assert str(MlflowClient(store).get_model_version_by_alias("pump", "challenger").version) == "2"


def test_kill_9_at_any_point_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_frame, store, run_config, capsys):
    reference = Job(tmp_path, store, run_config, "ref")
    tiny_frame.to_csv(reference.input / "all.csv", index=False)
    assert reference.run(capsys)[0] == 0

    job = Job(tmp_path, store, run_config, "crash")
    # Part 0: killed while committing the state: the run folder is in place, the new state is
    # a complete temporary file not yet renamed.
    write_parts(tiny_frame, job.input, 1)
    killed = job.spawn({CRASH_ENV: "mid_state"})
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert len(job.folders()) == 1  # an orphan run folder is visible, the state does not list it
    assert list(job.state.glob(".state.json.*.tmp")) and not (job.state / "state.json").exists()
    assert job.run(capsys)[0] == 0
    assert len(job.folders()) == 1  # the orphan was replaced, not added to
    assert not list(job.state.glob("*.tmp"))

    # Part 1: killed after the state is committed, before the cumulative anomalies.csv.
    write_parts(tiny_frame, job.input, 2)
    killed = job.spawn({CRASH_ENV: "after_state"})
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert "nothing new" in job.run(capsys)[1]  # the work is done; the summary is rebuilt

    # Part 2: killed from outside while writing its outputs (paused there so the kill lands).
    write_parts(tiny_frame, job.input, 3)
    paused = job.spawn({PAUSE_ENV: "mid_outputs:60"})
    deadline = time.time() + 240
    while not any(p.name.startswith(".partial") for p in job.out.iterdir()) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    paused.send_signal(signal.SIGKILL)
    paused.communicate(timeout=60)
    assert paused.returncode == -signal.SIGKILL
    assert any(p.name.startswith(".partial") for p in job.out.iterdir())
    assert job.run(capsys)[0] == 0

    write_parts(tiny_frame, job.input, 4)
    assert job.run(capsys)[0] == 0
    assert_same_result(job, reference)
    no_leftovers(job)
    # The killed processes' MLflow runs were marked by the next run; none is left RUNNING.
    assert "RUNNING" not in statuses(store) and "KILLED" in statuses(store)


def test_two_starts_at_once_and_a_bad_file_among_good_ones(tmp_path, tiny_frame, store, run_config, capsys):
    first = Job(tmp_path, store, run_config, "a")
    write_parts(tiny_frame, first.input, 2)
    other = Job(tmp_path, store, run_config, "b")  # another stream on the same store, at the same time
    write_parts(tiny_frame, other.input, 2)
    (other.input / "part1b.csv").write_bytes(b"\x00\x01binary\xff" * 20)  # sorts between the good ones

    # Whoever takes the lock holds it a few seconds; the other start must give up at once.
    hold = {PAUSE_ENV: "locked:6"}
    procs = [first.spawn(hold), first.spawn(hold), other.spawn(hold)]
    results = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes[:2]) == [0, 3], results
    loser = results[codes.index(3)][1]
    assert [line for line in loser.splitlines() if line.startswith("error:")] == [
        f"error: {first.state / 'run.lock'}: another run holds the lock; try again later"
    ]
    assert "database is locked" not in "".join(r[1] for r in results)

    # The bad file is quarantined with its reason, the good ones are processed, exit 2.
    assert codes[2] == 2, results[2]
    assert "part1b.csv" in results[2][1] and "binary" in results[2][1]
    assert other.rows_accounted() == CUTS[2]
    assert "part1b.csv" in (other.state / "quarantine.csv").read_text()
    assert "RUNNING" not in statuses(store)

    # Not retried while unchanged; retried once its content changes (here: the real rows arrive).
    code, out, _ = other.run(capsys)
    assert code == 0 and "nothing new" in out
    tiny_frame.iloc[CUTS[2] : CUTS[3]].to_csv(other.input / "part1b.csv", index=False)
    code, out, err = other.run(capsys)
    assert code == 0, err
    assert other.rows_accounted() == CUTS[3] and "part1b.csv" not in (other.state / "quarantine.csv").read_text()


def test_run_config_sets_reading_and_event_settings_of_an_existing_model(tmp_path, tiny_frame, store, run_config, capsys):
    run_config.write_text(run_config.read_text() + "ingest: {decimal: ','}\nevents: {min_event_rows: 100000}\n")
    job = Job(tmp_path, store, run_config, "cfg")
    tiny_frame.to_csv(job.input / "all.csv", index=False, sep=";", decimal=",")
    code, _, err = job.run(capsys)
    assert code == 0, err
    scores = job.scores()
    assert scores["score"].notna().sum() == len(tiny_frame) - 7  # read with the decimal comma
    assert scores["anomaly"].sum() == 0 and len(job.anomalies()) == 0  # no run is 100000 rows long


def test_run_config_scoring_settings_other_than_batch_size_keep_the_models_and_are_warned_about(
    tmp_path, tiny_frame, store, run_config, capsys, caplog
):
    """The threshold was calibrated under the model's scoring: only batch_size may change."""
    plain = Job(tmp_path, store, run_config, "plain")
    tiny_frame.to_csv(plain.input / "all.csv", index=False)
    assert plain.run(capsys)[0] == 0
    changed = tmp_path / "scoring.yaml"
    changed.write_text(run_config.read_text() + "scoring: {combine: mean, offset_weight: 0.0, batch_size: 7}\n")
    job = Job(tmp_path, store, changed, "scoring")
    tiny_frame.to_csv(job.input / "all.csv", index=False)
    code, _, err = job.run(capsys)
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if "does not apply" in r.getMessage()]
    assert len(warned) == 2 and "scoring.combine=mean" in warned[0] and "scoring.offset_weight=0.0" in warned[1]
    np.testing.assert_allclose(job.scores()["score"], plain.scores()["score"], rtol=1e-5, equal_nan=True)


def test_retrain_without_a_config_reads_the_batch_with_the_champions_settings(
    tmp_path, tiny_frame, tracking_uri, run_config, capsys
):
    """The champion was trained on ';' files with decimal commas; a --retrain without --config keeps reading them so."""
    run_config.write_text(run_config.read_text() + "ingest: {decimal: ','}\n")
    job = Job(tmp_path, tracking_uri, run_config, "dec")
    tiny_frame.iloc[: CUTS[2]].to_csv(job.input / "part0.csv", index=False, sep=";", decimal=",")
    code, out, err = job.run(capsys)
    assert code == 0 and "trained pump version 1" in out, err
    tiny_frame.iloc[CUTS[2] :].to_csv(job.input / "part1.csv", index=False, sep=";", decimal=",")
    args = job.args("--retrain")
    at = args.index("--config")
    code = main(args[:at] + args[at + 2 :])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "trained pump version 2" in out and "with model version 1" in out
    scores = pd.read_csv(job.folders()[-1] / "scores.csv")
    assert scores["status"].isna().all() and scores["score"].notna().all()  # every value read as a number


@pytest.mark.parametrize(
    "content, what",
    [
        ("{not json", "not readable as JSON"),
        ('{"format": 7}', "state format 7"),
        ('{"format": 1, "files": [], "quarantined": {}, "carry": null, "runs": []}', "not a valid state"),
        ('{"format": 1, "files": {}, "quarantined": {}, "carry": {"sensors": 3}, "runs": []}', "not a valid state ('carry'"),
    ],
    ids=["not_json", "other_format", "files_not_a_mapping", "carry_edited"],
)
def test_a_corrupt_state_file_exits_2_naming_it_and_changes_nothing(
    tmp_path, tiny_frame, store, run_config, capsys, content, what
):
    job = Job(tmp_path, store, run_config, "corrupt")
    write_parts(tiny_frame, job.input, 1)
    assert job.run(capsys)[0] == 0
    write_parts(tiny_frame, job.input, 2)
    state_file = job.state / "state.json"
    state_file.write_text(content)

    def snapshot() -> dict[str, bytes]:
        return {str(p): p.read_bytes() for folder in (job.state, job.out) for p in sorted(folder.rglob("*")) if p.is_file()}

    before = snapshot()
    code, _, err = job.run(capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    assert str(state_file) in errors[0] and what in errors[0]
    assert snapshot() == before
