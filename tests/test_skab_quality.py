"""Detection quality on real industrial data: the product's defaults on a few SKAB files.

The files come from ../shared/data/skab (never copied into the repository) and are from the
valve2 group. The model defaults were chosen on valve1; the event policy's (issue 12) with the
three groups as folds, so valve2 was one fold's held-out group and two folds' tuning data.
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
    assert total.mar <= MAR_CEILING, total.figures()


# Measured 0.890 / FAR 14.1 % / MAR 12.2 % at the defaults of this commit (0.881 / 16.6 % / 12.4 %
# before the 60 s on-delay and the hysteresis release); the floors sit just below.
F1_FLOOR = 0.88
FAR_CEILING = 0.15
MAR_CEILING = 0.13
