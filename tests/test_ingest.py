"""Tests of the ingest stage: raw CSV/Parquet files -> validated table, rejected rows and counts.

Every bad input either raises an InputError (exit code 2) with a one-line message naming the
file and, where known, the column and row, or is repaired / set aside and counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import IngestConfig
from pipeline.data.files import (
    RawSource,
    discover_files,
    file_digest,
    read_source,
    sniff_delimiter,
)
from pipeline.data.ingest import IngestResult, missing_runs, validate
from pipeline.data.rates import repair_missing, resample_table, sensor_intervals, slower_sensors
from pipeline.data.timeformat import decide_format
from pipeline.errors import InputError

HEADER = "timestamp,a,b\n"


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def rows(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


def ingest(paths: list[Path], config: IngestConfig | None = None, **kwargs) -> IngestResult:
    """discover -> read -> validate, as loading does."""
    config = config or IngestConfig()
    sources = [read_source(name, path, config) for name, path in discover_files(paths)]
    return validate(sources, config, **kwargs)


def assert_rows_add_up(result: IngestResult) -> None:
    """Every input row is clean, repaired or set aside, and the table/rejected sizes agree."""
    counts = result.counts
    assert counts["rows_in"] == counts["rows_clean"] + counts["rows_repaired"] + counts["rows_quarantined"]
    assert len(result.table) == counts["rows_clean"] + counts["rows_repaired"]
    assert len(result.rejected) == counts["rows_quarantined"]
    assert not result.table[result.sensors].isna().any().any()
    assert result.table["timestamp"].is_monotonic_increasing
    assert str(result.table["timestamp"].dt.tz) == "UTC"


def utc(*texts: str) -> list[pd.Timestamp]:
    return [pd.Timestamp(t, tz="UTC") for t in texts]


def one_line(message: str) -> bool:
    return "\n" not in message


def status_of(result: IngestResult, row: int) -> str:
    """The reason a data row (0-based, in its file) was set aside."""
    found = result.rejected.loc[result.rejected["row"] == row, "status"]
    assert len(found) == 1, f"row {row} not set aside exactly once: {result.rejected}"
    return found.iloc[0]


# ----------------------------------------------------------------------------- formats


def test_semicolon_csv_like_skab_is_sniffed(tmp_path):
    path = write(
        tmp_path,
        "1.csv",
        rows(
            "datetime;Accelerometer1RMS;Pressure;anomaly;changepoint",
            "2020-03-09 10:14:33;0.0273;0.054;0.0;0.0",
            "2020-03-09 10:14:34;0.0277;0.382;0.0;0.0",
            "2020-03-09 10:14:35;0.0279;0.710;1.0;1.0",
        ),
    )

    returned = ingest([path])

    assert returned.timestamp_column == "datetime"
    assert returned.sensors == ["Accelerometer1RMS", "Pressure"]
    assert returned.table["Pressure"].tolist() == [0.054, 0.382, 0.710]
    assert returned.table["timestamp"].tolist() == utc("2020-03-09 10:14:33", "2020-03-09 10:14:34", "2020-03-09 10:14:35")
    assert returned.counts["rows_clean"] == 3
    assert_rows_add_up(returned)


def test_comma_csv(tmp_path):
    path = write(tmp_path, "a.csv", rows("timestamp,a,b", "2024-01-01 00:00:00,1.5,10", "2024-01-01 00:00:01,2.5,20"))

    returned = ingest([path])

    assert returned.sensors == ["a", "b"]
    assert returned.table["a"].tolist() == [1.5, 2.5]
    assert returned.table["b"].dtype == np.float64
    assert_rows_add_up(returned)


def test_tab_csv(tmp_path):
    path = write(tmp_path, "a.tsv", rows("timestamp\ta\tb", "2024-01-01 00:00:00\t1.5\t10", "2024-01-01 00:00:01\t2.5\t20"))

    returned = ingest([path])

    assert returned.sensors == ["a", "b"]
    assert returned.table["b"].tolist() == [10.0, 20.0]
    assert_rows_add_up(returned)


@pytest.mark.parametrize(
    "header, expected",
    [("a,b;c", ","), ("a;b;c", ";"), ("a\tb\tc", "\t"), ("a|b|c", "|"), ("single", ",")],
)
def test_sniff_delimiter(header, expected):
    assert sniff_delimiter(header) == expected


def test_decimal_comma_with_semicolon_delimiter(tmp_path):
    path = write(tmp_path, "a.csv", rows("timestamp;a;b", "2024-01-01 00:00:00;1,5;-0,25", "2024-01-01 00:00:01;2,5;3"))

    returned = ingest([path], IngestConfig(decimal=","))

    assert returned.table["a"].tolist() == [1.5, 2.5]
    assert returned.table["b"].tolist() == [-0.25, 3.0]
    assert_rows_add_up(returned)


def test_decimal_comma_with_text_in_one_row_quarantines_only_that_row(tmp_path):
    lines = [f"2024-01-01 00:00:{i:02d};{i},5;1" for i in range(10)]
    lines[4] = "2024-01-01 00:00:04;err;1"
    path = write(tmp_path, "a.csv", rows("timestamp;a;b", *lines))

    returned = ingest([path], IngestConfig(decimal=","))

    assert returned.sensors == ["a", "b"]
    assert status_of(returned, 4) == "unparseable value 'err' in column 'a'"
    assert returned.table["a"].tolist() == [0.5, 1.5, 2.5, 3.5, 5.5, 6.5, 7.5, 8.5, 9.5]
    assert returned.counts["unparseable_value"] == 1
    assert_rows_add_up(returned)


def test_parquet_input(tmp_path):
    frame = pd.DataFrame(
        {
            "time": pd.to_datetime(["2024-01-01 00:00:00", "2024-01-01 00:00:01"]).tz_localize("Europe/Berlin"),
            "a": [1.0, 2.0],
            "b": [3, 4],
        }
    )
    frame.to_parquet(tmp_path / "a.parquet", index=False)

    returned = ingest([tmp_path / "a.parquet"])

    assert returned.timestamp_column == "time"
    assert returned.sensors == ["a", "b"]
    assert returned.table["timestamp"].tolist() == utc("2023-12-31 23:00:00", "2023-12-31 23:00:01")
    assert returned.table["b"].tolist() == [3.0, 4.0]
    assert_rows_add_up(returned)


def test_parquet_with_timestamp_index(tmp_path):
    frame = pd.DataFrame({"a": [1.0, 2.0]}, index=pd.DatetimeIndex(["2024-01-01 00:00:00", "2024-01-01 00:00:01"], name="time"))
    frame.to_parquet(tmp_path / "a.parquet")

    returned = ingest([tmp_path / "a.parquet"])

    assert returned.timestamp_column == "time"
    assert returned.table["a"].tolist() == [1.0, 2.0]
    assert_rows_add_up(returned)


def test_corrupt_parquet_is_input_error(tmp_path):
    path = write(tmp_path, "a.parquet", b"PAR1 this is not parquet")

    with pytest.raises(InputError) as error:
        ingest([path])

    assert str(path) in str(error.value)
    assert "Parquet" in str(error.value)
    assert one_line(str(error.value))


# ----------------------------------------------------------------------------- files and folders


def test_folder_is_discovered_recursively_with_relative_names(tmp_path):
    write(tmp_path, "in/valve1/0.csv", rows(HEADER.strip(), "2024-01-01 00:00:00,1,2"))
    write(tmp_path, "in/valve1/1.csv", rows(HEADER.strip(), "2024-01-01 00:00:01,3,4"))
    write(tmp_path, "in/other/2.csv", rows(HEADER.strip(), "2024-01-01 00:00:02,5,6"))
    write(tmp_path, "in/notes.md", "not data")

    found = discover_files([tmp_path / "in"])
    returned = ingest([tmp_path / "in"])

    expected = ["other/2.csv", "valve1/0.csv", "valve1/1.csv"]
    assert [name for name, _ in found] == expected
    assert all(path.is_absolute() or path.exists() for _, path in found)
    assert sorted(returned.table["source"].unique()) == expected
    assert returned.table["a"].tolist() == [1.0, 3.0, 5.0]
    assert_rows_add_up(returned)


def test_same_file_name_in_two_folders_keeps_both_apart(tmp_path):
    first = write(tmp_path, "x/1.csv", rows(HEADER.strip(), "2024-01-01 00:00:00,1,2"))
    second = write(tmp_path, "y/1.csv", rows(HEADER.strip(), "2024-01-01 00:00:01,3,4"))

    returned = discover_files([tmp_path / "x", tmp_path / "y"])

    assert [name for name, _ in returned] == [str(first), str(second)]


def test_folder_without_data_files_is_input_error(tmp_path):
    write(tmp_path, "in/readme.md", "hello")

    with pytest.raises(InputError, match="no CSV or Parquet files") as error:
        discover_files([tmp_path / "in"])

    assert str(tmp_path / "in") in str(error.value)


def test_missing_file_is_input_error(tmp_path):
    path = tmp_path / "nope.csv"

    with pytest.raises(InputError) as error:
        discover_files([path])

    assert str(error.value) == f"{path}: file not found"


def test_read_source_of_a_vanished_file_is_input_error(tmp_path):
    path = tmp_path / "gone.csv"

    with pytest.raises(InputError) as error:
        read_source("gone.csv", path, IngestConfig())

    assert str(path) in str(error.value)
    assert "not found" in str(error.value)


def test_empty_file_is_input_error(tmp_path):
    path = write(tmp_path, "a.csv", b"")

    with pytest.raises(InputError) as error:
        ingest([path])

    assert str(error.value) == f"{path}: file is empty"


def test_blank_lines_only_is_input_error(tmp_path):
    path = write(tmp_path, "a.csv", "\n\n  \n")

    with pytest.raises(InputError) as error:
        ingest([path])

    assert str(error.value) == f"{path}: file is empty"


def test_header_only_file_is_input_error(tmp_path):
    path = write(tmp_path, "a.csv", HEADER)

    with pytest.raises(InputError) as error:
        ingest([path])

    assert str(error.value) == f"{path}: no data rows (header only)"


def test_binary_file_is_input_error(tmp_path):
    path = write(tmp_path, "a.csv", b"timestamp,a\n\x00\x01\x02\x00garbage\n")

    with pytest.raises(InputError) as error:
        ingest([path])

    assert str(error.value) == f"{path}: binary content, not a CSV text file"


def test_truncated_last_line_is_input_error_naming_the_line(tmp_path):
    path = write(tmp_path, "a.csv", HEADER + rows("2024-01-01 00:00:00,1,2", "2024-01-01 00:00:01,3,4") + "2024-01-01 00:00:02,5")

    with pytest.raises(InputError) as error:
        ingest([path])

    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert "line 4" in message
    assert "expected 3 fields, got 2" in message
    assert one_line(message)


def test_row_with_too_many_fields_is_input_error_naming_the_line(tmp_path):
    path = write(
        tmp_path, "a.csv", HEADER + rows("2024-01-01 00:00:00,1,2", "2024-01-01 00:00:01,3,4,5", "2024-01-01 00:00:02,5,6")
    )

    with pytest.raises(InputError) as error:
        ingest([path])

    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert "line 3" in message
    assert "expected 3 fields, got 4" in message


def test_duplicate_column_names_are_input_error(tmp_path):
    path = write(tmp_path, "a.csv", rows("timestamp,a,a", "2024-01-01 00:00:00,1,2"))

    with pytest.raises(InputError) as error:
        ingest([path])

    assert str(error.value) == "a.csv: column 'a' appears more than once in the header"


def test_file_digest_is_sha256_of_the_bytes(tmp_path):
    path = write(tmp_path, "a.csv", b"abc")

    returned = file_digest(path)

    assert returned == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ----------------------------------------------------------------------------- columns


def test_no_timestamp_column_is_input_error(tmp_path):
    path = write(tmp_path, "a.csv", rows("x,a", "1,2", "3,4"))

    with pytest.raises(InputError) as error:
        ingest([path])

    assert str(error.value).startswith("a.csv: no timestamp column")
    assert one_line(str(error.value))


def test_no_numeric_sensor_column_is_input_error(tmp_path):
    path = write(tmp_path, "a.csv", rows("timestamp,name,anomaly", "2024-01-01 00:00:00,pump,0", "2024-01-01 00:00:01,pump,1"))

    with pytest.raises(InputError) as error:
        ingest([path])

    assert str(error.value) == "a.csv: no numeric sensor column (columns: timestamp, name, anomaly)"


def test_configured_sensor_column_missing_is_input_error(tmp_path):
    path = write(tmp_path, "a.csv", rows(HEADER.strip(), "2024-01-01 00:00:00,1,2"))

    with pytest.raises(InputError) as error:
        ingest([path], IngestConfig(sensors=["a", "flow"]))

    assert str(error.value) == "a.csv: sensor column 'flow' not found (columns: timestamp, a, b)"


def test_configured_timestamp_column_missing_is_input_error(tmp_path):
    path = write(tmp_path, "a.csv", rows(HEADER.strip(), "2024-01-01 00:00:00,1,2"))

    with pytest.raises(InputError) as error:
        ingest([path], IngestConfig(timestamp_column="datetime"))

    assert str(error.value) == "a.csv: timestamp column 'datetime' not found (columns: timestamp, a, b)"


def test_sensor_missing_from_a_later_file_is_input_error(tmp_path):
    first = write(tmp_path, "1.csv", rows(HEADER.strip(), "2024-01-01 00:00:00,1,2"))
    second = write(tmp_path, "2.csv", rows("timestamp,a", "2024-01-01 00:00:01,1"))

    with pytest.raises(InputError) as error:
        ingest([first, second])

    assert str(error.value) == "2.csv: sensor column 'b' not found (columns: timestamp, a)"


def test_label_like_columns_are_not_sensors(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        rows("datetime;a;anomaly;changepoint", "2024-01-01 00:00:00;1;0;0", "2024-01-01 00:00:01;2;1;1"),
    )

    returned = ingest([path])

    assert returned.sensors == ["a"]
    assert "label" not in returned.table
    assert returned.ignored_columns == ["anomaly", "changepoint"]
    assert_rows_add_up(returned)


def test_label_column_gives_a_label_column(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        rows("datetime;a;anomaly;changepoint", "2024-01-01 00:00:00;1;0.0;0", "2024-01-01 00:00:01;2;1.0;1"),
    )

    returned = ingest([path], IngestConfig(label_column="anomaly"))

    assert returned.sensors == ["a"]
    assert returned.table["label"].tolist() == [0.0, 1.0]
    assert returned.ignored_columns == ["changepoint"]
    assert_rows_add_up(returned)


def test_unparseable_label_is_quarantined_and_counted(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        rows("timestamp,a,anomaly", "2024-01-01 00:00:00,1,0", "2024-01-01 00:00:01,2,yes", "2024-01-01 00:00:02,3,1"),
    )

    returned = ingest([path], IngestConfig(label_column="anomaly"))

    assert status_of(returned, 1) == "unparseable label 'yes' in column 'anomaly'"
    assert returned.counts["unparseable_label"] == 1
    assert returned.table["label"].tolist() == [0.0, 1.0]
    assert_rows_add_up(returned)


def test_extra_non_numeric_columns_are_ignored_and_listed(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        rows("timestamp,asset,a,operator", "2024-01-01 00:00:00,P-101,1,ann", "2024-01-01 00:00:01,P-101,2,bob"),
    )

    returned = ingest([path])

    assert returned.sensors == ["a"]
    assert returned.ignored_columns == ["asset", "operator"]
    assert list(returned.table.columns) == ["source", "row", "timestamp", "a"]
    assert_rows_add_up(returned)


def test_excluded_columns_are_not_sensors_nor_listed_as_ignored(tmp_path):
    path = write(tmp_path, "a.csv", rows(HEADER.strip(), "2024-01-01 00:00:00,1,2"))

    returned = ingest([path], IngestConfig(exclude_columns=["b"]))

    assert returned.sensors == ["a"]
    assert returned.ignored_columns == []


def test_text_in_a_numeric_column_quarantines_the_row(tmp_path):
    lines = [f"2024-01-01 00:00:{i:02d},{i},{10 * i}" for i in range(10)]
    lines[3] = "2024-01-01 00:00:03,x,30"
    path = write(tmp_path, "a.csv", HEADER + rows(*lines))

    returned = ingest([path])

    assert returned.sensors == ["a", "b"]
    assert status_of(returned, 3) == "unparseable value 'x' in column 'a'"
    assert returned.rejected.iloc[0]["source"] == "a.csv"
    assert returned.rejected.iloc[0]["timestamp"] == "2024-01-01T00:00:03Z"  # UTC ISO, as scored rows
    assert returned.counts["unparseable_value"] == 1
    assert returned.counts["rows_quarantined"] == 1
    assert 3 not in returned.table["row"].tolist()
    assert_rows_add_up(returned)


def test_mostly_text_column_is_not_a_sensor(tmp_path):
    lines = [f"2024-01-01 00:00:0{i},{i},{'ok' if i % 2 else i}" for i in range(6)]
    path = write(tmp_path, "a.csv", HEADER + rows(*lines))

    returned = ingest([path])

    assert returned.sensors == ["a"]
    assert returned.ignored_columns == ["b"]
    assert returned.counts["rows_quarantined"] == 0
    assert_rows_add_up(returned)


def test_boolean_column_is_not_a_sensor(tmp_path):
    path = write(tmp_path, "a.csv", rows("timestamp,a,running", "2024-01-01 00:00:00,1,true", "2024-01-01 00:00:01,2,false"))

    returned = ingest([path])

    assert returned.sensors == ["a"]
    assert returned.ignored_columns == ["running"]


def test_given_sensors_with_text_quarantine_the_rows(tmp_path):
    # A trained model's sensor list is used as given, even where a file holds mostly text.
    path = write(
        tmp_path, "a.csv", HEADER + rows("2024-01-01 00:00:00,1,off", "2024-01-01 00:00:01,2,4", "2024-01-01 00:00:02,3,off")
    )

    returned = ingest([path], sensors=["a", "b"])

    assert returned.sensors == ["a", "b"]
    assert status_of(returned, 0) == "unparseable value 'off' in column 'b'"
    assert status_of(returned, 2) == "unparseable value 'off' in column 'b'"
    assert returned.table["b"].tolist() == [4.0]
    assert returned.counts["unparseable_value"] == 2
    assert_rows_add_up(returned)


# ----------------------------------------------------------------------------- duplicates and order


def test_exact_duplicate_row_is_dropped_naming_the_original(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        HEADER + rows("2024-01-01 00:00:00,1,2", "2024-01-01 00:00:01,3,4", "2024-01-01 00:00:01,3,4", "2024-01-01 00:00:02,5,6"),
    )

    returned = ingest([path])

    assert status_of(returned, 2) == "duplicate of a.csv row 2"  # 1-based data row of the original
    assert returned.counts["duplicate_rows"] == 1
    assert returned.counts["conflicting_timestamp"] == 0
    assert returned.table["row"].tolist() == [0, 1, 3]
    assert_rows_add_up(returned)


def test_duplicate_across_files_names_the_first_file(tmp_path):
    first = write(tmp_path, "1.csv", HEADER + rows("2024-01-01 00:00:00,1,2", "2024-01-01 00:00:01,3,4"))
    second = write(tmp_path, "2.csv", HEADER + rows("2024-01-01 00:00:01,3,4", "2024-01-01 00:00:02,5,6"))

    returned = ingest([first, second])

    assert returned.rejected["source"].tolist() == ["2.csv"]
    assert returned.rejected["status"].tolist() == ["duplicate of 1.csv row 2"]
    assert returned.counts["duplicate_rows"] == 1
    assert_rows_add_up(returned)


def test_same_timestamp_with_different_values_quarantines_all_of_them(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        HEADER + rows("2024-01-01 00:00:00,1,2", "2024-01-01 00:00:01,3,4", "2024-01-01 00:00:01,3,5", "2024-01-01 00:00:02,5,6"),
    )

    returned = ingest([path])

    assert sorted(returned.rejected["row"].tolist()) == [1, 2]
    assert set(returned.rejected["status"]) == {"conflicting timestamp: other rows have the same time with different values"}
    assert returned.counts["conflicting_timestamp"] == 2
    assert returned.counts["duplicate_rows"] == 0
    assert returned.table["row"].tolist() == [0, 3]
    assert_rows_add_up(returned)


def test_duplicate_and_conflict_at_one_timestamp(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        HEADER + rows("2024-01-01 00:00:00,1,2", "2024-01-01 00:00:00,1,2", "2024-01-01 00:00:00,9,9", "2024-01-01 00:00:01,5,6"),
    )

    returned = ingest([path])

    assert status_of(returned, 1) == "duplicate of a.csv row 1"
    assert status_of(returned, 0).startswith("conflicting timestamp")
    assert status_of(returned, 2).startswith("conflicting timestamp")
    assert returned.counts["duplicate_rows"] == 1
    assert returned.counts["conflicting_timestamp"] == 2
    assert_rows_add_up(returned)


def test_out_of_order_rows_are_sorted_and_counted(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        HEADER + rows("2024-01-01 00:00:00,1,2", "2024-01-01 00:00:02,5,6", "2024-01-01 00:00:01,3,4", "2024-01-01 00:00:03,7,8"),
    )

    returned = ingest([path])

    assert returned.table["row"].tolist() == [0, 2, 1, 3]
    assert returned.table["a"].tolist() == [1.0, 3.0, 5.0, 7.0]
    assert returned.counts["out_of_order"] == 1
    assert returned.counts["rows_clean"] == 4
    assert_rows_add_up(returned)


# ----------------------------------------------------------------------------- missing values


def test_short_missing_run_is_forward_filled(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        HEADER
        + rows("2024-01-01 00:00:00,1,2", "2024-01-01 00:00:01,,4", "2024-01-01 00:00:02,NaN,6", "2024-01-01 00:00:03,7,8"),
    )

    returned = ingest([path], IngestConfig(max_fill_rows=2))

    assert returned.table["a"].tolist() == [1.0, 1.0, 1.0, 7.0]
    assert returned.counts["rows_repaired"] == 2
    assert returned.counts["rows_clean"] == 2
    assert returned.filled_values == {"a": 2, "b": 0}
    assert returned.missing_values == {"a": 2, "b": 0}
    assert_rows_add_up(returned)


def test_long_missing_run_is_quarantined_with_reason(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        HEADER
        + rows(
            "2024-01-01 00:00:00,1,2",
            "2024-01-01 00:00:01,,4",
            "2024-01-01 00:00:02,,6",
            "2024-01-01 00:00:03,,8",
            "2024-01-01 00:00:04,9,10",
        ),
    )

    returned = ingest([path], IngestConfig(max_fill_rows=2))

    expected = "missing value in column 'a' (3 rows in a row, more than max_fill_rows=2)"
    assert [status_of(returned, r) for r in (1, 2, 3)] == [expected] * 3
    assert returned.counts["missing_run_too_long"] == 3
    assert returned.counts["rows_repaired"] == 0
    assert returned.filled_values == {"a": 0, "b": 0}
    assert returned.table["row"].tolist() == [0, 4]
    assert_rows_add_up(returned)


def test_leading_missing_value_is_quarantined(tmp_path):
    path = write(tmp_path, "a.csv", HEADER + rows("2024-01-01 00:00:00,,2", "2024-01-01 00:00:01,3,4"))

    returned = ingest([path])

    assert status_of(returned, 0) == "missing value in column 'a' (no earlier value)"
    assert returned.counts["rows_quarantined"] == 1
    assert returned.counts["rows_repaired"] == 0
    assert_rows_add_up(returned)


def test_fill_never_reaches_back_past_a_quarantined_row(tmp_path):
    # Row 0 is set aside (no earlier 'a'); row 1's short gap in 'b' is filled from row 0's b,
    # the last value that sensor reported, so no NaN stays in the table.
    path = write(tmp_path, "a.csv", HEADER + rows("2024-01-01 00:00:00,,2", "2024-01-01 00:00:01,3,", "2024-01-01 00:00:02,5,6"))

    returned = ingest([path])

    assert status_of(returned, 0) == "missing value in column 'a' (no earlier value)"
    assert returned.table["b"].tolist() == [2.0, 6.0]
    assert returned.filled_values == {"a": 0, "b": 1}
    assert returned.counts["rows_repaired"] == 1
    assert_rows_add_up(returned)


def test_filled_values_do_not_count_rows_set_aside_by_a_later_column(tmp_path):
    # Row 2: 'a' is a short gap (fillable) but 'b' is a long gap, so the row is set aside and
    # its 'a' was never filled.
    path = write(
        tmp_path,
        "a.csv",
        HEADER + rows("2024-01-01 00:00:00,1,2", "2024-01-01 00:00:01,2,", "2024-01-01 00:00:02,,", "2024-01-01 00:00:03,4,5"),
    )

    returned = ingest([path], IngestConfig(max_fill_rows=1))

    assert returned.rejected["row"].tolist() == [1, 2]
    assert returned.filled_values == {"a": 0, "b": 0}
    assert returned.counts["rows_repaired"] == 0
    assert_rows_add_up(returned)


def test_missing_runs():
    starts, lengths = missing_runs(np.array([True, False, True, True, False, True]))

    assert starts.tolist() == [0, 2, 5]
    assert lengths.tolist() == [1, 2, 1]


# ----------------------------------------------------------------------------- timestamps


def test_naive_timestamps_are_read_in_source_timezone(tmp_path):
    path = write(tmp_path, "a.csv", HEADER + rows("2024-07-01 12:00:00,1,2", "2024-07-01 12:00:01,3,4"))

    returned = ingest([path], IngestConfig(source_timezone="Europe/Berlin"))

    assert returned.table["timestamp"].tolist() == utc("2024-07-01 10:00:00", "2024-07-01 10:00:01")
    assert_rows_add_up(returned)


def test_timestamps_with_offsets_are_converted_to_utc(tmp_path):
    path = write(tmp_path, "a.csv", HEADER + rows("2024-01-01T12:00:00+01:00,1,2", "2024-01-01T12:00:01+01:00,3,4"))

    returned = ingest([path], IngestConfig(source_timezone="America/New_York"))  # not used: offsets win

    assert returned.table["timestamp"].tolist() == utc("2024-01-01 11:00:00", "2024-01-01 11:00:01")
    assert_rows_add_up(returned)


def test_mixed_aware_and_naive_timestamps_are_input_error_naming_the_row(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        HEADER + rows("2024-01-01T12:00:00+01:00,1,2", "2024-01-01T12:00:01,3,4", "2024-01-01T12:00:02+01:00,5,6"),
    )

    with pytest.raises(InputError) as error:
        ingest([path])

    assert str(error.value) == (
        "a.csv: column 'timestamp' mixes timestamps with and without a time zone "
        "(row 2: '2024-01-01T12:00:01'); make them consistent, or set ingest.source_timezone to the zone of the ones without"
    )


def test_mixed_aware_and_naive_timestamps_read_naive_ones_in_a_configured_zone(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        HEADER + rows("2024-01-01T12:00:00+01:00,1,2", "2024-01-01T12:00:01,3,4", "2024-01-01T12:00:02+01:00,5,6"),
    )

    returned = ingest([path], IngestConfig(source_timezone="Europe/Berlin"))

    assert list(returned.table["timestamp"]) == utc("2024-01-01 11:00:00", "2024-01-01 11:00:01", "2024-01-01 11:00:02")
    assert_rows_add_up(returned)


def test_unparseable_timestamp_quarantines_that_row(tmp_path):
    path = write(tmp_path, "a.csv", HEADER + rows("2024-01-01 00:00:00,1,2", "not a time,3,4", "2024-01-01 00:00:02,5,6"))

    returned = ingest([path])

    assert returned.timestamp_column == "timestamp"
    assert status_of(returned, 1) == "unparseable timestamp"
    assert returned.rejected["timestamp"].tolist() == ["not a time"]
    assert returned.counts["unparseable_timestamp"] == 1
    assert returned.table["row"].tolist() == [0, 2]
    assert_rows_add_up(returned)


def test_empty_timestamp_quarantines_that_row(tmp_path):
    path = write(tmp_path, "a.csv", HEADER + rows("2024-01-01 00:00:00,1,2", ",3,4", "2024-01-01 00:00:02,5,6"))

    returned = ingest([path])

    assert status_of(returned, 1) == "unparseable timestamp"
    assert returned.counts["unparseable_timestamp"] == 1
    assert_rows_add_up(returned)


def test_dst_ambiguous_local_time_is_quarantined(tmp_path):
    # 2023-10-29 02:30 happens twice in Berlin (clocks go back from 03:00 to 02:00).
    path = write(
        tmp_path,
        "a.csv",
        HEADER + rows("2023-10-29 01:30:00,1,2", "2023-10-29 02:30:00,3,4", "2023-10-29 03:30:00,5,6"),
    )

    returned = ingest([path], IngestConfig(source_timezone="Europe/Berlin"))

    assert status_of(returned, 1) == "ambiguous or nonexistent local time in Europe/Berlin"
    assert returned.counts["ambiguous_time"] == 1
    assert returned.counts["unparseable_timestamp"] == 0
    assert returned.table["timestamp"].tolist() == utc("2023-10-28 23:30:00", "2023-10-29 02:30:00")
    assert_rows_add_up(returned)


def test_nonexistent_local_time_is_quarantined(tmp_path):
    # 2024-03-31 02:30 never happens in Berlin (clocks jump from 02:00 to 03:00).
    path = write(
        tmp_path, "a.csv", HEADER + rows("2024-03-31 01:30:00,1,2", "2024-03-31 02:30:00,3,4", "2024-03-31 03:30:00,5,6")
    )

    returned = ingest([path], IngestConfig(source_timezone="Europe/Berlin"))

    assert status_of(returned, 1) == "ambiguous or nonexistent local time in Europe/Berlin"
    assert returned.counts["ambiguous_time"] == 1
    assert returned.table["timestamp"].tolist() == utc("2024-03-31 00:30:00", "2024-03-31 01:30:00")
    assert_rows_add_up(returned)


def test_naive_parquet_timestamps_are_read_in_source_timezone(tmp_path):
    frame = pd.DataFrame({"time": pd.to_datetime(["2024-07-01 12:00:00", "2024-07-01 12:00:01"]), "a": [1.0, 2.0]})
    frame.to_parquet(tmp_path / "a.parquet", index=False)

    returned = ingest([tmp_path / "a.parquet"], IngestConfig(source_timezone="Europe/Berlin"))

    assert returned.table["timestamp"].tolist() == utc("2024-07-01 10:00:00", "2024-07-01 10:00:01")
    assert_rows_add_up(returned)


def test_unknown_time_zone_is_input_error(tmp_path):
    path = write(tmp_path, "a.csv", HEADER + rows("2024-01-01 00:00:00,1,2"))

    with pytest.raises(InputError) as error:
        ingest([path], IngestConfig(source_timezone="Mars/Olympus_Mons"))

    assert str(error.value).startswith("ingest.source_timezone: unknown time zone 'Mars/Olympus_Mons'")
    assert one_line(str(error.value))


def test_unknown_time_zone_is_input_error_even_with_aware_timestamps(tmp_path):
    path = write(tmp_path, "a.csv", HEADER + rows("2024-01-01T00:00:00Z,1,2"))

    with pytest.raises(InputError, match="unknown time zone 'Mars/Olympus_Mons'"):
        ingest([path], IngestConfig(source_timezone="Mars/Olympus_Mons"))


def test_no_usable_rows_is_input_error(tmp_path):
    path = write(tmp_path, "a.csv", HEADER + rows("2024-01-01 00:00:00,,2", "2024-01-01 00:00:01,,4"))

    with pytest.raises(InputError) as error:
        ingest([path], IngestConfig(sensors=["a", "b"]))

    assert str(error.value).startswith("a.csv: no usable rows left after validation")
    assert one_line(str(error.value))


# ----------------------------------------------------------------------------- purity


def test_validate_does_not_change_its_input_frames():
    frame = pd.DataFrame(
        {
            "timestamp": ["2024-01-01 00:00:02", "2024-01-01 00:00:00", "2024-01-01 00:00:00", "2024-01-01 00:00:01", "bad"],
            "a": ["1", None, None, "x", "2"],
            "b": [1.0, np.nan, np.nan, 3.0, 4.0],
        }
    )
    expected = frame.copy(deep=True)
    source = RawSource(name="mem", frame=frame, digest="-")

    returned = validate([source], IngestConfig(), sensors=["a", "b"], timestamp_column="timestamp")

    pd.testing.assert_frame_equal(frame, expected)
    assert_rows_add_up(returned)


def test_validate_of_no_sources_is_input_error():
    with pytest.raises(InputError, match="no input files"):
        validate([], IngestConfig())


@pytest.mark.parametrize("unit,scale", [("s", 1), ("ms", 1_000)])
def test_unix_time_column_is_detected_and_read_as_utc(tmp_path, unit, scale):
    start = 1_767_225_600  # 2026-01-01 00:00:00 UTC
    path = write(tmp_path, "a.csv", "epoch_time,a\n" + "".join(f"{(start + i) * scale},{i}\n" for i in range(3)))

    returned = ingest([path])

    assert returned.timestamp_column == "epoch_time"
    expected = pd.to_datetime(["2026-01-01 00:00:00", "2026-01-01 00:00:01", "2026-01-01 00:00:02"], utc=True)
    assert returned.table["timestamp"].tolist() == expected.tolist()
    assert returned.sensors == ["a"]


def test_infinite_or_huge_value_is_set_aside_not_scored(tmp_path):
    path = write(
        tmp_path,
        "a.csv",
        HEADER
        + rows("2024-01-01 00:00:00,1,2", "2024-01-01 00:00:01,inf,4", "2024-01-01 00:00:02,1e300,6", "2024-01-01 00:00:03,7,8"),
    )

    returned = ingest([path])

    assert status_of(returned, 1) == "out-of-range value 'inf' in column 'a'"
    assert status_of(returned, 2) == "out-of-range value '1e+300' in column 'a'"
    assert returned.counts["out_of_range_value"] == 2
    assert returned.table["a"].tolist() == [1.0, 7.0]
    assert_rows_add_up(returned)


def test_header_that_is_not_utf8_is_a_clear_error(tmp_path):
    path = write(tmp_path, "a.csv", "timestamp,temp_\xb0C\n2024-01-01 00:00:00,1\n".encode("latin-1"))

    with pytest.raises(InputError, match=r"a\.csv: cannot be read.*UTF-8") as info:
        ingest([path])
    assert one_line(str(info.value))


# ----------------------------------------------------------------------------- issue 16: dates, rates, tall files


def text_column(*values: str | None) -> pd.Series:
    return pd.Series(values, dtype="string")


@pytest.mark.parametrize(
    "values, expected",
    [
        (("01.01.2026 23:59", "02.01.2026 00:00", "13.01.2026 00:00"), ("%d.%m.%Y %H:%M", True)),  # a day above 12
        (("01/02/2026 10:00:00 PM", "01/13/2026 12:00:00 AM"), ("%m/%d/%Y %I:%M:%S %p", False)),  # US, month first
        (("01.01.26 00:00", "01.01.26 00:01"), ("%d.%m.%y %H:%M", True)),  # day and month equal: both readings agree
        (("2026-01-02 00:00:00", "2026-01-13 00:00:00"), (None, None)),  # ISO 8601: pandas' own reading, as before
    ],
)
def test_decide_format_reads_the_whole_column_one_way(values, expected):
    returned = decide_format(text_column(*values), "a.csv", "t", IngestConfig())

    assert (returned.pattern, returned.dayfirst) == expected


def test_decide_format_of_values_that_fit_both_readings_names_file_column_row_and_settings():
    with pytest.raises(InputError) as info:
        decide_format(text_column("01.01.2026 00:00", "02.01.2026 00:00"), "a.csv", "t", IngestConfig())

    message = str(info.value)
    assert one_line(message)
    assert message.startswith("a.csv: column 't' (row 2: '02.01.2026 00:00'): dates fit both day-first and month-first")
    assert "ingest.dayfirst" in message and "ingest.timestamp_format (e.g. '%d.%m.%Y %H:%M')" in message


def test_decide_format_takes_the_settings_then_the_models_order():
    ambiguous = text_column("01.02.2026 00:00", "02.02.2026 00:00")

    assert decide_format(ambiguous, "a", "t", IngestConfig(dayfirst=False)).pattern == "%m.%d.%Y %H:%M"
    assert decide_format(ambiguous, "a", "t", IngestConfig(timestamp_format="%d.%m.%Y %H:%M")).pattern == "%d.%m.%Y %H:%M"
    assert decide_format(ambiguous, "a", "t", IngestConfig(), dayfirst_hint=True).pattern == "%d.%m.%Y %H:%M"


def test_day_first_dates_are_never_read_month_first(tmp_path):
    path = write(tmp_path, "a.csv", rows("t;a", "01.01.2026 23:59;1,5", "02.01.2026 00:00;2,5", "13.01.2026 00:00;3,5"))

    returned = ingest([path], IngestConfig(decimal=","))

    assert returned.table["timestamp"].tolist() == utc("2026-01-01 23:59", "2026-01-02 00:00", "2026-01-13 00:00")
    assert returned.timestamp_formats == {"a.csv": "%d.%m.%Y %H:%M (day-first: '13.01.2026 00:00' has a day above 12)"}
    assert returned.dayfirst is True


def test_a_value_that_does_not_fit_the_columns_format_is_set_aside(tmp_path):
    path = write(tmp_path, "a.csv", rows("t,a", "13.01.2026 00:00,1", "01/14/2026 00:01,2", "14.01.2026 00:02,3"))

    returned = ingest([path])

    assert status_of(returned, 1) == "unparseable timestamp: does not fit the column's format '%d.%m.%Y %H:%M'"
    assert returned.counts["unparseable_timestamp"] == 1
    assert_rows_add_up(returned)


def test_sensor_intervals_are_the_median_spacing_of_each_sensors_readings():
    times = pd.date_range("2026-01-01", periods=30, freq="1min", tz="UTC")
    table = pd.DataFrame({"timestamp": times, "fast": np.arange(30.0), "slow": np.where(np.arange(30) % 3 == 0, 1.0, np.nan)})

    returned = sensor_intervals(table, ["fast", "slow"])

    assert returned == {"fast": 60.0, "slow": 180.0}  # 10 readings 3 min apart
    # Fewer than MIN_READINGS readings tell no interval of their own: the table's.
    assert sensor_intervals(table.head(20), ["fast", "slow"]) == {"fast": 60.0, "slow": 60.0}


def _slow_table(values: list[float | None]) -> pd.DataFrame:
    n = len(values)
    return pd.DataFrame(
        {
            "source": "a",
            "row": np.arange(n),
            "timestamp": pd.date_range("2026-01-01", periods=n, freq="1min", tz="UTC"),
            "slow": np.array([np.nan if v is None else v for v in values]),
        }
    )


def test_a_slower_sensor_holds_its_reading_until_the_next_for_its_own_interval():
    # A reading every 3 minutes: the two rows after each reading hold it.
    table = _slow_table([1, None, None, 2, None, None, 3, None])

    out, rejected, filled, missing, held = repair_missing(table, ["slow"], max_fill_rows=1, slow={"slow": 180.0})

    expected = [1, 1, 1, 2, 2, 2, 3, 3]
    assert out["slow"].tolist() == expected
    assert (held, filled, missing) == ({"slow": 5}, {"slow": 0}, {"slow": 5})
    assert out["_held"].sum() == 5 and out["_repaired"].sum() == 0 and rejected.empty


def test_a_slower_sensor_missing_more_readings_than_max_fill_rows_is_a_gap():
    # Readings at 0 and 9 min, interval 3 min: readings at 3 and 6 missed (2 > max_fill_rows=1).
    table = _slow_table([1, None, None, None, None, None, None, None, None, 4])

    out, rejected, filled, missing, held = repair_missing(table, ["slow"], max_fill_rows=1, slow={"slow": 180.0})

    assert out["slow"].tolist() == [1, 1, 1, 4]  # held for its own interval, then set aside
    assert rejected["row"].tolist() == [3, 4, 5, 6, 7, 8]
    assert rejected["status"].iloc[0] == (
        "missing value in column 'slow' (no reading for 360 s, more than max_fill_rows=1 x its interval of 180 s)"
    )
    assert held == {"slow": 2}


def test_a_slower_sensor_missing_one_reading_is_filled():
    table = _slow_table([1, None, None, None, None, None, 3])  # the reading at 3 min is missing

    out, rejected, filled, _, held = repair_missing(table, ["slow"], max_fill_rows=1, slow={"slow": 180.0})

    assert out["slow"].tolist() == [1, 1, 1, 1, 1, 1, 3]
    assert (held, filled) == ({"slow": 2}, {"slow": 3}) and rejected.empty


def test_slower_sensors_are_those_above_one_and_a_half_table_intervals():
    assert slower_sensors({"a": 60.0, "b": 90.0, "c": 600.0}, 60.0) == {"c": 600.0}


def test_mixed_rates_are_held_in_validate_and_not_set_aside():
    n = 100
    frame = pd.DataFrame(
        {
            "timestamp": pd.date_range("2026-01-01", periods=n, freq="1min").astype(str),
            "fast": np.arange(n, dtype=float),
            "slow": np.where(np.arange(n) % 10 == 0, np.arange(n) / 10, np.nan),
        }
    )

    returned = validate([RawSource("a.csv", frame, "-")], IngestConfig())

    assert returned.counts["rows_clean"] == n and returned.counts["rows_held"] == 90
    assert returned.sensor_intervals == {"fast": 60.0, "slow": 600.0}
    assert returned.table["slow"].tolist()[:12] == [0.0] * 10 + [1.0, 1.0]
    # A model's intervals without the slow one (an old bundle): as before, the gaps are set aside.
    old = validate([RawSource("a.csv", frame, "-")], IngestConfig(), intervals={})
    assert old.counts["missing_run_too_long"] == 90  # 9 rows after each reading, more than max_fill_rows=5
    assert_rows_add_up(returned)


def test_resample_puts_rows_on_one_grid_with_an_aggregate_per_sensor():
    times = pd.to_datetime(["2026-01-01 00:00:00", "2026-01-01 00:00:20", "2026-01-01 00:01:00", "2026-01-01 00:01:40"], utc=True)
    table = pd.DataFrame(
        {"source": "a", "row": np.arange(4), "timestamp": times, "m": [1.0, 3.0, 5.0, 7.0], "l": [1.0, np.nan, 5.0, 7.0]}
    )

    binned, merged = resample_table(table, ["m", "l"], "1min", {"l": "last"})

    assert binned["timestamp"].tolist() == utc("2026-01-01 00:00", "2026-01-01 00:01")
    assert binned["m"].tolist() == [2.0, 6.0] and binned["l"].tolist() == [1.0, 7.0]
    assert binned["row"].tolist() == [0, 2]
    assert merged["row"].tolist() == [1, 3]
    assert merged["status"].iloc[0] == "resampled: merged into the 1min row at 2026-01-01T00:00:00Z"


def test_tall_file_is_pivoted_with_duplicates_conflicts_and_bad_quality_set_aside(tmp_path):
    path = write(
        tmp_path,
        "tall.csv",
        rows(
            "time,tag,value,q",
            "2026-01-01 00:00,a,1.5,good",
            "2026-01-01 00:00,b,10,192",
            "2026-01-01 00:01,a,2.5,GOOD",
            "2026-01-01 00:01,b,11,bad",
            "2026-01-01 00:01,a,2.5,good",
            "2026-01-01 00:02,a,3,good",
            "2026-01-01 00:02,a,4,good",
            "2026-01-01 00:02,b,12,good",
        ),
    )
    config = IngestConfig(layout="tall", tag_column="tag", value_column="value", quality_column="q")

    returned = ingest([path], config)

    assert returned.sensors == ["a", "b"]
    assert returned.table["a"].tolist() == [1.5, 2.5, 2.5]  # 00:02's a conflicts: set aside, the cell filled
    assert returned.table["b"].tolist() == [10.0, 10.0, 12.0]  # 00:01's b is bad: set aside, the cell filled
    assert returned.table["row"].tolist() == [0, 2, 7]  # a wide row keeps the file row of its first usable reading
    assert status_of(returned, 3) == "bad quality 'bad' of tag 'b' (not in ingest.good_quality)"
    assert status_of(returned, 4) == "duplicate reading: same tag, time and value as row 3"
    assert status_of(returned, 5).startswith("conflicting reading") and status_of(returned, 6).startswith("conflicting reading")
    counts = returned.counts
    assert (counts["tall_readings"], counts["bad_quality"], counts["duplicate_readings"], counts["conflicting_readings"]) == (
        8,
        1,
        1,
        2,
    )
    assert counts["rows_in"] == 3 + 4  # wide rows + readings set aside
    assert_rows_add_up(returned)


def test_tall_file_without_its_tag_column_is_input_error(tmp_path):
    path = write(tmp_path, "tall.csv", rows("time,name,value", "2026-01-01 00:00,a,1"))

    with pytest.raises(InputError, match="tall.csv: tag column 'tag' not found") as info:
        ingest([path], IngestConfig(layout="tall", tag_column="tag", value_column="value"))
    assert one_line(str(info.value))
