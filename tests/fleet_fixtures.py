"""One tiny fleet, trained and scored once per session through the real command line (real
TensorFlow, real sqlite store, ``--workers 1``): the reference the fleet, worker and Spark tests
compare against. A plugin of ``conftest.py`` (``pytest_plugins``), so every test module shares one instance."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.data.assets import MAX_ASSET_ID
from pipeline.sample_data import generate
from tests.conftest import TINY_CONFIG_YAML, TINY_FAULTS, TINY_NORMAL_UNTIL

ODD = "Pumpe Ü/2"  # a space, a slash and a non-ASCII letter
ASSETS = ["P-101", "../etc", ODD]
LONG_ID = "x" * (MAX_ASSET_ID + 1)


def fleet_frames() -> dict[str, pd.DataFrame]:
    frames = {asset: generate(days=1, seed=3 + i, faults=TINY_FAULTS if i != 1 else []) for i, asset in enumerate(ASSETS)}
    frames["short"] = generate(days=1, seed=9, faults=[]).iloc[:10]  # far too few normal rows to train
    return frames


def long_table(frames: dict[str, pd.DataFrame], seed: int = 0) -> pd.DataFrame:
    """Every asset's rows in one table, shuffled, with three rows whose ids cannot be used."""
    rows = pd.concat([f.assign(asset=a) for a, f in frames.items()], ignore_index=True)
    bad = frames["P-101"].iloc[:3].assign(asset=["", "  ", LONG_ID])
    return pd.concat([rows, bad], ignore_index=True).sample(frac=1, random_state=seed)[["asset", *frames["P-101"].columns]]


def read_scores(folder: Path) -> pd.DataFrame:
    """A fleet's ``scores.csv`` in a fixed order (asset, time), whatever order it was written in; a
    tracking store named in ``status`` reads ``<store>``, so that runs on two stores compare."""
    frame = pd.read_csv(folder / "scores.csv", dtype={"asset": str}, keep_default_na=False, na_values=[""])
    frame["status"] = _without_store(frame["status"])
    return frame.sort_values(["asset", "timestamp", "status"], kind="stable").reset_index(drop=True)


def read_fleet_table(folder: Path) -> pd.DataFrame:
    """A fleet's ``fleet.csv``, with ``<store>`` for the tracking store named in ``status``."""
    frame = pd.read_csv(folder / "fleet.csv")
    return frame.assign(status=_without_store(frame["status"]))


def _without_store(status: pd.Series) -> pd.Series:
    return status.str.replace(r"sqlite:///\S+?\.db", "<store>", regex=True)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    frames = fleet_frames()
    long_table(frames).to_csv(root / "plant.csv", index=False)
    config = root / "tiny.yaml"
    config.write_text(TINY_CONFIG_YAML + f"training:\n  normal_until: '{TINY_NORMAL_UNTIL}'\n")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    code = main(["train", "--input", str(root / "plant.csv"), "--asset-column", "asset", "--config", str(config),
                 "--model-name", "plant", "--tracking-uri", uri, "--workers", "1"])  # fmt: skip
    return {"root": root, "frames": frames, "uri": uri, "config": config, "train_code": code}


@pytest.fixture(scope="session")
def fleet_scored(fleet):
    """The fleet's plant.csv scored with ``--workers 1``: the output folder, exit code and stderr."""
    import contextlib
    import io

    out = fleet["root"] / "scored"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["score", "--input", str(fleet["root"] / "plant.csv"), "--asset-column", "asset", "--out", str(out),
                     "--model-name", "plant", "--tracking-uri", fleet["uri"], "--workers", "1"])  # fmt: skip
    return {"out": out, "code": code, "err": err.getvalue()}
