"""Tests of the data-quality report built from a validated table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import IngestConfig
from pipeline.data.files import discover_files, read_source
from pipeline.data.ingest import IngestResult, validate
from pipeline.data.quality import (
    flatline_runs,
    quality_figures,
    quality_report,
    sampling_interval_seconds,
    set_aside_warnings,
)


def ingest_text(tmp_path: Path, text: str, config: IngestConfig | None = None) -> IngestResult:
    """Write one CSV file and ingest it as loading does."""
    path = tmp_path / "a.csv"
    path.write_text(text, encoding="utf-8")
    config = config or IngestConfig()
    return validate([read_source(name, p, config) for name, p in discover_files([path])], config)


def csv(header: str, seconds: list[int], *columns: list[object]) -> str:
    """A CSV text with a timestamp column at the given seconds after midnight and sensor columns."""
    lines = [header]
    for i, second in enumerate(seconds):
        stamp = pd.Timestamp("2024-01-01") + pd.Timedelta(seconds=second)
        cells = ["" if column[i] is None else str(column[i]) for column in columns]
        lines.append(",".join([stamp.strftime("%Y-%m-%d %H:%M:%S"), *cells]))
    return "\n".join(lines) + "\n"


def test_sampling_interval_is_the_median_step():
    timestamps = pd.Series(
        pd.to_datetime(["2024-01-01 00:00:00", "2024-01-01 00:00:02", "2024-01-01 00:00:04", "2024-01-01 00:00:10"], utc=True)
    )

    returned = sampling_interval_seconds(timestamps)

    assert returned == 2.0


def test_sampling_interval_of_one_row_defaults_to_one_second():
    assert sampling_interval_seconds(pd.Series(pd.to_datetime(["2024-01-01"], utc=True))) == 1.0


@pytest.mark.parametrize(
    "values, min_rows, expected",
    [
        ([1, 2, 3, 3, 3, 3, 4], 4, (1, 4)),  # one run of 4 equal rows
        ([1, 1, 1, 2, 2, 2, 2], 3, (2, 4)),  # two runs long enough
        ([1, 1, 2, 2, 3], 3, (0, 2)),  # runs too short to count
        ([1, 2, 3], 2, (0, 1)),  # no repeats
        ([5], 2, (0, 1)),
    ],
)
def test_flatline_runs(values, min_rows, expected):
    returned = flatline_runs(np.array(values, dtype=float), min_rows)

    assert returned == expected


def test_flat_lined_sensor_is_flagged(tmp_path):
    seconds = list(range(8))
    result = ingest_text(tmp_path, csv("timestamp,a,b", seconds, [1, 2, 3, 3, 3, 3, 3, 4], [1, 2, 3, 4, 5, 6, 7, 8]))

    returned = quality_report(result, flatline_rows=4)

    assert returned["sensors"]["a"]["flatline_runs"] == 1
    assert returned["sensors"]["a"]["longest_flatline_rows"] == 5
    assert returned["sensors"]["a"]["flatlined"] is True
    assert returned["sensors"]["b"]["flatlined"] is False
    assert returned["sensors"]["b"]["longest_flatline_rows"] == 1
    assert quality_figures(returned)["quality.flatlined_sensors"] == 1.0


def test_constant_sensor_is_flagged(tmp_path):
    # 0.1 is not exact in binary: its mean differs from 0.1 by a rounding step and a standard
    # deviation test would call it varying.
    seconds = list(range(7))
    result = ingest_text(tmp_path, csv("timestamp,a,b", seconds, [0.1] * 7, [1, 2, 3, 4, 5, 6, 7]))

    returned = quality_report(result, flatline_rows=60)

    assert returned["sensors"]["a"]["constant"] is True
    assert returned["sensors"]["a"]["flatlined"] is False  # shorter than flatline_rows
    assert returned["sensors"]["b"]["constant"] is False
    assert returned["sensors"]["a"]["min"] == returned["sensors"]["a"]["max"] == 0.1
    assert quality_figures(returned)["quality.constant_sensors"] == 1.0


def test_gaps_beyond_the_sampling_interval_are_counted(tmp_path):
    seconds = [0, 1, 2, 5, 6, 7, 11, 12]
    result = ingest_text(tmp_path, csv("timestamp,a", seconds, [1, 2, 3, 4, 5, 6, 7, 8]))

    returned = quality_report(result, flatline_rows=60)

    assert returned["time"]["sampling_interval_seconds"] == 1.0
    assert returned["time"]["gaps_beyond_interval"] == 2
    assert returned["time"]["longest_gap_seconds"] == 4.0
    assert returned["time"]["start"] == "2024-01-01 00:00:00+00:00"
    assert returned["time"]["end"] == "2024-01-01 00:00:12+00:00"
    assert quality_figures(returned)["quality.gaps_beyond_interval"] == 2.0


def test_missing_share_and_filled_values(tmp_path):
    seconds = list(range(10))
    a = [1, None, 3, 4, None, None, 7, 8, 9, 10]
    result = ingest_text(tmp_path, csv("timestamp,a,b", seconds, a, list(range(10))), IngestConfig(max_fill_rows=2))

    returned = quality_report(result, flatline_rows=60)

    assert returned["sensors"]["a"]["missing_share"] == 0.3
    assert returned["sensors"]["a"]["filled_values"] == 3
    assert returned["sensors"]["b"]["missing_share"] == 0.0
    assert returned["rows"]["rows_repaired"] == 3


def test_quarantine_reasons_are_grouped_by_kind(tmp_path):
    seconds = [0, 1, 2, 3, 3, 4, 4, 5, 6, 7, 8, 9, 10, 11]
    a = [None, 1, 2, 3, 3, 4, 5, 6, "x", 8, 9, 10, 11, 12]
    result = ingest_text(tmp_path, csv("timestamp,a", seconds, a))

    returned = quality_report(result, flatline_rows=60)

    expected = {"conflicting timestamp": 2, "duplicate": 1, "missing value": 1, "unparseable value": 1}
    assert returned["quarantine_reasons"] == expected
    assert returned["time"]["duplicate_timestamps"] == 3
    counts = returned["rows"]
    assert counts["rows_in"] == counts["rows_clean"] + counts["rows_repaired"] + counts["rows_quarantined"]
    assert counts["rows_quarantined"] == 5


def test_report_of_a_clean_file(tmp_path):
    result = ingest_text(tmp_path, csv("timestamp,a,note", [0, 1, 2], [1, 2, 3], ["ok", "ok", "ok"]))

    returned = quality_report(result, flatline_rows=60)

    assert returned["quarantine_reasons"] == {}
    assert returned["sources"] == ["a.csv"]
    assert returned["timestamp_column"] == "timestamp"
    assert returned["ignored_columns"] == ["note"]
    assert returned["rows"]["rows_clean"] == 3
    assert returned["sensors"]["a"] == {
        "missing_share": 0.0,
        "filled_values": 0,
        "held_values": 0,
        "interval_seconds": 1.0,
        "flatline_runs": 0,
        "longest_flatline_rows": 1,
        "flatlined": False,
        "constant": False,
        "min": 1.0,
        "max": 3.0,
        "mean": 2.0,
        "std": pytest.approx(np.std([1.0, 2.0, 3.0])),
    }
    json.dumps(returned)  # the report is written as JSON


def test_quality_figures_are_flat_floats(tmp_path):
    result = ingest_text(tmp_path, csv("timestamp,a", [0, 1, 2], [1, 2, 3]))

    returned = quality_figures(quality_report(result, flatline_rows=60))

    assert returned["quality.rows_in"] == 3.0
    assert all(isinstance(value, float) for value in returned.values())
    assert all(key.startswith("quality.") for key in returned)


def test_sources_include_a_file_whose_rows_were_all_set_aside(tmp_path):
    (tmp_path / "1.csv").write_text(csv("timestamp,a", [0, 1, 2], [1, 2, 3]))
    (tmp_path / "2.csv").write_text(csv("timestamp,a", [1, 2], [2, 3]))  # repeats rows of 1.csv
    config = IngestConfig()
    result = validate([read_source(name, path, config) for name, path in discover_files([tmp_path])], config)

    returned = quality_report(result, flatline_rows=60)

    assert returned["sources"] == ["1.csv", "2.csv"]
    assert returned["quarantine_reasons"] == {"duplicate": 2}


def test_a_file_with_most_rows_set_aside_is_named_with_its_main_reason_and_a_setting(tmp_path):
    values = ["x"] * 6 + [1, 2, 3, 4]  # 6 of 10 rows hold text in a sensor
    text = csv("timestamp,a,b", list(range(10)), values, list(range(10)))
    result = ingest_text(tmp_path, text, IngestConfig(sensors=["a", "b"]))

    returned = set_aside_warnings(result, max_share=0.2)

    expected = [
        "a.csv: 60% of its rows set aside (6 of 10), more than ingest.max_set_aside_share=0.2; "
        "main reason: unparseable value (6 rows); check ingest.decimal and ingest.delimiter, "
        "or list the column in ingest.exclude_columns"
    ]
    assert returned == expected
    assert set_aside_warnings(result, max_share=0.6) == []
    assert quality_report(result, flatline_rows=60)["set_aside_over_limit"] == expected


def test_the_report_records_the_timestamp_format_and_held_values(tmp_path):
    lines = ["t,fast,slow"] + [
        f"{13 + i // 1440:02d}.01.2026 {i // 60 % 24:02d}:{i % 60:02d},{i},{'' if i % 10 else i}" for i in range(100)
    ]
    result = ingest_text(tmp_path, "\n".join(lines) + "\n")

    returned = quality_report(result, flatline_rows=60)

    assert returned["timestamp_formats"] == {"a.csv": "%d.%m.%Y %H:%M (day-first: '13.01.2026 00:00' has a day above 12)"}
    assert returned["sensors"]["slow"]["held_values"] == 90 and returned["sensors"]["slow"]["interval_seconds"] == 600.0
    assert returned["rows"]["rows_held"] == 90 and returned["rows"]["rows_clean"] == 100
