"""Every file the product writes or reads back, named once.

Outputs of ``score`` and of each ``run`` folder, the ``--state`` folder's files, the model
bundle's two files, and the names of artifacts logged to MLflow.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

# --out of score, and each run folder
SCORES_FILE = "scores.csv"
SCORES_PARQUET = "scores.parquet"  # the same table with --format parquet
OUTPUT_FORMATS = ("csv", "parquet")  # of the per-row scores table (CSV is the default)
ANOMALIES_FILE = "anomalies.csv"  # also --out/anomalies.csv of run: every event so far
QUALITY_FILE = "quality.json"
VALIDATED_FILE = "validated.parquet"
SCORES_PLOT = "scores.png"
RUN_MANIFEST = "run.json"
FLEET_FILE = "fleet.csv"  # fleets: one row per asset
# --out of encode and reconstruct
LATENT_FILE = "latent.parquet"
RECONSTRUCTED_FILE = "reconstructed.parquet"
LATENT_PLOT = "latent_pca.png"

# --state of run
STATE_FILE = "state.json"
LOCK_FILE = "run.lock"
QUARANTINE_FILE = "quarantine.csv"
PARTIAL_PREFIX = ".partial-"  # a run folder being written: .partial-<run id>
RUN_FOLDER = re.compile(r"^\d{8}T\d{6}Z_[0-9a-f]+$")  # <UTC time>_<run id>

# the model bundle folder
MODEL_FILE = "model.keras"
BUNDLE_FILE = "bundle.json"

# MLflow artifacts
CONFIG_ARTIFACT = "config.yaml"
QUALITY_ARTIFACT = "quality_report.json"
THRESHOLD_ARTIFACT = "threshold.json"
PROMOTION_ARTIFACT = "promotion.json"
REVIEWS_ARTIFACT = "reviews.json"  # a review run's verdicts (an MLflow table artifact)
INPUT_PATHS_ARTIFACT = "input_paths.json"  # the files a run read, when too long for a tag
QUARANTINE_ARTIFACT = QUARANTINE_FILE
TRAINING_CURVES_PLOT = "training_curves.png"
HOLDOUT_ERRORS_PLOT = "holdout_errors.png"
RECONSTRUCTION_ARTIFACT = "reconstruction_quality.json"  # train: per-sensor held-out error and variance explained
FLEET_ALARM_PLOT = "fleet_alarm_rates.png"
FLEET_TIMELINE_PLOT = "fleet_events_timeline.png"
PLOTS_FOLDER = "plots"
DATA_FOLDER = "data"
BUNDLE_FOLDER = "bundle"  # the bundle among the pyfunc model's artifacts
MODEL_ARTIFACT = "model"  # the run-relative name of the logged pyfunc model


# benchmark outputs
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
PREDICTIONS_FOLDER = "predictions"  # the product's, per group and file
PEERS_FOLDER = "peers"  # the peers', per detector, group and file
PRODUCT_CONFIG_ARTIFACT = "product_config.yaml"
THROUGHPUT_JSON = "throughput.json"
THROUGHPUT_TRAIN_CONFIG = "train.yaml"
THROUGHPUT_TRAINED = "trained.json"
FLEET_BENCHMARK_JSON = "fleet_benchmark.json"
FLEET_BENCHMARK_TRAIN = "train"  # the generated fleet: the normal leading part, one folder per asset
FLEET_BENCHMARK_SCORE = "score"  # the rest, where faults are injected
FLEET_BENCHMARK_FAULTS = "faults.csv"
REVIEW_BENCHMARK_JSON = "review_benchmark.json"


def scores_file(output_format: str = "csv") -> str:
    """The per-row scores table's file name for an output format (``OUTPUT_FORMATS``)."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format {output_format!r}: expected one of {', '.join(OUTPUT_FORMATS)}")
    return SCORES_FILE if output_format == "csv" else SCORES_PARQUET


def event_plot(event_id: int) -> str:
    return f"event_{event_id}.png"


def run_folder_name(run_id: str, now: datetime | None = None) -> str:
    """``<UTC time>_<run id>``, the name a run folder under --out is published as."""
    return f"{(now or datetime.now(UTC)).strftime('%Y%m%dT%H%M%SZ')}_{run_id}"


def partial_folder_name(run_id: str) -> str:
    return f"{PARTIAL_PREFIX}{run_id}"
