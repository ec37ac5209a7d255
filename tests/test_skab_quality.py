"""Detection quality on real industrial data: the product's defaults on a few SKAB files.

The files come from ../shared/data/skab (never copied into the repository) and are from the
valve2 group, which played no part in choosing the defaults (they were chosen on valve1).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.benchmark.skab import TRAIN_ROWS, read_skab, run_product
from pipeline.evaluation.metrics import Counts, confusion

SKAB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "skab"
FILES = [SKAB / "valve2" / f"{n}.csv" for n in (0, 3)]
pytestmark = pytest.mark.skipif(not all(p.is_file() for p in FILES), reason="SKAB data not beside the repository")


def test_default_detector_on_held_out_skab_files_beats_a_floor():
    total = Counts()
    for path in FILES:
        frame = read_skab(path)
        anomaly, score = run_product(path, frame)
        assert len(anomaly) == len(score) == len(frame) - TRAIN_ROWS
        total += confusion(anomaly, frame["anomaly"].to_numpy()[TRAIN_ROWS:])
    # Flagging every test row gives F1 of about 0.7 with FAR 100 %: the floor needs both figures.
    assert total.f1 >= F1_FLOOR, total.figures()
    assert total.far <= FAR_CEILING, total.figures()


F1_FLOOR = 0.80  # measured 0.88 (FAR 17 %, MAR 12 %) at the defaults of this commit
FAR_CEILING = 0.25
