"""The verdict loop measured: a scripted reviewer, one retrain with the verdicts, and what changed.

Each case is one stream with known faults, cut in time into the normal training rows, a review
part and a check part (later rows no one reviewed):

1. version 1 is fitted on the normal rows and scores the stream;
2. the scripted reviewer gives each event that starts in the review part a verdict from the
   truth: ``confirmed`` when it overlaps a fault (the fault's rows and the ``window_size`` rows
   after it, whose windows still hold fault rows), else ``false_alarm``;
3. version 2 is fitted with those verdicts (``pipeline.detector.reviews.period_moves``: the false
   alarms join the normal rows, the confirmed periods are kept out) and scores the stream.

Figures: confirmed events version 2 still flags (none may be lost); in the check part, the false
events of version 1, those among them that repeat a reviewed false alarm (the
``likely_known_false_alarm`` rule), how many of those repeats version 2 no longer flags, both
versions' false events, and the faults each catches.

Cases: the bundled sample (``data/sample`` with ``data/sample.yaml``; faults from
``pipeline.sample_data.FAULTS``; review part: the first half of the rows after the normal period)
and SKAB's ``valve1`` and ``valve2`` groups, each a continuous stream of files (``other`` is left
out: its files overlap in time). SKAB follows its protocol: rows 0..399 of each file are the normal
rows, the others are judged; the review part is the first half of the files. With
``--recurring``, also a synthetic stream with a benign pattern that recurs daily (``recurring_case``),
the situation verdicts are for: neither the sample nor SKAB gives recurring false alarms.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.benchmark.skab import LABEL_COLUMNS, TRAIN_ROWS, read_skab
from pipeline.config import PipelineConfig, load_config, with_overrides
from pipeline.data.ingest import IngestResult
from pipeline.data.loading import load_input
from pipeline.detector.bundle import ModelBundle
from pipeline.detector.fitting import fit_bundle, normal_mask
from pipeline.detector.reviews import CONFIRMED, FALSE_ALARM, known_false_alarms, moved_counts, period_moves
from pipeline.detector.scoring import flag_events, score_rows
from pipeline.errors import InputError
from pipeline.reports.tables import summarise_events
from pipeline.sample_data import FAULTS, START, generate
from pipeline.store.names import REVIEW_BENCHMARK_JSON
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)
SKAB_STREAMS = ("valve1", "valve2")
EXPERIMENT = "review-benchmark"


@dataclass
class Case:
    name: str
    result: IngestResult
    config: PipelineConfig
    in_period: np.ndarray | None  # the normal rows, when not given by the config
    fault: np.ndarray  # per row: inside a fault
    review: np.ndarray  # per row: in the review part
    check: np.ndarray  # per row: in the check part


def sample_case(folder: Path, config_file: Path, base: PipelineConfig | None = None) -> Case:
    """The bundled sample: normal until ``training.normal_until``; the rest split in half by time."""
    config = load_config(config_file)
    if base is not None:
        config = with_overrides(base, {"training.normal_until": config.training.normal_until})
    files = sorted((p.name, p) for p in folder.glob("*.csv"))
    if not files:
        raise InputError(f"--sample {folder}: no CSV file")
    result = load_input(files, config.ingest).result
    times = result.table["timestamp"].dt.tz_convert(None)
    fault = np.zeros(len(times), dtype=bool)
    for f in FAULTS:
        start = pd.Timestamp(f.start)
        fault |= ((times >= start) & (times < start + pd.Timedelta(hours=f.hours))).to_numpy()
    later = ~normal_mask(result.table, config)
    split = np.flatnonzero(later)[later.sum() // 2]
    rows = np.arange(len(times))
    return Case("sample", result, config, None, fault, later & (rows < split), later & (rows >= split))


RECURRING_NORMAL_UNTIL = "2026-10-08 00:00:00"
RECURRING_CHECK_FROM = "2026-10-15 00:00:00"


def recurring_case(folder: Path, base: PipelineConfig | None = None) -> Case:
    """A synthetic stream with a recurring benign pattern: the sample's pump over 21 days, normal
    for the first 7; from day 8, every day at 03:00 a 30-minute changeover to the standby drive
    (speed -6 %, flow -8 %, current -5 %) that training never saw; the sample's four faults on
    days 10-13 and again a week later. Written as CSV to ``folder`` (read back as ``run`` would)."""
    shifted = [replace(f, start=str(pd.Timestamp(f.start) + pd.Timedelta(days=7))) for f in FAULTS]
    frame = generate(days=21, seed=11, faults=[*FAULTS, *shifted])
    times = frame["timestamp"]
    benign = np.zeros(len(frame), dtype=bool)
    for day in range(7, 21):
        start = START + pd.Timedelta(days=day, hours=3)
        benign |= ((times >= start) & (times < start + pd.Timedelta(minutes=30))).to_numpy()
    for sensor, factor in (("speed", 0.94), ("flow_rate", 0.92), ("motor_current", 0.95)):
        frame.loc[benign, sensor] = (frame.loc[benign, sensor] * factor).round(4)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pump_recurring.csv"
    frame.to_csv(path, index=False, date_format="%Y-%m-%d %H:%M:%S")
    config = with_overrides(base or PipelineConfig(), {"training.normal_until": RECURRING_NORMAL_UNTIL})
    result = load_input([(path.name, path)], config.ingest).result
    naive = result.table["timestamp"].dt.tz_convert(None)
    fault = np.zeros(len(naive), dtype=bool)
    for f in [*FAULTS, *shifted]:
        start = pd.Timestamp(f.start)
        fault |= ((naive >= start) & (naive < start + pd.Timedelta(hours=f.hours))).to_numpy()
    later = ~normal_mask(result.table, config)
    check = (naive >= pd.Timestamp(RECURRING_CHECK_FROM)).to_numpy()
    return Case("synthetic recurring", result, config, None, fault, later & ~check, later & check)


def skab_case(data: Path, group: str, base: PipelineConfig | None = None) -> Case:
    """One SKAB group as a stream: rows 0..399 of each file normal; the first half of the files reviewed."""
    paths = sorted((data / group).glob("*.csv"), key=lambda p: (len(p.stem), p.stem))
    if not paths:
        raise InputError(f"--skab {data}: no {group}/*.csv")
    config = with_overrides(
        base or PipelineConfig(), {"ingest.timestamp_column": "datetime", "ingest.exclude_columns": LABEL_COLUMNS}
    )
    result = load_input([(f"{group}/{p.name}", p) for p in paths], config.ingest).result
    table = result.table
    labels = {f"{group}/{p.name}": read_skab(p)["anomaly"].to_numpy() for p in paths}
    fault = np.array([labels[s][r] == 1 for s, r in zip(table["source"], table["row"])], dtype=bool)
    reviewed = {f"{group}/{p.name}" for p in paths[: len(paths) // 2]}
    judged = (table["row"] >= TRAIN_ROWS).to_numpy()
    in_review = table["source"].isin(reviewed).to_numpy()
    return Case(f"skab {group}", result, config, ~judged, fault, judged & in_review, judged & ~in_review)


def _scored(bundle: ModelBundle, table: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    rows = score_rows(bundle, table)
    event = flag_events(bundle, rows)
    events = summarise_events(table, rows, event, bundle.threshold.value, bundle.sensors, "", "benchmark")
    return event, events.assign(asset="")


def _extended(fault: np.ndarray, rows: int) -> np.ndarray:
    """Each fault's rows and the ``rows`` after it (windows that still hold fault rows)."""
    ends = np.flatnonzero(fault[:-1] & ~fault[1:])
    out = fault.copy()
    for end in ends:
        out[end + 1 : end + 1 + rows] = True
    return out


