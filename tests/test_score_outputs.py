"""The per-row scores table in Parquet (``score --format parquet``) holds exactly what scores.csv holds."""

import pandas as pd
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from pipeline.jobs.score import score_job
from pipeline.reports.tables import scores_schema


def test_parquet_scores_equal_the_csv_scores(tmp_path, store, trained_store):
    csv_out = score_job([trained_store.csv], tmp_path / "csv", "pump", store)
    parquet_out = score_job([trained_store.csv], tmp_path / "parquet", "pump", store, output_format="parquet")
    assert not (tmp_path / "parquet" / "scores.csv").exists()
    schema = pq.read_schema(tmp_path / "parquet" / "scores.parquet")
    sensors = [name.removeprefix("contrib_") for name in schema.names if name.startswith("contrib_")]
    assert schema.equals(scores_schema(sensors))

    returned = pq.read_table(tmp_path / "parquet" / "scores.parquet").to_pandas()
    options = pa_csv.ConvertOptions(column_types=scores_schema(sensors), strings_can_be_null=True)
    expected = pa_csv.read_csv(tmp_path / "csv" / "scores.csv", convert_options=options).to_pandas()
    assert len(returned) == len(expected) == csv_out.rows_in
    pd.testing.assert_frame_equal(returned, expected)
    assert (parquet_out.rows_flagged, parquet_out.events) == (csv_out.rows_flagged, csv_out.events)
    assert (tmp_path / "parquet" / "anomalies.csv").read_text().count("\n") == (
        tmp_path / "csv" / "anomalies.csv"
    ).read_text().count("\n")
