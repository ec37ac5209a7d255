"""The SKAB benchmark per model family: ``conv``, ``dense``, ``lstm`` and ``vae``, each with the
product's scoring, thresholds and event policy (everything but ``model.architecture`` and
``model.seed`` as in ``--config``, default the defaults), several seeds each, product only.

Each (architecture, seed) pass is one ``benchmark skab --detector product`` run written to
``OUT/<architecture>/seed<seed>/`` (``summary.json``, predictions). Passes run one seed of every
architecture first, then the next seed; a pass whose ``summary.json`` exists is not run again, so
the command can be stopped and rerun to add the missing passes. After every pass,
``OUT/architectures.json`` and ``OUT/architectures.md`` are rewritten with the mean and spread
(sample standard deviation) over the finished seeds of point-wise F1 / FAR / MAR, event F1 and
the seconds per pass.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from pipeline.benchmark.skab import PRODUCT, run_benchmark
from pipeline.config import PipelineConfig, with_overrides
from pipeline.errors import InputError, PipelineError
from pipeline.store.names import SUMMARY_JSON

log = logging.getLogger(__name__)

ARCHITECTURES = ("conv", "dense", "lstm", "vae")
SEEDS = (42, 1, 2)  # the seeds of the training-stability check (README, issue 12)
RESULT_JSON = "architectures.json"
RESULT_MD = "architectures.md"
FAILED_JSON = "failed.json"


def pass_folder(out_dir: Path, architecture: str, seed: int) -> Path:
    return out_dir / architecture / f"seed{seed}"


def run_architectures(
    data_dir: Path,
    out_dir: Path,
    tracking_uri: str | None = None,
    architectures: list[str] | None = None,
    seeds: int = 3,
    base: PipelineConfig | None = None,
) -> dict[str, Any]:
    """Run the missing passes, seed by seed; returns (and writes) the aggregate."""
    architectures = list(architectures or ARCHITECTURES)
    unknown = sorted(set(architectures) - set(ARCHITECTURES))
    if unknown:
        raise InputError(f"--architectures: unknown {', '.join(unknown)}; known: {', '.join(ARCHITECTURES)}")
    if not 1 <= seeds <= len(SEEDS):
        raise InputError(f"--seeds {seeds}: between 1 and {len(SEEDS)}")
    base = base or PipelineConfig()
    for seed in SEEDS[:seeds]:
        for architecture in architectures:
            folder = pass_folder(out_dir, architecture, seed)
            if (folder / SUMMARY_JSON).is_file() or (folder / FAILED_JSON).is_file():
                continue
            config = with_overrides(base, {"model.architecture": architecture, "model.seed": seed})
            log.info("architecture %s, seed %d: SKAB pass", architecture, seed)
            tick = time.perf_counter()
            try:
                run_benchmark(data_dir, folder, tracking_uri, [PRODUCT], config, peer_workers=0)
            except PipelineError as exc:  # e.g. training failed on a file: recorded, the other passes go on
                folder.mkdir(parents=True, exist_ok=True)
                (folder / FAILED_JSON).write_text(json.dumps({"error": str(exc), "seconds": time.perf_counter() - tick}))
                log.warning("architecture %s, seed %d failed: %s", architecture, seed, exc)
            write_aggregate(out_dir, architectures, seeds)
    return write_aggregate(out_dir, architectures, seeds)


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "sd": None}
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None}


def aggregate(out_dir: Path, architectures: list[str], seeds: int) -> dict[str, Any]:
    """Mean and spread per architecture over the passes finished so far."""
    result: dict[str, Any] = {"seeds": list(SEEDS[:seeds]), "architectures": {}}
    for architecture in architectures:
        rows: dict[str, list[float]] = {"f1": [], "far": [], "mar": [], "event_f1": [], "seconds": []}
        done, failed = [], []
        groups: dict[str, dict[str, list[float]]] = {}
        for seed in SEEDS[:seeds]:
            folder = pass_folder(out_dir, architecture, seed)
            if (folder / FAILED_JSON).is_file():
                failed.append({"seed": seed, **json.loads((folder / FAILED_JSON).read_text())})
            if not (folder / SUMMARY_JSON).is_file():
                continue
            product = json.loads((folder / SUMMARY_JSON).read_text())["detectors"][PRODUCT]
            overall = product["overall"]
            for key in ("f1", "far", "mar"):
                rows[key].append(overall[key])
            rows["event_f1"].append(overall["events"]["event_f1"])
            rows["seconds"].append(product["seconds"])
            for group, figures in product["groups"].items():
                for key in ("f1", "far", "mar"):
                    groups.setdefault(group, {}).setdefault(key, []).append(figures[key])
            done.append(seed)
        result["architectures"][architecture] = {
            "seeds_done": done,
            "failed": failed,
            **{key: _spread(values) for key, values in rows.items()},
            "groups": {g: {k: _spread(v) for k, v in figures.items()} for g, figures in groups.items()},
        }
    return result


def _cell(figure: dict[str, float | None], percent: bool = False, digits: int = 3) -> str:
    if figure["mean"] is None:
        return "n/a"
    factor, unit = (100.0, " %") if percent else (1.0, "")
    spread = f" ± {factor * figure['sd']:.{digits}f}" if figure["sd"] is not None else ""
    return f"{factor * figure['mean']:.{digits}f}{spread}{unit}"


def render(result: dict[str, Any]) -> str:
    """The Markdown table: one row per architecture, overall and per group (F1 / FAR / MAR means)."""
    groups = ("valve1", "valve2", "other")
    lines = [
        "| architecture | seeds | F1 | FAR | MAR | "
        + " | ".join(f"{g} F1 / FAR / MAR" for g in groups)
        + " | event F1 | seconds per pass |",
        "|---|---|---|---|---|" + "---|" * len(groups) + "---|---|",
    ]
    for name, figures in result["architectures"].items():
        seeds = ", ".join(map(str, figures["seeds_done"])) or "none"
        if figures["failed"]:
            seeds += f" (failed: {', '.join(str(f['seed']) for f in figures['failed'])})"
        per_group = []
        for group in groups:
            g = figures["groups"].get(group)
            if not g:
                per_group.append("n/a")
                continue
            per_group.append(f"{g['f1']['mean']:.3f} / {100 * g['far']['mean']:.2f} % / {100 * g['mar']['mean']:.2f} %")
        lines.append(
            f"| {name} | {seeds} | {_cell(figures['f1'])} | {_cell(figures['far'], True, 2)} | "
            f"{_cell(figures['mar'], True, 2)} | {' | '.join(per_group)} | {_cell(figures['event_f1'])} | "
            f"{_cell(figures['seconds'], digits=0)} |"
        )
    return "\n".join(lines) + "\n"


def write_aggregate(out_dir: Path, architectures: list[str], seeds: int) -> dict[str, Any]:
    result = aggregate(out_dir, architectures, seeds)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULT_JSON).write_text(json.dumps(result, indent=2))
    (out_dir / RESULT_MD).write_text(render(result))
    return result
