"""Bad-input cases for the scheduled run, shared by ``tests/test_run_bad_input.py`` and a report.

Each case writes one file into a fresh ``--input`` and runs ``anomaly-pipeline run`` on it with
a trained model. Print what every case does, with its counts, with::

    PYTHONPATH=. python -m tests.bad_input_cases     # trains a tiny model first (about a minute)
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.cli import main

ROWS = 200


@dataclass
class Case:
    name: str
    behaviour: str
    build: Callable[[pd.DataFrame], str | bytes]  # the tiny frame -> file content
    code: int  # expected exit code
    config: str = ""  # YAML added to the run config
    model: str = "pump"  # another name: the run trains a model of that name on the case's file first


def _csv(frame: pd.DataFrame, **kwargs) -> str:
    return frame.to_csv(index=False, **kwargs)


def _base(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[:ROWS].copy()


def _set(frame: pd.DataFrame, rows, column: str, value) -> pd.DataFrame:
    out = _base(frame).astype({column: object})
    out.loc[rows, column] = value
    return out


def _dst_frame(frame: pd.DataFrame) -> pd.DataFrame:
    # Naive local times across the end of summer time in Berlin: 02:00-02:59 happen twice.
    first = pd.date_range("2026-10-25 01:30", "2026-10-25 02:59", freq="1min")
    second = pd.date_range("2026-10-25 02:00", periods=ROWS - len(first), freq="1min")
    out = _base(frame)
    out["timestamp"] = np.concatenate([first.astype(str), second.astype(str)])
    return out


def _mixed_zones(frame: pd.DataFrame) -> pd.DataFrame:
    out = _base(frame)
    text = out["timestamp"].astype(str)
    out["timestamp"] = np.where(np.arange(ROWS) < 100, text + "+00:00", text)
    return out


CASES = [
    Case("base", "a clean file: every row scored", lambda f: _csv(_base(f)), 0),
    Case(
        "semicolon_decimal_comma",
        "';' and decimal comma, with ingest.decimal=','",
        lambda f: _csv(_base(f), sep=";", decimal=","),
        0,
        "ingest: {decimal: ','}",
    ),
    Case(
        "decimal_comma_not_configured",
        "decimal comma without ingest.decimal: every value is text -> file quarantined",
        lambda f: _csv(_base(f), sep=";", decimal=","),
        2,
    ),
    Case(
        "wrong_delimiter",
        "ingest.delimiter ',' on a ';' file -> file quarantined (column not found)",
        lambda f: _csv(_base(f), sep=";"),
        2,
        "ingest: {delimiter: ','}",
    ),
    Case(
        "missing_sensor_column",
        "a model sensor column missing -> file quarantined",
        lambda f: _csv(_base(f).drop(columns="speed")),
        2,
    ),
    Case(
        "renamed_sensor_column",
        "a model sensor column renamed -> file quarantined",
        lambda f: _csv(_base(f).rename(columns={"speed": "speed_rpm"})),
        2,
    ),
    Case(
        "extra_columns",
        "extra columns -> warned about, ignored (listed in quality.json)",
        lambda f: _csv(_base(f).assign(site="north", spare=1.0)),
        0,
    ),
    Case(
        "columns_reordered",
        "columns in another order -> matched by name",
        lambda f: _csv(_base(f)[list(f.columns[:1]) + list(f.columns[1:][::-1])]),
        0,
    ),
    Case(
        "text_in_numeric",
        "text in a sensor cell -> that row set aside (status names value and column)",
        lambda f: _csv(_set(f, 50, "motor_current", "ERR")),
        0,
    ),
    Case(
        "exact_duplicates",
        "two exact duplicate rows -> dropped, counted",
        lambda f: _csv(pd.concat([_base(f), _base(f).iloc[[60, 61]]]).sort_index(kind="stable")),
        0,
    ),
    Case(
        "conflicting_timestamp",
        "same timestamp, other values -> all rows of that time set aside",
        lambda f: _csv(pd.concat([_base(f), _base(f).iloc[[70]].assign(speed=1.0)]).sort_index(kind="stable")),
        0,
    ),
    Case(
        "out_of_order",
        "two rows swapped -> sorted, counted",
        lambda f: _csv(_base(f).iloc[[*range(80), 81, 80, *range(82, ROWS)]]),
        0,
    ),
    Case(
        "gap_longer_than_window",
        "30 min gap (> window of 8 min) -> no window across it: 7 more unscored rows",
        lambda f: _csv(_base(f).drop(index=range(100, 130))),
        0,
    ),
    Case(
        "nan_runs",
        "3 missing (filled, repaired) and 10 missing (set aside, > max_fill_rows=5)",
        lambda f: _csv(_set(_set(f, range(20, 23), "motor_current", np.nan), range(120, 130), "flow_rate", np.nan)),
        0,
    ),
    Case(
        "flatlined_sensor",
        "a sensor stuck for 100 rows -> quality flag (quality.json), not an anomaly rule",
        lambda f: _csv(_set(f, range(50, 150), "speed", 1480.0)),
        0,
    ),
    Case(
        "mixed_time_zones",
        "some timestamps with an offset, some without, no zone configured -> file quarantined",
        lambda f: _csv(_mixed_zones(f)),
        2,
    ),
    Case(
        "mixed_time_zones_zone_given",
        "the same, with ingest.source_timezone set -> naive ones read in that zone",
        lambda f: _csv(_mixed_zones(f)),
        0,
        "ingest: {source_timezone: UTC}",
    ),
    Case(
        "ambiguous_local_time",
        "naive Berlin times across the DST change, ingest.source_timezone set -> repeated hour set aside",
        lambda f: _csv(_dst_frame(f)),
        0,
        "ingest: {source_timezone: Europe/Berlin}",
    ),
    Case("header_only", "only a header -> file quarantined", lambda f: _csv(_base(f).iloc[:0]), 2),
    Case("binary", "binary bytes -> file quarantined", lambda f: b"\x00\x01\x02PK\x03\x04" * 50, 2),
    Case("truncated", "last line cut off mid-row -> file quarantined naming the line", lambda f: _csv(_base(f))[:-40], 2),
    Case("empty", "zero bytes -> file quarantined", lambda f: "", 2),
]


# ----------------------------------------------------------------------- issue 16: plant data as it comes
def _dated(frame: pd.DataFrame, pattern: str, start: str | None = None) -> pd.DataFrame:
    """The base rows with timestamps written with ``pattern``, moved to begin at ``start``."""
    out = _base(frame)
    stamps = pd.to_datetime(out["timestamp"])
    if start is not None:
        stamps = stamps - stamps.iloc[0] + pd.Timestamp(start)
    out["timestamp"] = stamps.dt.strftime(pattern)
    return out


def _mixed_rates(frame: pd.DataFrame, rows: int = 3000) -> pd.DataFrame:
    """Two sensors every minute and one every 10 minutes (its other cells empty, as historians export)."""
    rng = np.random.default_rng(16)
    minutes = np.arange(rows)
    out = pd.DataFrame({"timestamp": pd.date_range("2026-10-01", periods=rows, freq="1min").astype(str)})
    out["flow_rate"] = 50 + 5 * np.sin(2 * np.pi * minutes / 720) + rng.normal(0, 0.3, rows)
    out["motor_current"] = 30 + 2 * np.sin(2 * np.pi * minutes / 720 + 1) + rng.normal(0, 0.2, rows)
    slow = 60 + 3 * np.sin(2 * np.pi * minutes / 1440) + rng.normal(0, 0.1, rows)
    out["bearing_temperature"] = np.where(minutes % 10 == 0, slow, np.nan)
    return out


def _tall(frame: pd.DataFrame, quality: bool = False) -> pd.DataFrame:
    """The base rows as a historian writes them: one row per reading (timestamp, tag, value[, quality])."""
    wide = _base(frame)
    tall = wide.melt(id_vars="timestamp", var_name="tag", value_name="value")
    tall = tall.sort_values("timestamp", kind="stable").reset_index(drop=True)
    if quality:
        tall["quality"] = np.resize(["Good", "good", "192"], len(tall))
        bad = (tall["tag"] == "motor_current") & tall["timestamp"].isin(wide["timestamp"].iloc[15::18].head(10))
        tall.loc[bad, "quality"] = "Bad"
    return tall


TALL = "ingest: {layout: tall, tag_column: tag, value_column: value}"
ISSUE_16_CASES = [
    Case(
        "dayfirst_deciding",
        "day-first dates 12.10.2026 22:00 .. 13.10.2026: a day above 12 decides the column",
        lambda f: _csv(_dated(f, "%d.%m.%Y %H:%M", "2026-10-12 22:00")),
        0,
    ),
    Case(
        "dayfirst_ambiguous",
        "day-first dates 01.10.2026 only (fit both readings, nothing decides) -> file quarantined naming the settings",
        lambda f: _csv(_dated(f, "%d.%m.%Y %H:%M")),
        2,
    ),
    Case(
        "timestamp_format_given",
        "the same ambiguous dates with ingest.timestamp_format -> read exactly so",
        lambda f: _csv(_dated(f, "%d/%m/%Y %H:%M:%S")),
        0,
        "ingest: {timestamp_format: '%d/%m/%Y %H:%M:%S'}",
    ),
    Case(
        "us_month_first",
        "US dates 10/12/2026 10:00:00 PM .. 10/13/2026: a second field above 12 decides month-first",
        lambda f: _csv(_dated(f, "%m/%d/%Y %I:%M:%S %p", "2026-10-12 22:00")),
        0,
    ),
    Case(
        "bom_crlf_semicolon_decimal_comma",
        "UTF-8 BOM, CRLF, ';', decimal comma, quoted day-first dates, with ingest.decimal=','",
        lambda f: "\ufeff" + _csv(_dated(f, "%d.%m.%Y %H:%M", "2026-10-12 22:00"), sep=";", decimal=",", lineterminator="\r\n"),
        0,
        "ingest: {decimal: ','}",
    ),
    Case("utf8_bom", "a UTF-8 byte-order mark before the header -> read as without", lambda f: "\ufeff" + _csv(_base(f)), 0),
    Case("crlf_line_ends", "Windows line ends (CRLF) -> read as LF", lambda f: _csv(_base(f), lineterminator="\r\n"), 0),
    Case("quoted_fields", "every field quoted -> read as unquoted", lambda f: _csv(_base(f), quoting=1), 0),
    Case(
        "mixed_rates_held",
        "2 sensors every 1 min, 1 every 10 min (3,000 rows): the slow one held to its next reading, not set aside",
        lambda f: _csv(_mixed_rates(f)),
        0,
        model="mixed",
    ),
    Case(
        "mixed_rates_resampled",
        "the same with ingest.resample=1min (mean per sensor and bin), then held",
        lambda f: _csv(_mixed_rates(f)),
        0,
        "ingest: {resample: 1min}",
        model="mixed_resampled",
    ),
    Case(
        "tall_export",
        "a tall export (timestamp, tag, value) -> pivoted, scores equal to the wide file",
        lambda f: _csv(_tall(f)),
        0,
        TALL,
    ),
    Case(
        "tall_with_quality",
        "a tall export with a quality column, 10 readings 'Bad' -> set aside, their cells filled",
        lambda f: _csv(_tall(f, quality=True)),
        0,
        "ingest: {layout: tall, tag_column: tag, value_column: value, quality_column: quality}",
    ),
    Case(
        "set_aside_60_percent",
        "text in a sensor in 60 % of the rows -> scored all the same, with a one-line warning and a run tag",
        lambda f: _csv(_set(f, range(0, 120), "motor_current", "ERR")),
        0,
    ),
]
CASES += ISSUE_16_CASES


def run_case(case: Case, frame: pd.DataFrame, root: Path, uri: str, config_text: str) -> dict:
    """Run one case; returns exit code, stderr's error lines, counts and the run's files."""
    (root / "in").mkdir(parents=True)
    content = case.build(frame)
    path = root / "in" / f"{case.name}.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    config = root / "run.yaml"
    config.write_text(config_text + case.config + "\n")
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(
            [
                "run",
                "--input",
                str(root / "in"),
                "--out",
                str(root / "out"),
                "--state",
                str(root / "state"),
                "--config",
                str(config),
                "--model-name",
                case.model,
                "--tracking-uri",
                uri,
            ]
        )
    folders = sorted(p for p in (root / "out").iterdir() if p.is_dir()) if (root / "out").exists() else []
    lines = err.getvalue().splitlines()
    result = {
        "code": code,
        "errors": [line for line in lines if line.startswith("error:")],
        "warnings": [line for line in lines if line.startswith("warning:")],
        "counts": {},
    }
    if folders:
        result["counts"] = json.loads((folders[0] / "run.json").read_text())["rows"]
        result["quality"] = json.loads((folders[0] / "quality.json").read_text())
        result["scores"] = pd.read_csv(folders[0] / "scores.csv")
    return result


def _warned(line: str) -> str:
    """'60% set aside, main reason: unparseable value' from a set-aside warning line."""
    share = line.split(" of its rows set aside", 1)[0].rsplit(" ", 1)[-1]
    reason = line.split("main reason: ", 1)[1].split(" (", 1)[0]
    return f"{share} set aside, main reason: {reason}"


def describe(case: Case, result: dict) -> str:
    counts = result["counts"]
    if not counts:
        reason = result["errors"][0][len("error: quarantined ") :][:110] if result["errors"] else "-"
        return f"{case.name:30s} exit {result['code']}  file quarantined: {reason}"
    keys = [
        "duplicate_rows",
        "conflicting_timestamp",
        "out_of_order",
        "unparseable_value",
        "missing_run_too_long",
        "ambiguous_time",
        "late_rows",
        "unparseable_timestamp",
        "rows_held",
        "rows_resampled",
        "bad_quality",
        "duplicate_readings",
        "conflicting_readings",
    ]
    extra = ", ".join(f"{k}={counts[k]}" for k in keys if counts.get(k))
    flat = [s for s, v in result["quality"].get("sensors", {}).items() if v["flatlined"]]
    ignored = result["quality"].get("ignored_columns", [])
    scored = int(result["scores"]["score"].notna().sum())
    return (
        f"{case.name:30s} exit {result['code']}  in={counts['rows_in']} clean={counts['rows_clean']} "
        f"repaired={counts['rows_repaired']} "
        f"quarantined={counts['rows_quarantined']} scored={scored}"
        + (f"  [{extra}]" if extra else "")
        + (f"  flatlined={flat}" if flat else "")
        + (f"  ignored={ignored}" if ignored else "")
        + (f"  warned: {_warned(result['warnings'][0])}" if result.get("warnings") else "")
    )


if __name__ == "__main__":  # pragma: no cover - a report, run by hand
    import logging

    from pipeline.jobs.train import train_job
    from pipeline.sample_data import generate
    from tests.conftest import (
        TINY_CONFIG_YAML,
        TINY_FAULTS,
        TINY_NORMAL_UNTIL,
        tiny_config,
    )

    logging.disable(logging.WARNING)
    frame = generate(days=1, seed=3, faults=TINY_FAULTS)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frame.to_csv(root / "train.csv", index=False)
        uri = f"sqlite:///{root / 'ml' / 'mlflow.db'}"
        train_job([root / "train.csv"], tiny_config(), "pump", uri)
        config_text = TINY_CONFIG_YAML + f"training:\n  normal_until: '{TINY_NORMAL_UNTIL}'\n"
        for case in CASES:
            print(describe(case, run_case(case, frame, root / case.name, uri, config_text)), flush=True)
