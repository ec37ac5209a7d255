"""The tracking store's side of operators' verdicts (a part of ``Tracker``).

- The scored events of a model (``event_catalogue``): the ``anomalies.csv`` artifacts of its
  finished ``run`` and ``score`` runs that found events, oldest first.
- The verdicts (``record_reviews``): each ``review`` call is a run with stage ``review`` holding
  the verdicts as the table artifact ``reviews.json`` (``mlflow.log_table``: the UI shows it),
  and each reviewed event's scoring run gets the tag ``verdict.[<asset>.]event_<id>``.
- ``stored_reviews`` reads every review run's table back, in the order they were given.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException

import mlflow
from pipeline.store.names import ANOMALIES_FILE, REVIEWS_ARTIFACT

log = logging.getLogger(__name__)
SCORING_STAGES = ("run", "score")


def _quoted(value: str) -> str:
    quote = '"' if "'" in value else "'"
    return f"{quote}{value}{quote}"


def verdict_tag(asset: str, event_id: int) -> str:
    """The tag a reviewed event's scoring run gets (MLflow tag keys: letters, digits, ``_ - . /`` and space)."""
    where = f"{re.sub(r'[^A-Za-z0-9_-]', '_', asset)}." if asset else ""
    return f"verdict.{where}event_{int(event_id)}"


class ReviewTracking:
    """The verdict methods of ``Tracker`` (which gives ``client`` and ``experiment_id``)."""

    client: mlflow.tracking.MlflowClient
    experiment_id: str

    def _finished_runs(self, model_name: str, extra: str = "") -> list:
        filter_string = f"tags.model_name = {_quoted(model_name)} and attributes.status = 'FINISHED'{extra}"
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=filter_string, order_by=["attributes.start_time ASC"], max_results=50000
        )
        return list(runs)

    def event_catalogue(self, model_name: str) -> pd.DataFrame:
        """Every event the model's finished ``run`` and ``score`` runs reported, oldest first:
        ``asset`` (empty for one stream), ``event_id``, the event's figures and ``scoring_run_id``."""
        frames = []
        for run in self._finished_runs(model_name, " and metrics.events > 0"):
            if run.data.tags.get("stage") not in SCORING_STAGES:
                continue
            with tempfile.TemporaryDirectory(prefix="events-") as tmp:
                try:
                    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=ANOMALIES_FILE, dst_path=tmp)
                except (MlflowException, OSError):
                    continue  # a run that logged no events table
                if not Path(path).stat().st_size:
                    continue
                events = pd.read_csv(path, dtype={"asset": str, "model_version": str, "top_sensors": str})
            if not len(events):
                continue
            events["asset"] = events["asset"].fillna("") if "asset" in events.columns else ""
            frames.append(events.assign(scoring_run_id=run.info.run_id))
        if not frames:
            return pd.DataFrame(columns=["asset", "event_id", "start", "end", "scoring_run_id"])
        return pd.concat(frames, ignore_index=True)

    def record_reviews(self, model_name: str, reviews: pd.DataFrame, run_name: str) -> str:
        """One ``review`` run holding ``reviews`` (``detector.reviews.REVIEW_COLUMNS``); tags each
        reviewed event's scoring run. Returns the review run's id."""
        with self.run("review", run_name=run_name, tags={"model_name": model_name}) as run_id:  # type: ignore[attr-defined]
            mlflow.log_table(reviews.astype({"event_id": "int64"}), REVIEWS_ARTIFACT)
            counts = reviews["verdict"].value_counts()
            mlflow.log_metrics(
                {f"verdicts_{verdict}": float(n) for verdict, n in counts.items()} | {"verdicts": float(len(reviews))}
            )
            for review in reviews.itertuples(index=False):
                value = f"{review.verdict} by {review.reviewed_by} at {review.reviewed_at} (review run {run_id})"
                self.client.set_tag(review.scoring_run_id, verdict_tag(review.asset, review.event_id), value)
        return run_id

    def stored_reviews(self, model_name: str) -> pd.DataFrame:
        """Every verdict recorded for the model, in the order given (``review`` runs oldest first)."""
        frames = []
        for run in self._finished_runs(model_name, " and tags.stage = 'review'"):
            try:
                table = self.client.load_table(self.experiment_id, REVIEWS_ARTIFACT, run_ids=[run.info.run_id])
            except (MlflowException, OSError) as exc:
                log.warning("review run %s: its verdicts cannot be read (%s); left out", run.info.run_id, exc)
                continue
            frames.append(table)
        if not frames:
            return pd.DataFrame()
        reviews = pd.concat(frames, ignore_index=True)
        for column in ("asset", "note", "reviewed_by", "top_sensors", "model_version"):
            reviews[column] = reviews[column].fillna("").astype(str) if column in reviews.columns else ""
        reviews["event_id"] = reviews["event_id"].astype("int64")
        for column in ("start", "end", "reviewed_at"):  # the JSON table reads times back as datetimes
            if column in reviews.columns:
                reviews[column] = pd.to_datetime(reviews[column], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return reviews
