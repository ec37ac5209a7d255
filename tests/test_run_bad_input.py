"""One run-level test per bad-input case (see ``tests/bad_input_cases.py``): a bad file is
quarantined with a one-line reason and exit 2; bad rows are repaired or set aside and counted,
and rows in = clean + repaired + quarantined."""

from __future__ import annotations

import numpy as np
import pytest

from tests.bad_input_cases import CASES, ROWS, describe, run_case
from tests.conftest import TINY_CONFIG_YAML, TINY_NORMAL_UNTIL

CONFIG = TINY_CONFIG_YAML + f"training:\n  normal_until: '{TINY_NORMAL_UNTIL}'\n"
EXPECTED_REASON = {
    "decimal_comma_not_configured": "no usable rows left",
    "wrong_delimiter": "timestamp column 'timestamp' not found",
    "missing_sensor_column": "sensor column 'speed' not found",
    "renamed_sensor_column": "sensor column 'speed' not found",
    "mixed_time_zones": "mixes timestamps with and without a time zone (row 101",
    "header_only": "no data rows (header only)",
    "binary": "binary content",
    "truncated": "line 201: expected 9 fields",
    "empty": "file is empty",
    "dayfirst_ambiguous": "column 'timestamp' (row 1: '01.10.2026 00:00'): dates fit both day-first and month-first",
}
EXPECTED_COUNTS = {  # (clean, repaired, quarantined, counter, value)
    "base": (ROWS, 0, 0, None, 0),
    "semicolon_decimal_comma": (ROWS, 0, 0, None, 0),
    "extra_columns": (ROWS, 0, 0, None, 0),
    "columns_reordered": (ROWS, 0, 0, None, 0),
    "text_in_numeric": (ROWS - 1, 0, 1, "unparseable_value", 1),
    "exact_duplicates": (ROWS, 0, 2, "duplicate_rows", 2),
    "conflicting_timestamp": (ROWS - 1, 0, 2, "conflicting_timestamp", 2),
    "out_of_order": (ROWS, 0, 0, "out_of_order", 1),
    "gap_longer_than_window": (ROWS - 30, 0, 0, None, 0),
    "nan_runs": (ROWS - 13, 3, 10, "missing_run_too_long", 10),
    "flatlined_sensor": (ROWS, 0, 0, None, 0),
    "mixed_time_zones_zone_given": (ROWS, 0, 0, None, 0),
    "ambiguous_local_time": (ROWS - 120, 0, 120, "ambiguous_time", 120),
    "dayfirst_deciding": (ROWS, 0, 0, None, 0),
    "timestamp_format_given": (ROWS, 0, 0, None, 0),
    "us_month_first": (ROWS, 0, 0, None, 0),
    "bom_crlf_semicolon_decimal_comma": (ROWS, 0, 0, None, 0),
    "utf8_bom": (ROWS, 0, 0, None, 0),
    "crlf_line_ends": (ROWS, 0, 0, None, 0),
    "quoted_fields": (ROWS, 0, 0, None, 0),
    "mixed_rates_held": (3000, 0, 0, "rows_held", 2700),
    "mixed_rates_resampled": (3000, 0, 0, "rows_held", 2700),
    "tall_export": (ROWS, 0, 0, "tall_readings", 8 * ROWS),
    "tall_with_quality": (ROWS - 10, 10, 10, "bad_quality", 10),
    "set_aside_60_percent": (ROWS - 120, 0, 120, "unparseable_value", 120),
}
SAME_SCORES_AS_BASE = {  # read another way, the same rows: the same scores
    "columns_reordered",
    "out_of_order",
    "extra_columns",
    "semicolon_decimal_comma",
    "mixed_time_zones_zone_given",
    "dayfirst_deciding",
    "timestamp_format_given",
    "us_month_first",
    "bom_crlf_semicolon_decimal_comma",
    "utf8_bom",
    "crlf_line_ends",
    "quoted_fields",
    "tall_export",
}
WARNED = {"ambiguous_local_time", "set_aside_60_percent"}  # more than ingest.max_set_aside_share set aside


