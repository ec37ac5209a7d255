"""What a scheduled run writes under ``--out``: its own folder, published whole, and the
cumulative ``--out/anomalies.csv``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from pipeline.config import ReviewConfig
from pipeline.detector.reviews import annotate
from pipeline.reports.tables import EVENT_COLUMNS
from pipeline.store import atomic
from pipeline.store.checkpoints import checkpoint
from pipeline.store.names import (
    ANOMALIES_FILE,
    FLEET_FILE,
    QUALITY_FILE,
    RUN_MANIFEST,
    SCORES_FILE,
    partial_folder_name,
    run_folder_name,
)
from pipeline.store.state import RunState, publish_folder, save_state


@dataclass
class RunFolder:
    """The content of one run folder."""

    scores: Iterable[pa.RecordBatch]
    scores_schema: pa.Schema
    events: pd.DataFrame
    quality: dict[str, Any]
    manifest: dict[str, Any]
    fleet: pd.DataFrame | None = None  # fleets: fleet.csv


def publish_run_folder(out_dir: Path, run_id: str, content: RunFolder) -> Path:
    """Write the folder as ``.partial-<run id>`` and rename it into place when complete."""
    folder = out_dir / run_folder_name(run_id)
    partial = out_dir / partial_folder_name(run_id)
    partial.mkdir(parents=True, exist_ok=True)
    atomic.write_csv_batches(content.scores, content.scores_schema, partial / SCORES_FILE)
    checkpoint("mid_outputs")
    atomic.write_csv(content.events, partial / ANOMALIES_FILE)
    atomic.write_text(json.dumps(content.quality, indent=2), partial / QUALITY_FILE)
    atomic.write_text(json.dumps(content.manifest, indent=2), partial / RUN_MANIFEST)
    if content.fleet is not None:
        atomic.write_csv(content.fleet, partial / FLEET_FILE)
    publish_folder(partial, folder)
    checkpoint("after_outputs")
    return folder


def update_cumulative_anomalies(out_dir: Path, state: RunState, state_dir: Path) -> None:
    """Bring ``--out/anomalies.csv`` (every event so far, with its latest figures: a later run
    that extended an event replaces its row; by event id, per asset for a fleet) up to the committed runs.

    The runs committed since the last update (``state.unmerged``) are merged into it, so a run
    reads one file per new run, not every run folder; merging again is harmless (the latest
    row per event wins), which makes a kill between the merge and the state update safe. When
    the file is missing, it is rebuilt from every committed run folder.
    """
    path = out_dir / ANOMALIES_FILE
    if not state.runs or (path.is_file() and not state.unmerged):
        return
    names = state.unmerged if path.is_file() else state.runs
    frames = [_read_events(path)] if path.is_file() else []
    frames += [_read_events(out_dir / name / ANOMALIES_FILE) for name in names]
    events = pd.concat([f for f in frames if len(f)] or [pd.DataFrame(columns=EVENT_COLUMNS)], ignore_index=True)
    key = ["asset", "event_id"] if "asset" in events.columns else ["event_id"]  # fleets: event ids count per asset
    events = events.drop_duplicates(key, keep="last").sort_values(key, kind="stable")
    atomic.write_csv(events[[*key[:-1], *EVENT_COLUMNS]], path)
    if state.unmerged:
        state.unmerged = []
        save_state(state, state_dir)


def _read_events(path: Path) -> pd.DataFrame:
    if not path.is_file() or not path.stat().st_size:
        return pd.DataFrame(columns=EVENT_COLUMNS)
    return pd.read_csv(path, dtype={"asset": str, "model_version": str, "run_id": str, "source": str, "top_sensors": str})


def annotate_cumulative(out_dir: Path, reviews: pd.DataFrame, rule: ReviewConfig) -> None:
    """Show the verdicts in ``--out/anomalies.csv`` (``detector.reviews.annotate``: ``verdict``,
    ``verdict_note``, ``reviewed_by``, ``reviewed_at``, and the known-false-alarm marker), once
    the model has any; the file is rewritten whole, atomically."""
    path = out_dir / ANOMALIES_FILE
    if not len(reviews) or not path.is_file() or not path.stat().st_size:
        return
    events = pd.read_csv(path, dtype={"asset": str, "model_version": str, "run_id": str, "source": str, "top_sensors": str})
    if len(events):
        atomic.write_csv(annotate(events, reviews, rule), path)
