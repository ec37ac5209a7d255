import numpy as np
import pandas as pd

from pipeline.config import EventsConfig
from pipeline.data.ingest import IngestResult
from pipeline.detector.events import assign_events
from pipeline.detector.scoring import RowScores
from pipeline.reports.tables import scores_table, summarise_events, top_sensors

NAN = np.nan


def test_events_drop_short_blips():
    score = np.array([0, 5, 0, 5, 5, 5, 0, 0], dtype=float)
    returned = assign_events(score, 1.0, np.zeros(8), EventsConfig(min_event_rows=2))
    expected = np.array([0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(returned, expected)


def test_events_merge_when_close():
    score = np.array([5, 5, 0, 5, 5, 0, 0, 0, 5, 5], dtype=float)
    returned = assign_events(score, 1.0, np.zeros(10), EventsConfig(min_event_rows=2, merge_gap_rows=1))
    expected = np.array([1, 1, 1, 1, 1, 0, 0, 0, 2, 2])
    np.testing.assert_array_equal(returned, expected)


def test_events_never_cross_a_group_and_skip_unscored_rows():
    score = np.array([NAN, 5, 5, NAN, 5, 0, 5], dtype=float)  # a new group starts unscored
    groups = np.array([0, 0, 0, 1, 1, 1, 1])
    returned = assign_events(score, 1.0, groups, EventsConfig(min_event_rows=1, merge_gap_rows=1))
    expected = np.array([0, 1, 1, 0, 2, 2, 2])
    np.testing.assert_array_equal(returned, expected)


def test_hysteresis_holds_an_event_until_the_score_stays_below_the_release_level():
    # threshold 1.0, release level 0.5 x 1.0, release after 2 rows at or below it.
    score = np.array([0, 2, 2, 0.8, 0.3, 0.9, 0.3, 0.2, 0.8, 2, 0.1, 0.1], dtype=float)
    config = EventsConfig(min_event_rows=2, release_ratio=0.5, release_rows=2)
    returned = assign_events(score, 1.0, np.zeros(12), config)
    # Enter at row 1 (two rows above 1.0); 0.8 keeps it, the one-row dip at 0.3 joins, 0.9 keeps it,
    # two rows <= 0.5 (6, 7) release it after row 5. Row 8 (0.8) is above release but below the threshold:
    # no new event; row 9 alone is shorter than min_event_rows.
    expected = np.array([0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(returned, expected)
    # Without hysteresis the event ends with the last row above the threshold.
    plain = assign_events(score, 1.0, np.zeros(12), EventsConfig(min_event_rows=2, release_ratio=1.0))
    np.testing.assert_array_equal(plain, np.array([0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]))


def test_hysteresis_joins_kept_runs_through_a_short_dip_but_not_across_a_group():
    score = np.array([2, 2, 0.6, 2, 2, 0.6, 2, 2], dtype=float)
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    config = EventsConfig(min_event_rows=2, release_ratio=0.5, release_rows=1)
    returned = assign_events(score, 1.0, groups, config)
    expected = np.array([1, 1, 1, 1, 1, 0, 2, 2])  # row 2 (above 0.5) joins; row 5 starts a new group
    np.testing.assert_array_equal(returned, expected)


def test_top_sensors_lists_largest_shares():
    returned = top_sensors(np.array([0.1, 0.6, 0.3]), ["a", "b", "c"], k=2)
    expected = "b (60%); c (30%)"
    assert returned == expected


def _result():
    table = pd.DataFrame(
        {
            "source": ["f.csv"] * 4,
            "row": [0, 2, 3, 4],  # row 1 was set aside
            "timestamp": pd.to_datetime(
                ["2026-01-01 00:00", "2026-01-01 00:02", "2026-01-01 00:03", "2026-01-01 00:04"], utc=True
            ),
            "a": [1.0, 2.0, 3.0, 4.0],
            "b": [1.0, 1.0, 1.0, 1.0],
        }
    )
    rejected = pd.DataFrame(
        {"source": ["f.csv"], "row": [1], "timestamp": ["2026-01-01 00:01"], "status": ["duplicate of f.csv row 1"]}
    )
    return IngestResult(table=table, rejected=rejected, sensors=["a", "b"], timestamp_column="t")


def test_scores_table_keeps_every_input_row_in_order():
    result = _result()
    rows = RowScores(
        score=np.array([NAN, 0.5, 3.0, 4.0], dtype=np.float32),
        contributions=np.array([[NAN, NAN], [0.5, 0.5], [0.75, 0.25], [1.0, 0.0]], dtype=np.float32),
        segment=np.zeros(4, dtype=np.int64),
    )
    event = np.array([0, 0, 1, 1])
    returned = scores_table(result, rows, event, 1.0, ["f.csv"]).to_pandas()
    assert list(returned.columns) == [
        "source",
        "timestamp",
        "score",
        "threshold",
        "anomaly",
        "event_id",
        "contrib_a",
        "contrib_b",
        "status",
    ]
    assert returned["timestamp"].tolist() == [
        "2026-01-01T00:00:00Z",
        "2026-01-01 00:01",
        "2026-01-01T00:02:00Z",
        "2026-01-01T00:03:00Z",
        "2026-01-01T00:04:00Z",
    ]
    assert returned["anomaly"].tolist() == [0, 0, 0, 1, 1]
    assert returned["event_id"].isna().tolist() == [True, True, True, False, False]
    assert returned["status"].tolist()[1] == "duplicate of f.csv row 1"
    assert returned["status"].isna().sum() == 4
    assert np.isnan(returned["score"][1]) and np.isnan(returned["score"][0])

    events = summarise_events(result.table, rows, event, 1.0, ["a", "b"], "7", "run1")
    assert len(events) == 1
    row = events.iloc[0]
    assert (row["start"], row["end"], row["n_rows"]) == ("2026-01-01T00:03:00Z", "2026-01-01T00:04:00Z", 2)
    assert row["peak_score"] == 4.0 and row["mean_score"] == 3.5
    assert row["top_sensors"].startswith("a (88%)")
    assert (row["model_version"], row["run_id"]) == ("7", "run1")


def test_reports_are_written_readable_by_others(tmp_path):
    import os

    import pyarrow as pa

    from pipeline.store.atomic import write_csv

    old = os.umask(0o022)
    try:
        path = write_csv(pa.table({"a": [1]}), tmp_path / "r.csv")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_score_plot_points_keep_every_bins_peak():
    from pipeline.reports.plots import MAX_POINTS, peak_preserving

    n = 5 * MAX_POINTS + 3
    score = np.linspace(0.0, 1.0, n, dtype=np.float32)
    score[12_345] = 50.0  # a one-row spike
    score[-2:] = np.nan  # an all-NaN last bin keeps its first row
    times = np.arange(n)
    picked_times, picked = peak_preserving(times, score)
    assert len(picked) <= MAX_POINTS and 50.0 in picked
    # Bins of 6 rows: the one before the last peaks at row n - 3; the last holds only row n - 1 (NaN).
    assert np.all(np.diff(picked_times) > 0) and list(picked_times[-2:]) == [n - 3, n - 1]
    np.testing.assert_array_equal(score[picked_times], picked)
