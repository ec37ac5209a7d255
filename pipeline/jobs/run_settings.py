"""Which settings a scheduled batch uses: the run's own, or the model's.

What the model learned is fixed by it: sensors, timestamp column, window, gap rule, scaler,
threshold, and the scoring that formed the scores its threshold was calibrated on. A batch
takes from the run's settings (``--config``, else the model's training config):

- ``ingest``: the reading and repair settings (delimiter, decimal, time zone, repairs);
- ``events``: the event policy (applies from this batch on);
- ``scoring.batch_size``: windows per prediction (memory, not results);
- ``drift`` (the limits; the bins are the model's training reference) and ``review`` (the
  known-false-alarm rule): judgements of the batch, not learned.

Any other ``scoring`` setting in ``--config`` that differs from the model's cannot apply: it is
named in a one-line warning and the model's value is used.
"""

from __future__ import annotations

import logging

from pipeline.config import IngestConfig, PipelineConfig, resolve_events
from pipeline.detector.bundle import ModelBundle

log = logging.getLogger(__name__)

APPLIES_TO_A_TRAINED_MODEL = {"batch_size"}  # the scoring settings a run may change


def batch_settings(run_config: PipelineConfig, bundle: ModelBundle | None, warn: bool = False) -> PipelineConfig:
    """The settings to read and score a batch with (module docstring); ``bundle`` None: no model yet.

    ``warn`` logs the ``scoring`` settings of ``run_config`` that cannot apply to the model.
    """
    if bundle is None:
        return run_config
    model_config = bundle.config
    # A setting counts as given only when it differs from its default (a model's stored config
    # holds every field): e.g. mixed time zones are resolved only by a configured source zone.
    if run_config is model_config:
        given = run_config.ingest.model_dump(exclude_defaults=True)
    else:
        given = run_config.ingest.model_dump(exclude_unset=True)
    ingest = IngestConfig.model_validate({**given, "label_column": None})  # data to score needs no label
    if warn:
        _warn_fixed_scoring(run_config, model_config)
    scoring = model_config.scoring.model_copy(
        update={key: getattr(run_config.scoring, key) for key in APPLIES_TO_A_TRAINED_MODEL}
    )
    # Event durations in the run's settings count in the sampling interval measured at training.
    events = resolve_events(run_config.events, bundle.sampling_interval_seconds)
    judgements = {"drift": run_config.drift, "review": run_config.review}
    return model_config.model_copy(update={"ingest": ingest, "events": events, "scoring": scoring, **judgements})


def _warn_fixed_scoring(run_config: PipelineConfig, model_config: PipelineConfig) -> None:
    for key in sorted(run_config.scoring.model_fields_set - APPLIES_TO_A_TRAINED_MODEL):
        wanted, fixed = getattr(run_config.scoring, key), getattr(model_config.scoring, key)
        if wanted != fixed:
            log.warning(
                "--config scoring.%s=%s does not apply: the model's threshold was calibrated with %s=%s, "
                "which it keeps (train a new version to change it)",
                key,
                wanted,
                key,
                fixed,
            )
