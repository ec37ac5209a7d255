"""The ``promote`` job: give ``@champion`` to a version (default: the ``@challenger``) if it
passes the gate (``pipeline.evaluation.gate``); every decision is logged as a run."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import IngestConfig, PipelineConfig
from pipeline.data.files import discover_files
from pipeline.data.fleet import read_asset, validate_asset
from pipeline.data.loading import load_input
from pipeline.detector.bundle import ModelBundle
from pipeline.detector.reviews import review_figures
from pipeline.detector.scoring import flag_events, score_rows
from pipeline.errors import InputError, PromotionRefused
from pipeline.evaluation.gate import Gate, GateDecision, gate_figures, judge, with_reviews
from pipeline.jobs.common import describe_inputs, load_registered
from pipeline.jobs.fleet_common import FLEET_INGEST_TAG, asset_model_name
from pipeline.jobs.review import latest_reviews
from pipeline.reports import describe
from pipeline.serving import scoring_ingest
from pipeline.store.names import PROMOTION_ARTIFACT
from pipeline.tracking import CHALLENGER, CHAMPION, Tracker

log = logging.getLogger(__name__)


@dataclass
class PromoteOutcome:
    run_id: str
    version: str
    champion_before: str | None
    promoted: bool
    gate: Gate
    reason: str
    figures: dict[str, Any]


def promote_job(
    model_name: str,
    version: str | None,
    tracking_uri: str | None,
    config: PipelineConfig,
    inputs: list[str | Path] | None = None,
    label_column: str | None = None,
    force: bool = False,
    asset: str | None = None,
) -> PromoteOutcome:
    """Give ``champion`` to a version (default: the ``challenger``) if it passes the gate.

    The first champion and ``force`` skip the gate. Data to judge on: ``inputs``, else the files
    of the latest scoring run. The decision and its figures are logged as a run with stage
    ``promote``. With ``asset``, ``model_name`` is a fleet and the version is that asset's
    (judged on the asset's rows of the data, named as ``config.ingest`` names assets, else as the
    latest fleet scoring run did).

    Raises:
        InputError: unknown model or version, or no data to judge on.
        PromotionRefused: the gate kept the champion.
    """
    tracker = Tracker(tracking_uri, model_name)
    fleet, fleet_ingest = model_name, config.ingest
    if asset is not None:
        model_name = asset_model_name(fleet, asset)
    candidate = tracker.model_version(model_name, version, alias=CHALLENGER)
    champion = tracker.aliases(model_name).get(CHAMPION)
    promotion = config.promotion
    figures: dict[str, Any] = {}
    run_name = f"promote {model_name} v{candidate.version}"
    with tracker.run("promote", run_name=run_name, tags={"model_name": model_name}) as run_id:
        tracker.log_params(
            {
                "candidate_version": candidate.version,
                "champion_version": champion or "",
                "alarm_rate_budget": promotion.alarm_rate_budget,
                "f1_tolerance": promotion.f1_tolerance,
                "label_column": label_column or "",
                "force": force,
            }
        )
        if champion == candidate.version:
            decision = GateDecision(Gate.NONE, False, f"version {candidate.version} already holds @{CHAMPION}.")
        elif champion is None:
            decision = GateDecision(Gate.NONE, True, "no version held @champion.")
        elif force:
            decision = GateDecision(Gate.FORCED, True, "promoted with --force, without the gate.")
        else:
            latest = None if inputs else tracker.latest_run("score", fleet)
            files = discover_files(inputs) if inputs else _latest_scored_files(tracker, latest)
            if asset is not None and not fleet_ingest.fleet:
                fleet_ingest = _recorded_fleet_ingest(latest)
            tracker.set_tags({"source": describe_inputs([p for _, p in files])})
            tracker.record_input_paths([p for _, p in files])
            new_bundle, _ = load_registered(tracker, model_name, candidate.version)
            old_bundle, _ = load_registered(tracker, model_name, champion)
            judged = (asset, fleet_ingest) if asset is not None else None
            reviews = latest_reviews(tracker, fleet, asset or "")
            new = _figures(new_bundle, files, label_column, judged, reviews)
            old = _figures(old_bundle, files, label_column, judged, reviews)
            figures = {**{f"challenger_{k}": v for k, v in new.items()}, **{f"champion_{k}": v for k, v in old.items()}}
            decision = with_reviews(judge(new, old, label_column is not None, promotion), new, old)
        promoted = decision.promoted
        tracker.log_metrics({k: v for k, v in figures.items() if isinstance(v, float)} | {"promoted": float(promoted)})
        verdict = "promoted" if promoted else ("kept" if champion == candidate.version else "refused")
        tracker.set_tags({"decision": verdict, "gate": decision.gate, "model_version": candidate.version})
        record = {
            "decision": verdict,
            "gate": str(decision.gate),
            "reason": decision.reason,
            "challenger": candidate.version,
            "champion": champion,
            "figures": figures,
        }
        tracker.log_dict(record, PROMOTION_ARTIFACT)
        tracker.set_description(describe.promotion_description(model_name, record))
        if promoted:
            tracker.set_alias(model_name, CHAMPION, candidate.version)
            if CHALLENGER in candidate.aliases:
                tracker.delete_alias(model_name, CHALLENGER)
        log.info("promote %s version %s: %s (%s)", model_name, candidate.version, verdict, decision.reason)
        outcome = PromoteOutcome(run_id, candidate.version, champion, promoted, decision.gate, decision.reason, figures)
    if verdict == "refused":
        raise PromotionRefused(f"{model_name} version {candidate.version} not promoted: {decision.reason} (run {run_id})")
    return outcome


def _figures(
    bundle: ModelBundle,
    files: list[tuple[str, Path]],
    label_column: str | None,
    asset: tuple[str, IngestConfig] | None = None,
    reviews=None,
) -> dict[str, float]:
    """One version's gate figures on the files (on one asset's rows of them), scored as ``score`` scores them;
    with ``reviews`` (the latest verdicts), its figures on the reviewed periods too."""
    ingest = scoring_ingest(bundle, label_column)
    if asset is None:
        loaded = load_input(files, ingest, bundle.sensors, bundle.timestamp_column, **bundle.input_hints())
    else:
        name, fleet_ingest = asset
        pieces = read_asset(files, fleet_ingest, name)
        if not pieces:
            raise InputError(f"promote: the data holds no row of asset {name}")
        loaded = validate_asset(name, pieces, ingest, bundle.sensors, bundle.timestamp_column, **bundle.input_hints())
    table = loaded.result.table
    rows = score_rows(bundle, table, progress=True)
    labels = table["label"].to_numpy() if label_column else None
    flagged = flag_events(bundle, rows) > 0
    figures = gate_figures(flagged, np.isfinite(rows.score), labels)
    if reviews is not None and len(reviews):
        figures.update(review_figures(flagged, table["timestamp"], reviews))
    return figures


def _recorded_fleet_ingest(run) -> IngestConfig:
    """How the latest fleet scoring run named its assets."""
    recorded = json.loads(run.data.tags.get(FLEET_INGEST_TAG, "{}")) if run else {}
    if not recorded:
        raise InputError(
            "promote --asset: name the assets with --asset-column or --asset-folders (no fleet scoring run to follow)"
        )
    return IngestConfig(**recorded)


def _latest_scored_files(tracker: Tracker, latest) -> list[tuple[str, Path]]:
    paths = tracker.recorded_input_paths(latest) if latest else []
    missing = [p for p in paths if not Path(p).is_file()]
    if not paths or missing:
        why = "no scoring run records its input" if not paths else f"the latest scored file {missing[0]} is gone"
        raise InputError(f"promote: {why}; give the data to judge the challenger on with --input")
    return discover_files(paths)
