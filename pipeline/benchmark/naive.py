"""The naive ways the throughput benchmark compares the product with, each run as a child process
(so its peak resident memory is its own): what a data scientist would write first.

    python -m pipeline.benchmark.naive score BUNDLE_FOLDER FILE ROWS      # copy every window, model.predict
    python -m pipeline.benchmark.naive train-naive BUNDLE_FOLDER FILE ROWS EPOCHS  # model.fit on materialised windows
    python -m pipeline.benchmark.naive train-feed BUNDLE_FOLDER FILE ROWS EPOCHS   # model.fit on the product's WindowFeed

Each prints one JSON line: the rows and windows it handled and the seconds its measured part took.
The model is a fresh one of the bundle's shape (training) or the bundle's own (scoring); the
values are scaled with the bundle's scaler, on the first ``ROWS`` rows of the file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

BATCH = 4096  # windows per model.predict batch, as the product's scoring.batch_size


def _scaled(bundle_folder: Path, path: Path, rows: int) -> tuple[dict, np.ndarray]:
    meta = json.loads((bundle_folder / "bundle.json").read_text())
    scaler = meta["scaler"]
    frame = pd.read_csv(path, nrows=rows)
    values = (frame[scaler["sensors"]].to_numpy(np.float64) - np.asarray(scaler["mean"])) / np.asarray(scaler["scale"])
    return meta, values.astype(np.float32)


def naive_score(bundle_folder: Path, path: Path, rows: int) -> dict:
    """Keras ``model.predict`` on every window copied out (``np.stack``), then each window's mean squared error."""
    import keras

    meta, values = _scaled(bundle_folder, path, rows)
    model = keras.models.load_model(bundle_folder / "model.keras", compile=False)
    window = meta["window_size"]
    started = time.perf_counter()
    windows = np.stack([values[i : i + window] for i in range(len(values) - window + 1)])
    rebuilt = model.predict(windows, batch_size=BATCH, verbose=0)
    errors = np.square(windows - rebuilt).mean(axis=(1, 2))
    seconds = time.perf_counter() - started
    return {"rows": len(values), "windows": len(windows), "seconds": seconds, "mean_error": float(errors.mean())}


def _fresh_model(meta: dict):
    from pipeline.config import PipelineConfig
    from pipeline.model.autoencoder import build_autoencoder

    config = PipelineConfig.model_validate(meta["config"])
    return config.model, build_autoencoder(config.model, meta["window_size"], len(meta["sensors"]))


def train(bundle_folder: Path, path: Path, rows: int, epochs: int, feed: bool) -> dict:
    """``model.fit`` for ``epochs`` epochs on all stride-1 windows of the rows: materialised, or through ``WindowFeed``."""
    meta, values = _scaled(bundle_folder, path, rows)
    model_config, model = _fresh_model(meta)
    window = meta["window_size"]
    starts = np.arange(len(values) - window + 1)
    started = time.perf_counter()
    if feed:
        from pipeline.model.training import WindowFeed

        feed = WindowFeed(values, starts, window, model_config.batch_size, shuffle_seed=model_config.seed)
        model.fit(feed.dataset(), epochs=epochs, shuffle=False, verbose=0, callbacks=[feed.callback()])
    else:
        windows = np.stack([values[s : s + window] for s in starts])
        model.fit(windows, windows, batch_size=model_config.batch_size, epochs=epochs, shuffle=True, verbose=0)
    seconds = time.perf_counter() - started
    return {"rows": len(values), "windows": int(starts.size) * epochs, "seconds": seconds}


def main(argv: list[str]) -> int:
    mode, bundle_folder, path, rows = argv[0], Path(argv[1]), Path(argv[2]), int(argv[3])
    if mode == "score":
        result = naive_score(bundle_folder, path, rows)
    else:
        result = train(bundle_folder, path, rows, int(argv[4]), feed=mode == "train-feed")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
