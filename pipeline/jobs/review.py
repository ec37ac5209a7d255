"""The ``review`` job: operators' verdicts on events, kept in the tracking store.

Everything is checked before anything is written: the file's columns and each row's event id and
verdict, and that every event is one the model's scoring runs reported. Then one ``review`` run
records them all (``Tracker.record_reviews``); a bad input writes nothing.
"""

from __future__ import annotations

import csv
import getpass
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import PipelineConfig
from pipeline.detector import reviews as rv
from pipeline.detector.fitting import normal_mask
from pipeline.errors import InputError
from pipeline.store.state import now_iso
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class ReviewOutcome:
    run_id: str | None
    counts: dict[str, int]  # verdict -> events given it by this call
    notes: list[str] = field(default_factory=list)  # duplicates and replaced verdicts: the latest wins


def review_job(
    model_name: str,
    tracking_uri: str | None,
    event: int | None = None,
    verdict: str | None = None,
    note: str | None = None,
    asset: str | None = None,
    by: str | None = None,
    reviews_file: str | Path | None = None,
) -> ReviewOutcome:
    """Record verdicts on the model's events: one (``event``, ``verdict``) or a file of them.

    Raises:
        InputError: the file is missing or malformed, an event is unknown, a verdict is not one of
            ``confirmed``, ``false_alarm``, ``unsure`` (nothing is recorded).
    """
    given, origin = _given(event, verdict, note, asset, reviews_file)
    notes = rv.duplicates(given)
    for line in notes:
        log.warning("%s: %s", origin, line)
    given = rv.latest_verdicts(given)
    tracker = Tracker(tracking_uri, model_name)
    catalogue = tracker.event_catalogue(model_name)
    if not len(catalogue):
        raise InputError(f"model '{model_name}': no scoring run in {tracker.uri} reported an event to review")
    resolved = rv.resolve(given, catalogue, origin)
    resolved["reviewed_by"] = by or _user()
    resolved["reviewed_at"] = now_iso()
    resolved = resolved[rv.REVIEW_COLUMNS]

    earlier = rv.latest_verdicts(tracker.stored_reviews(model_name))
    if len(earlier):
        before = earlier.set_index(rv.KEY)
        given = {key: (row.verdict, row.note) for key, row in before.iterrows()}
        same = [given.get((r.asset, int(r.event_id))) == (r.verdict, r.note) for r in resolved.itertuples(index=False)]
        if any(same):  # a report filled in again keeps the verdicts it was given: not recorded twice
            log.info("%d verdict(s) already recorded as given; left out", sum(same))
            resolved = resolved[[not x for x in same]].reset_index(drop=True)
        for review in resolved.itertuples(index=False):
            key = (review.asset, int(review.event_id))
            if key in before.index and before.loc[key, "verdict"] != review.verdict:
                name = f"asset {key[0]} event {key[1]}" if key[0] else f"event {key[1]}"
                was = f"{before.loc[key, 'verdict']} ({before.loc[key, 'reviewed_at']})"
                line = f"{name}: was {was}; the latest, {review.verdict}, wins"
                notes.append(line)
                log.warning("%s", line)
    if not len(resolved):
        return ReviewOutcome(None, dict.fromkeys(rv.VERDICTS, 0), notes)
    run_id = tracker.record_reviews(model_name, resolved, run_name=f"review {model_name} ({len(resolved)} event(s))")
    counts = {v: int((resolved["verdict"] == v).sum()) for v in rv.VERDICTS}
    log.info("recorded %d verdict(s) on %s in run %s", len(resolved), model_name, run_id)
    return ReviewOutcome(run_id, counts, notes)


def _given(event, verdict, note, asset, reviews_file) -> tuple[pd.DataFrame, str]:
    """The verdicts asked for, parsed and checked (``detector.reviews.parse_reviews``), and where they came from."""
    if reviews_file is not None:
        if event is not None or verdict is not None:
            raise InputError("review: give --event and --verdict, or --reviews FILE, not both")
        path = Path(reviews_file)
        if not path.is_file():
            raise InputError(f"--reviews {path}: file not found")
        frame = _read_sheet(path)
        if asset and "asset" not in frame.columns:
            frame["asset"] = asset
        parsed = rv.parse_reviews(frame, str(path))
        if not len(parsed):
            raise InputError(f"--reviews {path}: no row has a verdict")
        return parsed, str(path)
    if event is None or verdict is None:
        raise InputError("review: give --event ID and --verdict confirmed|false_alarm|unsure, or --reviews FILE")
    frame = pd.DataFrame({"event_id": [str(event)], "verdict": [verdict], "note": [note or ""], "asset": [asset or ""]})
    return rv.parse_reviews(frame, "review", numbered=False), "review"


def _read_sheet(path: Path) -> pd.DataFrame:
    """A CSV of any delimiter (a spreadsheet's export), every cell as text."""
    options = dict(dtype=str, keep_default_na=False)
    try:
        try:
            return pd.read_csv(path, sep=None, engine="python", **options)
        except csv.Error:  # one column, or too little text to tell the delimiter: a comma
            return pd.read_csv(path, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"--reviews {path}: not a readable CSV ({str(exc).splitlines()[0]})") from None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def latest_reviews(tracker: Tracker, model_name: str, asset: str | None = None) -> pd.DataFrame:
    """The latest verdict per event of a model (of one asset of a fleet when ``asset`` is given)."""
    latest = rv.latest_verdicts(tracker.stored_reviews(model_name))
    if asset is not None and len(latest):
        latest = latest[latest["asset"] == asset].reset_index(drop=True)
    return latest


def verdict_moves(
    table: pd.DataFrame, config: PipelineConfig, verdicts: pd.DataFrame, in_period: np.ndarray | None = None
) -> tuple[np.ndarray | None, dict[str, float]]:
    """The rows the verdicts move at training (``detector.reviews.period_moves``; None when there are
    none) and how many rows each verdict moved, as the training run logs them."""
    if not len(verdicts):
        return None, {}
    moved = rv.period_moves(table["timestamp"], verdicts)
    counts = rv.moved_counts(normal_mask(table, config, in_period), normal_mask(table, config, in_period, moved))
    figures = {
        **counts,
        "reviewed_false_alarms": float((verdicts["verdict"] == rv.FALSE_ALARM).sum()),
        "reviewed_confirmed": float((verdicts["verdict"] == rv.CONFIRMED).sum()),
    }
    log.info(
        "verdicts: %d row(s) of %d period(s) reviewed false_alarm join the normal data; "
        "%d row(s) of %d confirmed period(s) leave it",
        counts["review_rows_to_normal"],
        figures["reviewed_false_alarms"],
        counts["review_rows_out_of_normal"],
        figures["reviewed_confirmed"],
    )
    return moved, figures
