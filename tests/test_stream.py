"""Carry-over between batches: cutting a stream anywhere gives the events of one run."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import EventsConfig
from pipeline.detector.events import assign_events, decide_events
from pipeline.detector.stream import global_segments


def batched_events(score: np.ndarray, groups: np.ndarray, cuts: list[int], config: EventsConfig) -> tuple[np.ndarray, int]:
    """Events of ``score`` processed batch by batch, as the scheduled run does; returns the ids
    of the rows written so far (-1 for rows still held back) and the number held back."""
    out = np.full(score.size, -1, dtype=np.int64)
    pending: list[int] = []
    open_id = open_segment = None
    next_id = 1
    bounds = [0, *sorted(set(cuts)), score.size]
    for lo, hi in itertools.pairwise(bounds):
        rows = np.asarray(pending + list(range(lo, hi)), dtype=np.int64)
        decision = decide_events(score[rows], groups[rows], 1.0, config, open_id, open_segment, next_id)
        out[rows[: decision.n_decided]] = decision.event[: decision.n_decided]
        pending = rows[decision.n_decided :].tolist()
        open_id, next_id = decision.open_event_id, decision.next_event_id
        open_segment = int(groups[rows[-1]]) if rows.size and open_id is not None else open_segment
    return out, len(pending)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.0, 0.0, 0.7, 5.0, 5.0, np.nan]), min_size=1, max_size=60),
    gaps=st.lists(st.integers(0, 59), max_size=3),
    cuts=st.lists(st.integers(0, 60), max_size=6),
    min_rows=st.integers(1, 4),
    merge=st.integers(0, 3),
    release=st.sampled_from([(1.0, 1), (0.5, 1), (0.5, 3), (1.0, 2)]),
)
def test_any_cut_gives_the_events_of_one_run(values, gaps, cuts, min_rows, merge, release):
    score = np.asarray(values)
    groups = np.zeros(score.size, dtype=np.int64)
    for g in gaps:
        groups[g:] += 1
    config = EventsConfig(min_event_rows=min_rows, merge_gap_rows=merge, release_ratio=release[0], release_rows=release[1])
    expected = assign_events(score, 1.0, groups, config)
    returned, held = batched_events(score, groups, [c for c in cuts if c < score.size], config)
    written = returned >= 0
    assert held <= min_rows - 1 + max(merge, release[1] - 1)
    assert written[: score.size - held].all() and not written[score.size - held :].any()
    np.testing.assert_array_equal(returned[written], expected[written])
    # The rows held back at the end are the same as one run holds back: flags equal throughout.
    whole, whole_held = batched_events(score, groups, [], config)
    assert whole_held == held
    np.testing.assert_array_equal(whole, returned)


def test_event_in_progress_keeps_its_id_across_a_cut():
    score = np.array([0, 5, 5, 5, 5, 5, 0, 0, 5, 5, 5], dtype=float)
    groups = np.zeros(score.size, dtype=np.int64)
    config = EventsConfig(min_event_rows=3)
    returned, held = batched_events(score, groups, [3, 8], config)
    expected = np.array([0, 1, 1, 1, 1, 1, 0, 0, 2, 2, 2])
    np.testing.assert_array_equal(returned, expected)
    assert held == 0


def test_short_run_at_a_cut_is_held_back_then_decided():
    score = np.array([0, 0, 5, 5, 5, 0], dtype=float)
    config = EventsConfig(min_event_rows=3)
    groups = np.zeros(6, dtype=np.int64)
    first = decide_events(score[:4], groups[:4], 1.0, config, None, None, 1)
    assert first.n_decided == 2  # rows 2-3 are above the threshold but only 2 long: undecided
    second = decide_events(
        score[2:],
        groups[2:],
        1.0,
        config,
        first.open_event_id,
        None,
        first.next_event_id,
    )
    np.testing.assert_array_equal(second.event, [1, 1, 1, 0])


def test_global_segments_continue_over_the_context():
    # context rows are segment 0..1 in the batch's own numbering; the last context row is in 1
    returned = global_segments(np.array([0, 1, 1, 1, 2]), 2, last_segment=7)
    np.testing.assert_array_equal(returned, [7, 7, 8])
    np.testing.assert_array_equal(global_segments(np.array([0, 0, 1]), 0, None), [0, 0, 1])


def _tiny_bundle(table, sensors, window, events):
    """A real (untrained) conv autoencoder as its NumPy twin, with a threshold that flags some rows."""
    import tempfile
    from pathlib import Path

    from pipeline.config import PipelineConfig
    from pipeline.detector.bundle import ModelBundle, load_model
    from pipeline.detector.threshold import Threshold
    from pipeline.features.scaler import fit_scaler
    from pipeline.model.autoencoder import build_autoencoder

    config = PipelineConfig.model_validate(
        {
            "features": {"window_size": window},
            "model": {"filters": [4], "latent_dim": 2},
            "events": events,
            "scoring": {"batch_size": 16},
        }
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        build_autoencoder(config.model, window, len(sensors)).save(path)
        model = load_model(path)
    scaler = fit_scaler(table[sensors].to_numpy()[:100], sensors)
    bundle = ModelBundle(model, scaler, Threshold(0.0, "fixed", {}, 0, {}), config, "timestamp", 60.0, 180.0)
    from pipeline.detector.scoring import score_rows

    score = score_rows(bundle, table).score
    value = float(np.nanquantile(score, 0.8))
    bundle.threshold = Threshold(value, "fixed", {}, 0, {})
    return bundle


def test_the_batch_scorer_gives_the_scores_and_events_of_one_pass_whatever_the_cuts():
    """The real wiring (``stream.advance`` with a carry through its JSON form), cut anywhere."""
    import json

    import pandas as pd

    from pipeline.detector.scoring import flag_events, score_rows
    from pipeline.detector.stream import Carry, advance

    rng = np.random.default_rng(5)
    sensors = ["a", "b", "c"]
    n = 320
    times = pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC")
    times = times.where(np.arange(n) < 200, times + pd.Timedelta(minutes=30))  # a gap longer than max_gap
    values = rng.normal(size=(n, 3))
    values[150:170, 1] += 6.0  # a fault
    table = pd.DataFrame({"source": "s.csv", "row": np.arange(n), "timestamp": times, **dict(zip(sensors, values.T))})
    events = {"min_event_rows": 2, "merge_gap_rows": 2}
    bundle = _tiny_bundle(table, sensors, 8, events)
    whole = score_rows(bundle, table)
    expected_event = flag_events(bundle, whole)
    assert (expected_event > 0).any() and expected_event.max() > 1  # the case has events to carry over

    for cuts in ([1, 7, 8, 160, 161, 162, 199, 200, 201], [100], [155, 300]):
        carry = Carry.empty(sensors)
        score = np.full(n, np.nan)
        event = np.full(n, -1)
        for lo, hi in itertools.pairwise([0, *cuts, n]):
            step = advance(bundle, table.iloc[lo:hi].reset_index(drop=True), carry, bundle.config.events)
            score[step.row] = step.score
            event[step.row] = step.event
            carry = Carry.from_dict(json.loads(json.dumps(step.carry.to_dict())))  # as state.json stores it
        written = event >= 0
        assert written[: n - step.rows_held].all() and not written[n - step.rows_held :].any()
        np.testing.assert_allclose(score[written], whole.score[written], rtol=1e-6, equal_nan=True)
        np.testing.assert_array_equal(event[written], expected_event[written])