def _runs(mask: np.ndarray) -> list[np.ndarray]:
    """The rows of each contiguous run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [np.arange(a, b) for a, b in zip(edges[::2], edges[1::2])]


def run_case(case: Case) -> dict[str, Any]:
    """Version 1, the scripted review, version 2 with the verdicts, and the figures (module docstring)."""
    started = time.perf_counter()
    table = case.result.table
    first, _ = fit_bundle(case.result, case.config, case.in_period)
    event1, events1 = _scored(first, table)
    truth = _extended(case.fault, first.window_size)
    rows_of = {e: np.flatnonzero(event1 == e) for e in events1["event_id"]}
    starts = {e: rows[0] for e, rows in rows_of.items()}

    reviewed = events1[[case.review[starts[e]] for e in events1["event_id"]]].copy()
    reviewed["verdict"] = [CONFIRMED if truth[rows_of[e]].any() else FALSE_ALARM for e in reviewed["event_id"]]
    moved = period_moves(table["timestamp"], reviewed)
    before = normal_mask(table, case.config, case.in_period)
    moves = moved_counts(before, normal_mask(table, case.config, case.in_period, moved))
    second, _ = fit_bundle(case.result, case.config, case.in_period, moved)
    event2, events2 = _scored(second, table)
    flagged2 = event2 > 0

    confirmed = reviewed[reviewed["verdict"] == CONFIRMED]["event_id"]
    false_reviewed = reviewed[reviewed["verdict"] == FALSE_ALARM]["event_id"]
    later1 = events1[[case.check[starts[e]] and not truth[rows_of[e]].any() for e in events1["event_id"]]]
    repeats = later1[known_false_alarms(later1, reviewed, case.config.review).notna().to_numpy()]
    rows_of2 = {e: np.flatnonzero(event2 == e) for e in events2["event_id"]}
    later2 = [e for e, rows in rows_of2.items() if case.check[rows[0]] and not truth[rows].any()]
    faults = [rows for rows in _runs(case.fault & case.check)]
    return {
        "case": case.name,
        "rows": len(table),
        "normal_rows_v1": int(before.sum()),
        **moves,
        "reviewed_events": len(reviewed),
        "confirmed": len(confirmed),
        "confirmed_still_flagged_v2": int(sum(flagged2[rows_of[e]].any() for e in confirmed)),
        "false_alarms_reviewed": len(false_reviewed),
        "reviewed_false_alarms_still_flagged_v2": int(sum(flagged2[rows_of[e]].any() for e in false_reviewed)),
        "check_false_events_v1": len(later1),
        "check_repeat_false_events_v1": len(repeats),
        "check_repeats_gone_v2": int(sum(not flagged2[rows_of[e]].any() for e in repeats["event_id"])),
        "check_false_events_v2": len(later2),
        "check_faults": len(faults),
        "check_faults_caught_v1": int(sum((event1[rows] > 0).any() for rows in faults)),
        "check_faults_caught_v2": int(sum(flagged2[rows].any() for rows in faults)),
        "threshold_v1": first.threshold.value,
        "threshold_v2": second.threshold.value,
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_review_benchmark(
    out: Path,
    sample: Path | None,
    sample_config: Path | None,
    skab: Path | None,
    base: PipelineConfig | None = None,
    tracking_uri: str | None = None,
    recurring: bool = False,
) -> dict[str, Any]:
    """Every case asked for; ``OUT/review_benchmark.json`` and one MLflow run (experiment ``review-benchmark``)."""
    cases = []
    if sample is not None:
        cases.append(lambda: sample_case(sample, sample_config or sample.parent / "sample.yaml", base))
    if skab is not None:
        cases += [lambda group=group: skab_case(skab, group, base) for group in SKAB_STREAMS]
    if recurring:
        cases.append(lambda: recurring_case(out / "recurring", base))
    if not cases:
        raise InputError("benchmark reviews: give --sample DIR, --skab DIR and/or --recurring")
    results = []
    for make in cases:
        case = make()
        log.info("case %s: %d rows", case.name, len(case.result.table))
        results.append(run_case(case))
        log.info("case %s: %s", case.name, results[-1])
    summary = {"cases": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / REVIEW_BENCHMARK_JSON).write_text(json.dumps(summary, indent=2))
    tracker = Tracker(tracking_uri, EXPERIMENT)
    with tracker.run("benchmark", run_name="benchmark reviews", tags={"suite": "reviews"}):
        tracker.log_metrics({f"{c['case'].replace(' ', '_')}.{k}": v for c in results for k, v in c.items() if k != "case"})
        tracker.log_dict(summary, REVIEW_BENCHMARK_JSON)
    return summary


COLUMNS = {
    "reviewed_events": "reviewed",
    "confirmed": "confirmed",
    "confirmed_still_flagged_v2": "confirmed kept",
    "false_alarms_reviewed": "false alarms",
    "check_false_events_v1": "later false (v1)",
    "check_repeat_false_events_v1": "repeats (v1)",
    "check_repeats_gone_v2": "repeats gone (v2)",
    "check_false_events_v2": "later false (v2)",
    "check_faults_caught_v1": "faults caught v1",
    "check_faults_caught_v2": "faults caught v2",
}


def render(summary: dict[str, Any]) -> str:
    """The README table: one row per case."""
    lines = ["| case | " + " | ".join(COLUMNS.values()) + " |", "|" + " --- |" * (len(COLUMNS) + 1)]
    for c in summary["cases"]:
        cells = [str(c[k]) if "faults_caught" not in k else f"{c[k]} of {c['check_faults']}" for k in COLUMNS]
        lines.append(f"| {c['case']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
