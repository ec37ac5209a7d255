"""Operators' verdicts on events (pure: no I/O, no MLflow).

A verdict names an event (``asset``, empty for one stream, and ``event_id``) and says
``confirmed``, ``false_alarm`` or ``unsure``; the review job resolves the event against the
scored events and keeps its period (``start``, ``end``, UTC) and profile (``top_sensors``,
``peak_score``, ``mean_score``) beside the verdict, so training, promotion and the
known-false-alarm marker need nothing else.

The latest verdict on an event wins (``latest_verdicts``).

A repeat of a reviewed false alarm (``known_false_alarms``): an event of the same asset whose
first ``review.match_top_sensors`` top sensors are, as a set, those of an event reviewed
``false_alarm``, and whose peak and mean scores are each within a factor ``review.profile_ratio``
of that event's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import ReviewConfig
from pipeline.errors import InputError

CONFIRMED, FALSE_ALARM, UNSURE = "confirmed", "false_alarm", "unsure"
VERDICTS = (CONFIRMED, FALSE_ALARM, UNSURE)
KEY = ["asset", "event_id"]
EVENT_FIELDS = ["start", "end", "n_rows", "peak_score", "mean_score", "top_sensors", "model_version", "scoring_run_id"]
REVIEW_COLUMNS = [*KEY, "verdict", "note", "reviewed_by", "reviewed_at", *EVENT_FIELDS]
# What the cumulative anomalies.csv gains.
VERDICT_COLUMNS = ["verdict", "verdict_note", "reviewed_by", "reviewed_at", "likely_known_false_alarm", "like_event"]


def parse_reviews(frame: pd.DataFrame, origin: str, numbered: bool = True) -> pd.DataFrame:
    """The verdicts of a review table (``event_id, verdict[, note][, asset]``), checked row by row.

    Rows with an empty verdict are left out (a report with the ``verdict`` column filled in only
    for some events). ``verdict_note`` is read as ``note`` when there is no ``note`` column.
    ``numbered``: messages name the row's line (a file), else not (the command line).

    Returns:
        Columns ``asset`` (str, empty when none), ``event_id`` (int), ``verdict``, ``note``, ``line``
        (the row's line in the file, header = 1), in the table's order.

    Raises:
        InputError: a required column is missing, an event id is not a positive whole number, or
            a verdict is not one of ``VERDICTS``; the message names the origin, the column and the line.
    """
    for column in ("event_id", "verdict"):
        if column not in frame.columns:
            raise InputError(f"{origin}: no '{column}' column (expected event_id,verdict,note[,asset])")
    note = frame["note"] if "note" in frame.columns else frame.get("verdict_note", pd.Series("", index=frame.index))
    asset = frame["asset"] if "asset" in frame.columns else pd.Series("", index=frame.index)
    out = pd.DataFrame(
        {
            "asset": asset.fillna("").astype(str).str.strip().to_numpy(),
            "event_id": frame["event_id"].to_numpy(),
            "verdict": frame["verdict"].fillna("").astype(str).str.strip().str.lower().to_numpy(),
            "note": note.fillna("").astype(str).to_numpy(),
            "line": np.arange(len(frame)) + 2 if numbered else 0,
        }
    )
    out = out[out["verdict"] != ""].reset_index(drop=True)
    ids = pd.to_numeric(out["event_id"], errors="coerce")
    for i in range(len(out)):
        where = f"{origin}: line {out['line'][i]}: " if numbered else f"{origin}: "
        if not (np.isfinite(ids[i]) and ids[i] == int(ids[i]) and ids[i] >= 1):
            raise InputError(f"{where}event_id {out['event_id'][i]!r} is not an event id (1, 2, ...)")
        if out["verdict"][i] not in VERDICTS:
            raise InputError(f"{where}verdict {out['verdict'][i]!r} is not one of {', '.join(VERDICTS)}")
    out["event_id"] = ids.astype("int64") if len(out) else pd.Series(dtype="int64")
    return out


def duplicates(reviews: pd.DataFrame) -> list[str]:
    """One line per event given more than one verdict in ``reviews`` (the last one wins)."""
    lines = []
    for (asset, event_id), group in reviews.groupby(KEY, sort=True):
        if len(group) > 1:
            name = f"asset {asset} event {event_id}" if asset else f"event {event_id}"
            lines.append(
                f"{name}: {len(group)} verdicts ({', '.join(group['verdict'])}); the latest, {group['verdict'].iloc[-1]}, wins"
            )
    return lines


def latest_verdicts(reviews: pd.DataFrame) -> pd.DataFrame:
    """The last verdict per event of verdicts in the order they were given."""
    if not len(reviews):
        return pd.DataFrame(columns=REVIEW_COLUMNS)
    return reviews.drop_duplicates(KEY, keep="last").reset_index(drop=True)


def resolve(reviews: pd.DataFrame, catalogue: pd.DataFrame, origin: str) -> pd.DataFrame:
    """The verdicts with their events' periods and profiles from ``catalogue`` (the scored events).

    ``catalogue`` has ``asset`` (empty for one stream), ``event_id`` and ``EVENT_FIELDS``; a later
    row of an event wins (the event's latest figures).

    Raises:
        InputError: an event is not in the catalogue, or a fleet's event names no asset.
    """
    events = catalogue.drop_duplicates(KEY, keep="last").set_index(KEY)
    fleet = bool((catalogue["asset"] != "").any())
    rows = []
    for review in reviews.itertuples(index=False):
        where = f"{origin}: line {review.line}: " if review.line else ""
        if fleet and not review.asset:
            raise InputError(
                f"{where}event {review.event_id}: the model is a fleet; name the event's asset (--asset, or an asset column)"
            )
        key = (review.asset if fleet else "", int(review.event_id))
        if key not in events.index:
            name = f"asset {key[0]} event {key[1]}" if key[0] else f"event {key[1]}"
            raise InputError(f"{where}{name}: no such event among the model's scored events")
        rows.append(
            {"asset": key[0], "event_id": key[1], "verdict": review.verdict, "note": review.note, **events.loc[key].to_dict()}
        )
    return pd.DataFrame(rows, columns=[*KEY, "verdict", "note", *EVENT_FIELDS])


def period_moves(timestamps: pd.Series, reviews: pd.DataFrame) -> np.ndarray:
    """Per row: +1 in a period reviewed ``false_alarm``, -1 in one reviewed ``confirmed`` (it wins), else 0.

    Args:
        timestamps: the rows' UTC times, (n_rows,).
        reviews: latest verdicts with ``start`` and ``end`` (inclusive, UTC).
    """
    moved = np.zeros(len(timestamps), dtype=np.int8)
    if not len(reviews) or not len(timestamps):
        return moved
    times = pd.to_datetime(timestamps, utc=True).to_numpy()
    for verdict, value in ((FALSE_ALARM, 1), (CONFIRMED, -1)):
        for start, end in zip(*_periods(reviews, verdict)):
            inside = (times >= start) & (times <= end)
            moved[inside] = value
    return moved


def _periods(reviews: pd.DataFrame, verdict: str) -> tuple[np.ndarray, np.ndarray]:
    chosen = reviews[reviews["verdict"] == verdict]
    return pd.to_datetime(chosen["start"], utc=True).to_numpy(), pd.to_datetime(chosen["end"], utc=True).to_numpy()


def moved_counts(before: np.ndarray, after: np.ndarray) -> dict[str, int]:
    """How many rows the verdicts moved: into the normal rows (false_alarm) and out of them (confirmed)."""
    return {
        "review_rows_to_normal": int((after & ~before).sum()),
        "review_rows_out_of_normal": int((before & ~after).sum()),
    }


def review_figures(flagged: np.ndarray, timestamps: pd.Series, reviews: pd.DataFrame) -> dict[str, float]:
    """One version's figures on the reviewed periods that the judged rows reach.

    ``confirmed_reviewed`` / ``confirmed_flagged``: confirmed periods with a row in the data / with
    a flagged row; ``false_alarm_reviewed`` / ``false_alarm_rows_flagged``: false_alarm periods with
    a row in the data / flagged rows inside them.

    Args:
        flagged: whether each row belongs to an event, (n_rows,).
        timestamps: the rows' UTC times, (n_rows,).
    """
    times = pd.to_datetime(timestamps, utc=True).to_numpy()
    figures = dict.fromkeys(("confirmed_reviewed", "confirmed_flagged", "false_alarm_reviewed", "false_alarm_rows_flagged"), 0.0)
    for verdict, name in ((CONFIRMED, "confirmed"), (FALSE_ALARM, "false_alarm")):
        for start, end in zip(*_periods(reviews, verdict)):
            inside = (times >= start) & (times <= end)
            if not inside.any():
                continue
            figures[f"{name}_reviewed"] += 1
            if name == "confirmed":
                figures["confirmed_flagged"] += float(flagged[inside].any())
            else:
                figures["false_alarm_rows_flagged"] += float(flagged[inside].sum())
    return figures


def sensor_names(top_sensors: str, k: int) -> frozenset[str]:
    """The first ``k`` sensor names of a ``top_sensors`` cell ('a (41%); b (22%)')."""
    parts = [p.strip() for p in str(top_sensors or "").split(";") if p.strip()]
    return frozenset(p.rsplit(" (", 1)[0] for p in parts[:k])


def known_false_alarms(events: pd.DataFrame, reviews: pd.DataFrame, rule: ReviewConfig) -> pd.Series:
    """Per event, the id of the reviewed false alarm it repeats (module docstring), else NA.

    An event that has a verdict itself is not marked. ``events`` has ``asset`` (empty for one
    stream), ``event_id``, ``top_sensors``, ``peak_score`` and ``mean_score``.
    """
    marked = pd.Series(pd.NA, index=events.index, dtype="Int64")
    false = reviews[reviews["verdict"] == FALSE_ALARM] if len(reviews) else reviews
    if not len(false) or not len(events):
        return marked
    reviewed = set(zip(reviews["asset"], reviews["event_id"].astype(int)))
    known = [
        (r.asset, int(r.event_id), sensor_names(r.top_sensors, rule.match_top_sensors), float(r.peak_score), float(r.mean_score))
        for r in false.itertuples(index=False)
    ]
    ratio = np.log(rule.profile_ratio)
    for index, event in events.iterrows():
        if (event["asset"], int(event["event_id"])) in reviewed:
            continue
        names = sensor_names(event["top_sensors"], rule.match_top_sensors)
        for asset, event_id, known_names, peak, mean in known:
            if asset != event["asset"] or names != known_names:
                continue
            if abs(np.log(event["peak_score"] / peak)) <= ratio and abs(np.log(event["mean_score"] / mean)) <= ratio:
                marked[index] = event_id
                break
    return marked


def annotate(events: pd.DataFrame, reviews: pd.DataFrame, rule: ReviewConfig) -> pd.DataFrame:
    """``events`` (an anomalies table) with ``VERDICT_COLUMNS``: its verdict where one matches the
    event (same asset, event id and start) and the known-false-alarm marker (0/1 and ``like_event``)."""
    out = events.drop(columns=[c for c in VERDICT_COLUMNS if c in events.columns])
    asset = out["asset"].fillna("").astype(str) if "asset" in out.columns else pd.Series("", index=out.index)
    keyed = pd.DataFrame({"asset": asset, "event_id": out["event_id"].astype(int), "start": out["start"].astype(str)})
    keyed["top_sensors"], keyed["peak_score"], keyed["mean_score"] = out["top_sensors"], out["peak_score"], out["mean_score"]
    if len(reviews):
        given = reviews.assign(event_id=reviews["event_id"].astype(int), start=_utc_text(reviews["start"]))
        given = given.rename(columns={"note": "verdict_note"})[
            [*KEY, "start", "verdict", "verdict_note", "reviewed_by", "reviewed_at"]
        ]
        matched = keyed.assign(start=_utc_text(keyed["start"])).merge(given, on=[*KEY, "start"], how="left")
        matched.index = out.index
    else:
        matched = pd.DataFrame(index=out.index, columns=["verdict", "verdict_note", "reviewed_by", "reviewed_at"])
    for column in ("verdict", "verdict_note", "reviewed_by", "reviewed_at"):
        out[column] = matched[column].to_numpy()
    like = known_false_alarms(keyed, reviews, rule)
    out["likely_known_false_alarm"] = like.notna().astype(int).to_numpy()
    out["like_event"] = like.to_numpy()
    return out


def _utc_text(values: pd.Series) -> pd.Series:
    """Times as one comparable text (UTC, to the nanosecond), whatever way they were written."""
    return pd.Series(pd.to_datetime(values, utc=True, format="ISO8601").astype("int64").astype(str), index=values.index)
