"""Both notebooks run top to bottom on small data (nbclient, a real Python kernel)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from pipeline.sample_data import generate

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
SKAB_SENSORS = [
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
]


def _execute(name: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return notebook


def _text(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(
        str(output.get("text", ""))
        + str(output.get("data", {}).get("text/plain", ""))
        + str(output.get("data", {}).get("text/markdown", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


def _images(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


@pytest.fixture()
def skab_like(tmp_path: Path) -> Path:
    """A small file shaped like a SKAB file (';', SKAB's column names, anomaly and changepoint)."""
    frame = generate(days=0.5, seed=5, faults=[], step_seconds=60)
    frame.columns = ["datetime", *SKAB_SENSORS]
    frame["anomaly"] = (frame.index >= 500).astype(float)
    frame["changepoint"] = (frame.index == 500).astype(float)
    frame["datetime"] = frame["datetime"].dt.strftime("%Y-%m-%d %H:%M:%S")
    path = tmp_path / "1.csv"
    frame.to_csv(path, sep=";", index=False)
    return path


def test_explore_notebook_runs_on_a_skab_file(skab_like, monkeypatch):
    monkeypatch.setenv("SKAB_FILE", str(skab_like))
    notebook = _execute("explore_skab.ipynb")
    text = _text(notebook)
    assert "720 rows, sensors: ['Accelerometer1RMS'" in text and "windows of 16 rows" in text
    assert _images(notebook) >= 2


def test_review_notebook_reads_the_latest_runs(trained_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_store.uri)
    monkeypatch.setenv("MODEL_NAME", "pump")
    notebook = _execute("review_runs.ipynb")
    text = _text(notebook)
    assert "Training: `pump` version 1" in text and "Scoring with `pump` version 1" in text
    assert "top_sensors" in text  # the anomalies table
    assert "scored rows flagged by the champion" in text
    assert _images(notebook) >= 3  # two training plots and the scores
