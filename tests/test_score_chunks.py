"""``score`` a chunk at a time gives exactly what one pass over all rows gives (``pipeline.jobs.score_stream``)."""

import json

import numpy as np
import pandas as pd
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from pipeline.jobs.score import score_job
from pipeline.reports.tables import scores_schema


@pytest.fixture(scope="module")
def messy_files(tmp_path_factory, tiny_frame):
    """The tiny day in two files, with what chunk edges must not change: a gap, set-aside rows
    (text in a sensor, a duplicate row), short missing runs that are filled, and the faults' events."""
    frame = tiny_frame.copy()
    frame = frame.drop(index=range(600, 640)).reset_index(drop=True)  # a 40-minute gap
    frame = frame.astype({"vibration_rms": object})
    frame.loc[300, "vibration_rms"] = "sensor fault"
    frame.loc[[410, 411], "discharge_pressure"] = np.nan  # filled (max_fill_rows)
    frame.loc[1000, "suction_pressure"] = np.nan
    frame = pd.concat([frame.iloc[:701], frame.iloc[[700]], frame.iloc[701:]], ignore_index=True)  # a duplicate row
    folder = tmp_path_factory.mktemp("messy")
    first, second = folder / "a_first.csv", folder / "b_second.csv"
    frame.iloc[:900].to_csv(first, index=False)
    frame.iloc[900:].to_csv(second, index=False)
    return first, second


def _outputs(out):
    sensors = [c.removeprefix("contrib_") for c in pd.read_csv(out / "scores.csv", nrows=0).columns if c.startswith("contrib_")]
    options = pa_csv.ConvertOptions(column_types=scores_schema(sensors), strings_can_be_null=True)
    scores = pa_csv.read_csv(out / "scores.csv", convert_options=options).to_pandas()
    events = pd.read_csv(out / "anomalies.csv").drop(columns=["run_id"])
    quality = json.loads((out / "quality.json").read_text())
    validated = pq.read_table(out / "validated.parquet").to_pandas()
    return scores, events, quality, validated


def _same_report(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _same_report(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12, nan_ok=True), path
    else:
        assert a == b, path


@pytest.mark.parametrize("chunk_rows", [20, 350])
def test_chunked_score_equals_one_pass(tmp_path, store, messy_files, chunk_rows):
    one = score_job(list(messy_files), tmp_path / "one", "pump", store, chunk_rows=0)
    chunked = score_job(list(messy_files), tmp_path / "chunked", "pump", store, chunk_rows=chunk_rows)
    # Chunks of chunk_rows to 2 x chunk_rows rows: at 20 they cut windows (8 rows), events, the gap.
    assert one.chunks == 1 and chunked.chunks >= 1400 // (2 * chunk_rows + 1)
    assert (chunked.rows_in, chunked.rows_scored, chunked.rows_flagged, chunked.events) == (
        one.rows_in,
        one.rows_scored,
        one.rows_flagged,
        one.events,
    )
    scores, events, quality, validated = _outputs(tmp_path / "chunked")
    scores_one, events_one, quality_one, validated_one = _outputs(tmp_path / "one")
    # One row per input row, set-aside rows in their place, the same flags and event ids.
    assert len(scores) == one.rows_in and scores["status"].notna().sum() >= 2
    exact = ["source", "timestamp", "threshold", "anomaly", "event_id", "status"]
    pd.testing.assert_frame_equal(scores[exact], scores_one[exact])
    # Windows fall in other prediction batches: float32 rounding (a score of 700 has steps of 6e-5).
    np.testing.assert_allclose(scores["score"], scores_one["score"], rtol=1e-6, atol=1e-6)
    shares = [c for c in scores.columns if c.startswith("contrib_")]
    np.testing.assert_allclose(scores[shares].to_numpy(float), scores_one[shares].to_numpy(float), rtol=0, atol=1e-6)
    assert one.events >= 2
    pd.testing.assert_frame_equal(events, events_one, rtol=1e-6)
    assert events["n_rows"].max() > 2 * 20  # an event crossed chunk edges (at chunk_rows 20)
    _same_report(quality, quality_one)
    # The 40-minute gap and the hole the set-aside text row leaves; three filled rows.
    assert quality["time"]["gaps_beyond_interval"] == 2 and quality["rows"]["rows_repaired"] == 3
    pd.testing.assert_frame_equal(validated, validated_one)


def test_chunks_out_of_time_order_are_scored_in_one_piece(tmp_path, store, messy_files):
    first, second = messy_files
    score_job([second, first], tmp_path / "one", "pump", store, chunk_rows=0)
    fell_back = score_job([second, first], tmp_path / "chunked", "pump", store, chunk_rows=200)
    assert fell_back.chunks == 1  # the second file's rows come before the first's: sorted as one table
    scores, events, _, _ = _outputs(tmp_path / "chunked")
    scores_one, events_one, _, _ = _outputs(tmp_path / "one")
    pd.testing.assert_frame_equal(scores, scores_one)
    pd.testing.assert_frame_equal(events, events_one)
