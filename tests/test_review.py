"""Operators' verdicts: kept in the tracking store, checked before anything is written, moving
exactly the reviewed rows at training, judged by the promotion gate, and recognising a repeat of a
reviewed false alarm."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from pipeline.config import PipelineConfig, ReviewConfig
from pipeline.detector.fitting import weigh_reviewed, window_context
from pipeline.detector.reviews import annotate, known_false_alarms, latest_verdicts, review_figures
from pipeline.errors import InputError, PromotionRefused
from pipeline.evaluation.gate import Gate, GateDecision, with_reviews
from pipeline.jobs.promote import promote_job
from pipeline.jobs.review import review_job
from pipeline.jobs.run_outputs import annotate_cumulative
from pipeline.jobs.train import train_job
from pipeline.store.names import PROMOTION_ARTIFACT
from pipeline.tracking import Tracker
from tests.conftest import tiny_config


def _events(uri: str) -> pd.DataFrame:
    return Tracker(uri, "pump").event_catalogue("pump").sort_values("start").reset_index(drop=True)


def _review_runs(uri: str) -> list:
    tracker = Tracker(uri, "pump")
    return tracker.client.search_runs([tracker.experiment_id], "tags.stage = 'review'")


def test_verdicts_round_trip_through_the_store(store, trained_store, tmp_path):
    events = _events(store)
    assert len(events) >= 3 and set(events["scoring_run_id"]) == {trained_store.score_run_id}
    first, second, third = (int(e) for e in events["event_id"][:3])
    review_job("pump", store, event=first, verdict="confirmed", note="seal leak", by="ann")
    sheet = tmp_path / "anomalies.csv"
    pd.DataFrame({"event_id": [second, third], "verdict": ["false_alarm", "unsure"], "note": ["valve test", ""]}).to_csv(
        sheet, index=False
    )
    review_job("pump", store, reviews_file=sheet, by="bo")

    stored = latest_verdicts(Tracker(store, "pump").stored_reviews("pump")).set_index("event_id")
    assert stored.loc[[first, second, third], "verdict"].tolist() == ["confirmed", "false_alarm", "unsure"]
    assert stored.loc[first, "note"] == "seal leak" and stored.loc[first, "reviewed_by"] == "ann"
    assert stored.loc[second, "reviewed_by"] == "bo"
    expected = events.set_index("event_id")
    assert pd.Timestamp(stored.loc[second, "start"]) == pd.Timestamp(expected.loc[second, "start"])
    assert pd.Timestamp(stored.loc[second, "end"]) == pd.Timestamp(expected.loc[second, "end"])
    assert stored.loc[second, "top_sensors"] == expected.loc[second, "top_sensors"]
    tags = MlflowClient(store).get_run(trained_store.score_run_id).data.tags
    assert tags[f"verdict.event_{first}"].startswith("confirmed by ann")
    assert tags[f"verdict.event_{second}"].startswith("false_alarm by bo")

    again = review_job("pump", store, event=first, verdict="unsure")  # a later verdict replaces the earlier one
    assert again.notes == [again.notes[0]] and f"event {first}: was confirmed" in again.notes[0]
    stored = latest_verdicts(Tracker(store, "pump").stored_reviews("pump")).set_index("event_id")
    assert stored.loc[first, "verdict"] == "unsure"
    runs = len(_review_runs(store))
    assert review_job("pump", store, reviews_file=sheet, by="bo").run_id is None  # the same sheet again: nothing new
    assert len(_review_runs(store)) == runs


def test_duplicate_verdicts_in_one_file_the_latest_wins_and_is_said(store, tmp_path):
    event = int(_events(store)["event_id"][0])
    sheet = tmp_path / "reviews.csv"
    sheet.write_text(f"event_id,verdict,note\n{event},confirmed,first look\n{event},false_alarm,second look\n")

    outcome = review_job("pump", store, reviews_file=sheet)

    assert outcome.notes == [f"event {event}: 2 verdicts (confirmed, false_alarm); the latest, false_alarm, wins"]
    assert outcome.counts == {"confirmed": 0, "false_alarm": 1, "unsure": 0}
    stored = Tracker(store, "pump").stored_reviews("pump")
    assert stored["verdict"].tolist() == ["false_alarm"] and stored["note"].tolist() == ["second look"]


BAD_FILES = {
    "unknown event": ("event_id,verdict\n1,confirmed\n999,false_alarm\n", r"line 3: event 999: no such event"),
    "wrong verdict": ("event_id,verdict\n1,confirmed\n2,maybe\n", r"line 3: verdict 'maybe' is not one of confirmed"),
    "missing column": ("event_id,note\n1,looks fine\n", r"no 'verdict' column"),
    "not an event id": ("event_id,verdict\nfirst,confirmed\n", r"line 2: event_id 'first' is not an event id"),
    "empty file": ("", r"not a readable CSV"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_review_file_is_refused_and_nothing_is_written(case, store, trained_store, tmp_path):
    text, message = BAD_FILES[case]
    sheet = tmp_path / "reviews.csv"
    sheet.write_text(text)
    with pytest.raises(InputError, match=message):
        review_job("pump", store, reviews_file=sheet)
    assert _review_runs(store) == []
    assert not [k for k in MlflowClient(store).get_run(trained_store.score_run_id).data.tags if k.startswith("verdict.")]


def test_bad_review_flags_exit_2_with_one_line(store, capsys):
    assert main(["review", "--model-name", "pump", "--event", "1", "--verdict", "nope", "--tracking-uri", store]) == 2
    assert main(["review", "--model-name", "pump", "--event", "999", "--verdict", "confirmed", "--tracking-uri", store]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2] == "error: review: verdict 'nope' is not one of confirmed, false_alarm, unsure"
    assert lines[-1] == "error: event 999: no such event among the model's scored events"
    assert _review_runs(store) == []


@pytest.fixture(scope="module")
def retrained(tmp_path_factory, trained_store):
    """The trained store with the first event (the step, 14:00) confirmed and the largest later one
    a false alarm, then retrained with the normal period reaching 18:00 (so the step lies inside it)."""
    root = tmp_path_factory.mktemp("retrained")
    shutil.copy(trained_store.root / "mlflow.db", root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    events = _events(uri)
    confirmed = events.iloc[0]
    late = events[pd.to_datetime(events["start"]) >= pd.Timestamp("2026-10-01 18:00", tz="UTC")]
    false_alarm = late.loc[late["n_rows"].idxmax()]
    review_job("pump", uri, event=int(confirmed["event_id"]), verdict="confirmed")
    review_job("pump", uri, event=int(false_alarm["event_id"]), verdict="false_alarm")
    config = tiny_config().model_copy(
        update={"training": tiny_config().training.model_copy(update={"normal_until": "2026-10-01 18:00"})}
    )
    trained = train_job([trained_store.csv], config, "pump", uri)
    return uri, trained, confirmed, false_alarm


def test_retraining_with_verdicts_moves_exactly_the_reviewed_rows(retrained, trained_store):
    uri, trained, confirmed, false_alarm = retrained
    times = pd.to_datetime(pd.read_csv(trained_store.csv)["timestamp"]).dt.tz_localize("UTC")

    def rows(event) -> int:
        return int(((times >= pd.Timestamp(event["start"])) & (times <= pd.Timestamp(event["end"]))).sum())

    metrics = MlflowClient(uri).get_run(trained.run_id).data.metrics
    assert metrics["review_rows_out_of_normal"] == rows(confirmed) == confirmed["n_rows"]
    assert metrics["review_rows_to_normal"] == rows(false_alarm) > 0
    normal_before = int((times < pd.Timestamp("2026-10-01 18:00", tz="UTC")).sum())
    context = trained.rows["review_context_rows"]  # the 7 rows before the false alarm its first window reached over
    assert context == tiny_config().features.window_size - 1
    assert trained.rows["normal_rows"] == normal_before - rows(confirmed) + rows(false_alarm) + context
    assert metrics["review_context_rows"] == context


def test_the_promotion_gate_judges_the_reviewed_periods(retrained, trained_store, tmp_path):
    uri, trained, _, _ = retrained
    try:
        outcome = promote_job("pump", None, uri, PipelineConfig(), inputs=[trained_store.csv])
        promoted = outcome.promoted
    except PromotionRefused:
        promoted = False
    tracker = Tracker(uri, "pump")
    run = tracker.latest_run("promote", "pump")
    record = json.loads(Path(tracker.client.download_artifacts(run.info.run_id, PROMOTION_ARTIFACT, str(tmp_path))).read_text())
    figures = record["figures"]
    assert figures["challenger_confirmed_reviewed"] == figures["champion_confirmed_reviewed"] == 1
    assert figures["challenger_false_alarm_reviewed"] == 1 and figures["champion_false_alarm_rows_flagged"] > 0
    assert "Verdicts: the challenger flags" in record["reason"]
    misses = figures["challenger_confirmed_flagged"] < 1
    fewer = figures["challenger_false_alarm_rows_flagged"] < figures["champion_false_alarm_rows_flagged"]
    assert promoted == (not misses and fewer and figures["challenger_alarm_rate"] <= 0.05)
    assert run.data.metrics["challenger_confirmed_flagged"] == figures["challenger_confirmed_flagged"]


def test_the_gate_with_verdicts_on_hand_made_figures():
    timestamps = pd.Series(pd.date_range("2026-01-01", periods=10, freq="min", tz="UTC"))
    reviews = pd.DataFrame(
        {
            "verdict": ["confirmed", "false_alarm", "confirmed"],
            "start": [timestamps[1], timestamps[5], pd.Timestamp("2027-01-01", tz="UTC")],  # the last: not in the data
            "end": [timestamps[2], timestamps[8], pd.Timestamp("2027-01-02", tz="UTC")],
        }
    )
    champion = review_figures(np.array([0, 1, 1, 0, 0, 1, 1, 1, 0, 0], bool), timestamps, reviews)
    good = review_figures(np.array([0, 0, 1, 0, 0, 0, 1, 0, 0, 0], bool), timestamps, reviews)
    blind = review_figures(np.zeros(10, bool), timestamps, reviews)
    assert champion == {"confirmed_reviewed": 1, "confirmed_flagged": 1, "false_alarm_reviewed": 1, "false_alarm_rows_flagged": 3}
    assert good["false_alarm_rows_flagged"] == 1 and blind["confirmed_flagged"] == 0

    passed = GateDecision(Gate.ALARM_RATE, True, "within budget.")
    assert with_reviews(passed, good, champion).promoted
    missed = with_reviews(passed, blind, champion)
    assert not missed.promoted and "misses 1 confirmed event(s)" in missed.reason
    same = with_reviews(passed, champion, champion)
    assert not same.promoted and "does not raise fewer alarms" in same.reason
    assert not with_reviews(GateDecision(Gate.ALARM_RATE, False, "over budget."), good, champion).promoted
    nothing = dict.fromkeys(champion, 0.0)
    assert with_reviews(passed, nothing, nothing) == passed  # no reviewed period in the data: as before


def _event(asset, event_id, top, peak, mean, start="2026-10-01T10:00:00Z"):
    return {"asset": asset, "event_id": event_id, "top_sensors": top, "peak_score": peak, "mean_score": mean, "start": start}


def test_a_repeat_of_a_reviewed_false_alarm_is_marked_not_hidden(tmp_path):
    reviewed = _event("p1", 1, "flow (50%); speed (30%); vibration (10%)", 20.0, 12.0)
    reviews = pd.DataFrame(
        [{**reviewed, "verdict": "false_alarm", "note": "pump swap", "reviewed_by": "ann", "reviewed_at": "x"}]
    )
    events = pd.DataFrame(
        [
            reviewed,
            _event("p1", 5, "speed (45%); flow (35%); current (5%)", 25.0, 10.0, "2026-10-08T10:00:00Z"),  # a repeat
            _event("p1", 6, "flow (50%); current (30%)", 20.0, 12.0),  # other sensors
            _event("p1", 7, "flow (50%); speed (30%)", 100.0, 12.0),  # a far higher peak
            _event("p2", 8, "flow (50%); speed (30%)", 20.0, 12.0),  # another asset
        ]
    )
    rule = ReviewConfig()
    assert known_false_alarms(events, reviews, rule).tolist() == [pd.NA, 1, pd.NA, pd.NA, pd.NA]

    path = tmp_path / "anomalies.csv"
    events.to_csv(path, index=False)
    annotate_cumulative(tmp_path, reviews, rule)
    written = pd.read_csv(path)
    assert len(written) == len(events)  # nothing hidden
    assert written["likely_known_false_alarm"].tolist() == [0, 1, 0, 0, 0]
    assert written["like_event"].tolist()[1] == 1
    assert written["verdict"].tolist()[0] == "false_alarm" and written["verdict_note"].tolist()[0] == "pump swap"
    assert written["verdict"].isna().tolist()[1:] == [True] * 4
    assert list(annotate(events, reviews.iloc[:0], rule)["likely_known_false_alarm"]) == [0] * 5


def test_reviewed_false_alarm_windows_weigh_their_share_of_training():
    starts = np.arange(0, 100)  # 100 windows of 4 rows over 103 normal rows
    reviewed = np.zeros(103, dtype=bool)
    reviewed[90:95] = True  # windows ending in rows 90..94: starts 87..91
    returned = weigh_reviewed(starts, reviewed, 4, 0.2)
    counts = np.bincount(returned, minlength=100)
    assert (counts[87:92] == 5).all() and returned.size == 95 + 5 * 5  # ceil(0.2 * 95 / (0.8 * 5)) = 5 uses each
    assert counts[87:92].sum() / returned.size >= 0.2 and np.isin(counts, [1, 5]).all()
    assert np.array_equal(weigh_reviewed(starts, reviewed, 4, 0.0), starts)
    assert np.array_equal(weigh_reviewed(starts, np.zeros(103, dtype=bool), 4, 0.2), starts)
    rows = np.zeros(12, dtype=bool)
    rows[6:8] = True
    assert window_context(rows, 4).tolist() == [False] * 3 + [True] * 4 + [False] * 5
