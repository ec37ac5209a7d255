"""One scored batch of a ``run`` stream and what its run folder shows."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pipeline.data.ingest import IngestResult
from pipeline.detector.bundle import ModelBundle
from pipeline.detector.scoring import RowScores
from pipeline.detector.stream import StreamStep
from pipeline.jobs.run_outputs import RunFolder
from pipeline.reports.tables import events_frame, scores_batches, scores_schema


@dataclass
class ScoredBatch:
    """One scored batch and what its folder shows."""

    step: StreamStep
    checked: IngestResult  # the batch after late rows were set aside
    quality: dict
    bundle: ModelBundle
    version: str
    run_id: str

    @property
    def counts(self) -> dict[str, int]:
        return {
            **self.checked.counts,
            "rows_held_back": self.step.rows_held,
            "rows_from_earlier_batches": self.step.rows_from_earlier_batches,
        }

    @property
    def rows_written(self) -> int:
        return len(self.step.event) + len(self.checked.rejected)

    def events_frame(self) -> pd.DataFrame:
        """The events this batch touched, as ``anomalies.csv`` rows with their figures so far."""
        sensors, threshold = self.bundle.sensors, self.bundle.threshold.value
        return events_frame(self.step.events, sensors, threshold, self.version, self.run_id)

    def folder(self, manifest: dict) -> RunFolder:
        """scores.csv: the decided rows (held-back ones first: they are older) and the set-aside rows."""
        step, rejected, sensors = self.step, self.checked.rejected, self.bundle.sensors
        written = IngestResult(
            table=_decided_table(step),
            rejected=rejected,
            sensors=sensors,
            timestamp_column=self.checked.timestamp_column,
        )
        rows = RowScores(score=step.score, contributions=step.contributions, segment=step.segment)
        order = list(
            dict.fromkeys([*map(str, step.source), *map(str, self.checked.table["source"]), *map(str, rejected["source"])])
        )
        threshold = self.bundle.threshold.value
        return RunFolder(
            scores=scores_batches(written, rows, step.event, threshold, order),
            scores_schema=scores_schema(sensors),
            events=self.events_frame(),
            quality=self.quality,
            manifest=manifest,
        )


def _decided_table(step: StreamStep) -> pd.DataFrame:
    return pd.DataFrame({"source": step.source, "row": step.row, "timestamp": pd.to_datetime(step.timestamp_ns, utc=True)})