@pytest.fixture(scope="module")
def base_scores(tmp_path_factory, tiny_frame, trained_store):
    import shutil

    root = tmp_path_factory.mktemp("base")
    shutil.copy(trained_store.root / "mlflow.db", root / "mlflow.db")
    return run_case(CASES[0], tiny_frame, root / "case", f"sqlite:///{root / 'mlflow.db'}", CONFIG)["scores"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_case(case, tmp_path, tiny_frame, store, base_scores):
    result = run_case(case, tiny_frame, tmp_path / "case", store, CONFIG)
    print(describe(case, result))
    assert result["code"] == case.code, result["errors"]
    if case.code == 2:
        assert len(result["errors"]) == 1 and f"quarantined {case.name}.csv" in result["errors"][0]
        assert EXPECTED_REASON[case.name] in result["errors"][0]
        quarantine = (tmp_path / "case" / "state" / "quarantine.csv").read_text()
        assert f"{case.name}.csv" in quarantine and EXPECTED_REASON[case.name].split(" (")[0] in quarantine
        return
    counts, scores = result["counts"], result["scores"]
    clean, repaired, quarantined, counter, value = EXPECTED_COUNTS[case.name]
    assert counts["rows_in"] == counts["rows_clean"] + counts["rows_repaired"] + counts["rows_quarantined"] == len(scores)
    assert (counts["rows_clean"], counts["rows_repaired"], counts["rows_quarantined"]) == (clean, repaired, quarantined)
    if counter:
        assert counts[counter] == value
    assert scores["status"].notna().sum() == quarantined  # every set-aside row keeps its row, with the reason
    if case.name in SAME_SCORES_AS_BASE:
        got = scores.sort_values("timestamp", kind="stable").reset_index(drop=True)
        np.testing.assert_allclose(got["score"], base_scores["score"], rtol=1e-5, equal_nan=True)
    if case.name == "text_in_numeric":
        assert "unparseable value 'ERR' in column 'motor_current'" in set(scores["status"].dropna())
    if case.name == "gap_longer_than_window":
        assert scores["score"].isna().sum() == 2 * 7  # 7 rows before a full window, at the start and after the gap
    if case.name == "flatlined_sensor":
        assert result["quality"]["sensors"]["speed"]["flatlined"] is True
        assert not any(v["flatlined"] for s, v in result["quality"]["sensors"].items() if s != "speed")
    if case.name == "extra_columns":
        assert result["quality"]["ignored_columns"] == ["site", "spare"]
    if case.name == "ambiguous_local_time":
        assert scores["status"].dropna().str.startswith("ambiguous or nonexistent local time in Europe/Berlin").all()
    assert bool(result["warnings"]) == (case.name in WARNED), result["warnings"]
    if case.name == "set_aside_60_percent":
        (line,) = result["warnings"]
        assert "set_aside_60_percent.csv: 60% of its rows set aside (120 of 200)" in line
        assert "main reason: unparseable value (120 rows)" in line and "ingest.decimal" in line
        assert result["quality"]["set_aside_over_limit"] == [line[len("warning: ") :]]
    if case.name in ("dayfirst_deciding", "bom_crlf_semicolon_decimal_comma"):
        assert scores["timestamp"].iloc[[0, -1]].tolist() == ["2026-10-12T22:00:00Z", "2026-10-13T01:19:00Z"]
        (described,) = result["quality"]["timestamp_formats"].values()
        assert described == "%d.%m.%Y %H:%M (day-first: '13.10.2026 00:00' has a day above 12)"
    if case.name == "us_month_first":
        (described,) = result["quality"]["timestamp_formats"].values()
        assert described.startswith("%m/%d/%Y %I:%M:%S %p (month-first: '10/13/2026 12:00:00 AM'")
    if case.name.startswith("mixed_rates"):
        assert scores["score"].notna().mean() >= 0.99  # at least 99 % of the rows scored
        slow = result["quality"]["sensors"]["bearing_temperature"]
        assert slow["held_values"] == 2700 and slow["interval_seconds"] == 600.0
        assert result["quality"]["sensors"]["flow_rate"]["interval_seconds"] == 60.0
    if case.name == "tall_with_quality":
        assert scores["status"].dropna().str.startswith("bad quality 'Bad' of tag 'motor_current'").all()
    aside = scores["status"].notna()  # a set-aside row has no score and is never flagged
    assert scores.loc[aside, "score"].isna().all() and (scores.loc[aside, "anomaly"] == 0).all()
