"""Shared fixtures: tiny deterministic sensor data and a fast configuration."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import PipelineConfig
from pipeline.sample_data import Fault, generate

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

# Two days a minute apart; the first day is normal, then a step and a spike burst.
TINY_FAULTS = [
    Fault("step", "discharge_pressure", "2026-10-01 14:00", 3, "step"),
    Fault("spike_burst", "vibration_rms", "2026-10-01 20:00", 1, "spikes"),
]
TINY_NORMAL_UNTIL = "2026-10-01 12:00:00"

TINY_CONFIG_YAML = """
features:
  window_size: 8
model:
  filters: [8]
  latent_dim: 4
  epochs: 3
  batch_size: 64
  patience: 2
"""


def tiny_config() -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "features": {"window_size": 8},
            "model": {"filters": [8], "latent_dim": 4, "epochs": 3, "batch_size": 64, "patience": 2},
            "training": {"normal_until": TINY_NORMAL_UNTIL},
        }
    )


@pytest.fixture(scope="session")
def tiny_frame() -> pd.DataFrame:
    """1,440 rows x 8 sensors (one day, one a minute)."""
    return generate(days=1, seed=3, faults=TINY_FAULTS)


@pytest.fixture()
def tiny_csv(tmp_path: Path, tiny_frame: pd.DataFrame) -> Path:
    path = tmp_path / "pump.csv"
    tiny_frame.to_csv(path, index=False)
    return path


@pytest.fixture()
def tiny_config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG_YAML)
    return path


@pytest.fixture()
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


@dataclass
class TrainedStore:
    """A tracking store holding one training and one scoring run of model ``pump`` (version 1)."""

    uri: str
    root: Path
    csv: Path
    out: Path
    train_run_id: str
    score_run_id: str


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory, tiny_frame) -> TrainedStore:
    """Trained once per session and shared: the registry, UI and notebook tests only read it."""
    from pipeline.jobs.score import score_job
    from pipeline.jobs.train import train_job

    root = tmp_path_factory.mktemp("store")
    csv = root / "pump.csv"
    tiny_frame.to_csv(csv, index=False)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    trained = train_job([csv], tiny_config(), "pump", uri)
    scored = score_job([csv], root / "out", "pump", uri)
    return TrainedStore(uri, root, csv, root / "out", trained.run_id, scored.run_id)


@pytest.fixture()
def store(tmp_path, trained_store) -> str:
    """This test's copy of the trained store (the model's artifacts stay, read only, where they are)."""
    target = tmp_path / "ml" / "mlflow.db"
    target.parent.mkdir()
    shutil.copy(trained_store.root / "mlflow.db", target)
    return f"sqlite:///{target}"


@pytest.fixture()
def run_config(tmp_path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(TINY_CONFIG_YAML + f"training:\n  normal_until: '{TINY_NORMAL_UNTIL}'\n")
    return path


@contextlib.contextmanager
def local_server(
    command: list[str], probe: str, log_path: Path, env: dict[str, str], cwd: Path | None = None, timeout: float = 240
) -> Iterator[str]:
    """Start ``command`` on a free port of 127.0.0.1 (``{port}`` in it is replaced by the port)
    and yield its base URL once ``probe`` (a path such as ``/health``) answers; stop it after.

    The server's environment gets this interpreter's folder first on PATH (MLflow starts helpers
    by name) and no MLFLOW_TRACKING_URI unless ``env`` sets one.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    full_env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **env}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", *(part.replace("{port}", str(port)) for part in command)],
            cwd=cwd,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{base}{probe}", timeout=2)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
