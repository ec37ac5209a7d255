"""Fleets: an asset column or asset folders, a model per asset, odd asset ids, parallel workers.

One fleet of tiny assets is trained and scored once per session (``tests/fleet_fixtures.py``);
the tests score it again in other layouts and compare.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from pipeline.config import PipelineConfig
from pipeline.data.assets import MAX_ASSET_ID, asset_key, asset_problem, read_normal_periods
from pipeline.detector.fitting import normal_mask, open_normal_stretch
from pipeline.errors import InputError
from pipeline.sample_data import generate
from tests.conftest import TINY_FAULTS
from tests.fleet_fixtures import ASSETS, LONG_ID, ODD, long_table, read_fleet_table, read_scores


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_model_per_asset_and_a_short_asset_reported_not_dropped(fleet):
    assert fleet["train_code"] == 2  # the short asset and the unusable ids
    client = MlflowClient(fleet["uri"])
    models = {m.tags["asset"]: m for m in client.search_registered_models(filter_string="tags.fleet = 'plant'")}
    assert sorted(models) == sorted(ASSETS)
    for asset, model in models.items():
        assert model.name == f"plant--{asset_key(asset)}" and "/" not in model.name and " " not in model.name
        assert {k: str(v) for k, v in model.aliases.items()} == {"champion": "1"}
    parent = client.search_runs(
        [client.get_experiment_by_name("plant").experiment_id], "tags.stage = 'train' and tags.fleet = 'plant'"
    )
    table = pd.read_csv(client.download_artifacts([r for r in parent if "asset" not in r.data.tags][0].info.run_id, "fleet.csv"))
    short = table.set_index("asset").loc["short"]
    assert short["status"] == f"not trained: 10 normal rows, {_needed()} needed"
    assert (table.set_index("asset").loc[ASSETS, "status"] == "ok").all()


def _needed() -> int:
    from pipeline.detector.fitting import rows_needed
    from tests.conftest import tiny_config

    return rows_needed(tiny_config())


def test_score_uses_each_assets_threshold_and_keeps_every_row(fleet, fleet_scored):
    out = fleet_scored["out"]
    assert fleet_scored["code"] == 2 and "asset short: not scored" in fleet_scored["err"], fleet_scored["err"]
    scores = read_scores(out)
    assert len(scores) == sum(len(f) for f in fleet["frames"].values()) + 3  # one row per input row
    assert list(pd.read_csv(out / "scores.csv", nrows=0).columns[:2]) == ["asset", "source"]
    fleet_table = pd.read_csv(out / "fleet.csv").set_index("asset")
    for asset in ASSETS:
        rows = scores[scores["asset"] == asset]
        assert rows["threshold"].nunique() == 1 and rows["threshold"].iloc[0] == pytest.approx(
            fleet_table.loc[asset, "threshold"]
        )
        assert rows["status"].isna().all() and rows["score"].notna().sum() == len(fleet["frames"][asset]) - 7
    assert fleet_table["threshold"].dropna().nunique() == len(ASSETS)  # each asset its own threshold
    short = scores[scores["asset"] == "short"]
    assert len(short) == 10 and short["score"].isna().all() and short["status"].str.contains("no registered model").all()
    unnamed = scores[scores["asset"].isna() | (scores["asset"].str.strip() == "") | (scores["asset"] == LONG_ID)]
    assert len(unnamed) == 3 and set(unnamed["status"]) == {"empty asset id", f"asset id longer than {MAX_ASSET_ID} characters"}
    events = pd.read_csv(out / "anomalies.csv")
    assert list(events.columns[:2]) == ["asset", "event_id"] and set(events["asset"]) <= set(ASSETS)
    assert not events.duplicated(["asset", "event_id"]).any()


def test_shuffling_rows_across_assets_and_folder_layout_change_no_score(fleet, fleet_scored, tmp_path, capsys):
    shuffled = tmp_path / "shuffled.csv"
    long_table(fleet["frames"], seed=7).to_csv(shuffled, index=False)
    folders = tmp_path / "landing"
    for asset, frame in fleet["frames"].items():
        if asset == ODD or asset == "../etc":
            continue  # not folder names
        (folders / asset).mkdir(parents=True)
        frame.iloc[:700].to_csv(folders / asset / "a.csv", index=False)
        frame.iloc[700:].to_csv(folders / asset / "b.csv", index=False)
    args = ["--model-name", "plant", "--tracking-uri", fleet["uri"]]
    _cli(capsys, "score", "--input", str(shuffled), "--asset-column", "asset", "--out", str(tmp_path / "b"), *args)
    code, _, err = _cli(capsys, "score", "--input", str(folders), "--asset-folders", "--out", str(tmp_path / "c"), *args)
    assert code == 2, err  # "short" has no model
    reference = read_scores(fleet_scored["out"])
    reshuffled, by_folder = (read_scores(tmp_path / name) for name in "bc")
    pd.testing.assert_frame_equal(reference.drop(columns="source"), reshuffled.drop(columns="source"))
    columns = ["asset", "timestamp", "score", "anomaly", "event_id"]
    for asset in ("P-101",):
        want = reference[reference["asset"] == asset][columns].reset_index(drop=True)
        got = by_folder[by_folder["asset"] == asset][columns].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want)


def test_two_workers_train_and_score_exactly_as_one(fleet, fleet_scored, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--model-name", "plant", "--tracking-uri", uri, "--workers", "2", "--asset-column", "asset"]
    plant = str(fleet["root"] / "plant.csv")
    code, _, err = _cli(capsys, "train", "--input", plant, "--config", str(fleet["config"]), *common)
    assert code == fleet["train_code"] == 2, err  # the short asset and the unusable ids, as with one worker
    code, _, err = _cli(capsys, "score", "--input", plant, "--out", str(tmp_path / "out"), *common)
    assert code == fleet_scored["code"], err
    pd.testing.assert_frame_equal(read_scores(tmp_path / "out"), read_scores(fleet_scored["out"]))
    pd.testing.assert_frame_equal(read_fleet_table(tmp_path / "out"), read_fleet_table(fleet_scored["out"]))


def test_promote_one_assets_challenger(fleet, tmp_path, capsys):
    store = tmp_path / "mlflow.db"
    shutil.copy(Path(fleet["uri"].removeprefix("sqlite:///")), store)
    uri = f"sqlite:///{store}"
    one = tmp_path / "p101.csv"
    fleet["frames"]["P-101"].assign(asset="P-101").to_csv(one, index=False)
    code, _, err = _cli(capsys, "train", "--input", str(one), "--asset-column", "asset", "--config", str(fleet["config"]),
                        "--model-name", "plant", "--tracking-uri", uri, "--workers", "1")  # fmt: skip
    assert code == 0, err
    client = MlflowClient(uri)
    assert _aliases(client, "plant--P-101") == {"champion": "1", "challenger": "2"}
    code, out, err = _cli(capsys, "promote", "--model-name", "plant", "--asset", "P-101", "--force", "--tracking-uri", uri)
    assert code == 0 and "plant asset P-101 version 2 holds @champion" in out, err
    assert _aliases(client, "plant--P-101") == {"champion": "2"}
    assert _aliases(client, f"plant--{asset_key('../etc')}") == {"champion": "1"}


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


@pytest.mark.parametrize(
    "asset, problem",
    [("", "empty asset id"), ("   ", "empty asset id"), (None, "empty asset id"), (LONG_ID, "longer than")],
)
def test_unusable_asset_ids_are_named(asset, problem):
    assert problem in asset_problem(asset)


@pytest.mark.parametrize("asset", ["pump/1", "..", ".", "../../etc/passwd", "P 101", "Pumpe-Ü", "a\\b", "x" * MAX_ASSET_ID])
def test_asset_keys_are_safe_and_distinct(asset):
    key = asset_key(asset)
    assert key not in (".", "..") and all(c.isascii() and (c.isalnum() or c in "._-~") for c in key)
    assert len(key) <= 60 and key != asset_key(asset + "_")
    assert Path("out", key).resolve().parent == Path("out").resolve()


def test_plain_ids_are_their_own_key():
    assert asset_key("P-101") == "P-101" and asset_key("pump_3.b") == "pump_3.b"


def test_normal_periods_per_asset_and_the_commissioning_stretch(tmp_path):
    path = tmp_path / "periods.csv"
    path.write_text("asset,start,end\nP-1,2026-10-01 00:00,2026-10-01 06:00\nP-1,2026-10-01T10:00:00+02:00,2026-10-01 09:00\n")
    periods = read_normal_periods(path)
    table = pd.DataFrame({"timestamp": pd.date_range("2026-10-01", periods=12, freq="h", tz="UTC")})
    expected = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0], bool)  # [00, 06) and [08, 09) UTC
    returned = normal_mask(table, PipelineConfig(), periods.mask("P-1", table["timestamp"]))
    np.testing.assert_array_equal(returned, expected)
    assert periods.mask("P-2", table["timestamp"]) is None
    first = PipelineConfig.model_validate({"training": {"normal_first": "3h"}})
    np.testing.assert_array_equal(normal_mask(table, first), np.arange(12) < 3)


def test_a_normal_stretch_is_open_until_the_data_reaches_its_end():
    table = pd.DataFrame({"timestamp": pd.date_range("2026-10-01", periods=10, freq="h", tz="UTC")})  # 00:00..09:00
    hour = pd.Timestamp("2026-10-01", tz="UTC").value, pd.Timedelta("1h").value
    plain = PipelineConfig()
    assert open_normal_stretch(table, plain) is None  # no stretch named: every row is normal
    first = PipelineConfig.model_validate({"training": {"normal_first": "12h"}})
    assert open_normal_stretch(table, first) == pd.Timestamp("2026-10-01 12:00", tz="UTC")
    assert open_normal_stretch(table.iloc[:0], first) is None
    assert open_normal_stretch(table, PipelineConfig.model_validate({"training": {"normal_first": "9h"}})) is None
    spans = [(hour[0], hour[0] + 4 * hour[1]), (hour[0] + 8 * hour[1], hour[0] + 11 * hour[1])]  # [00, 04), [08, 11)
    assert open_normal_stretch(table, first, spans) == pd.Timestamp("2026-10-01 11:00", tz="UTC")  # periods win
    assert open_normal_stretch(table, first, spans[:1]) is None  # ended; one not begun yet does not hold training
    berlin = {"training": {"normal_until": "2026-10-01 14:00:00"}, "ingest": {"source_timezone": "Europe/Berlin"}}
    until = PipelineConfig.model_validate(berlin)
    assert open_normal_stretch(table, until) == pd.Timestamp("2026-10-01 12:00", tz="UTC")  # 14:00 in Berlin


@pytest.mark.parametrize(
    "text, message",
    [
        ("asset,begin,end\n", "column 'start' not found"),
        ("asset,start,end\nP-1,yesterday,2026-10-02\n", "row 1, column 'start': cannot parse 'yesterday'"),
        ("asset,start,end\nP-1,2026-10-02,2026-10-01\n", "row 1: start is not before end"),
        ("asset,start,end\n,2026-10-01,2026-10-02\n", "row 1: empty asset id"),
    ],
)
def test_bad_normal_periods_file_names_row_and_column(tmp_path, text, message):
    path = tmp_path / "periods.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_normal_periods(path)


def _run(args: list[str], crash_at: str | None = None) -> tuple[int, str]:
    """``anomaly-pipeline run`` as a child process (so it can be killed with SIGKILL at a checkpoint)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if crash_at:
        env["PIPELINE_TEST_CRASH_AT"] = crash_at
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", *args], env=env, capture_output=True, text=True)
    return done.returncode, "\n".join(line for line in done.stderr.splitlines() if line.startswith("error:"))


def _run_scores(out: Path) -> pd.DataFrame:
    frames = [pd.read_csv(p, dtype={"asset": str}) for p in sorted(out.glob("2*/scores.csv"))]
    frame = pd.concat(frames, ignore_index=True).drop(columns="source")
    return frame.sort_values(["asset", "timestamp", "status"], kind="stable").reset_index(drop=True)


def test_fleet_run_is_incremental_crash_safe_and_picks_up_a_new_asset(fleet, tmp_path):
    """Two files give the scores of one run over both, also when the second run is killed after
    writing its outputs and started again. A new asset appears in the first file before its normal
    stretch is complete: it waits, and the run that trains it scores its rows of both files."""
    frames = {a: fleet["frames"][a] for a in ("P-101", "../etc")}
    frames["P-201"] = generate(days=1, seed=21, faults=TINY_FAULTS)
    rows = (
        pd.concat([f.assign(asset=a) for a, f in frames.items()]).sort_values("timestamp", kind="stable").reset_index(drop=True)
    )
    cut = pd.to_datetime(np.where(rows["asset"] == "P-201", "2026-10-01 10:00", "2026-10-01 16:00"))
    first = rows[rows["timestamp"] < cut]
    second = rows.drop(first.index)
    results = {}
    for name in ("whole", "split", "killed"):
        root = tmp_path / ("whole" if name == "whole" else "parts")
        args = ["--input", str(root / "in"), "--out", str(root / "out"), "--state", str(root / "state"),
                "--asset-column", "asset", "--config", str(fleet["config"]), "--model-name", "plant",
                "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--workers", "1"]  # fmt: skip
        if name == "killed":  # the same first run (restored at the same paths), then the second killed after its outputs
            shutil.rmtree(root)
            shutil.copytree(tmp_path / "after_part0", root)
            second.to_csv(root / "in" / "part1.csv", index=False)
            assert _run(args, "after_outputs")[0] == -9
        else:
            (root / "in").mkdir(parents=True)
            shutil.copy(Path(fleet["uri"].removeprefix("sqlite:///")), root / "mlflow.db")
        if name == "whole":
            pd.concat([first, second]).to_csv(root / "in" / "all.csv", index=False)
        elif name == "split":
            first.to_csv(root / "in" / "part0.csv", index=False)
            assert _run(args)[0] == 2  # P-201 waits for its normal stretch (until 12:00) to be complete
            waiting = _run_scores(root / "out").query("asset == 'P-201'")
            assert len(waiting) == 600 and waiting["status"].str.contains("waiting for a model: its normal stretch").all()
            shutil.copytree(root, tmp_path / "after_part0")
            second.to_csv(root / "in" / "part1.csv", index=False)
        code, err = _run(args)
        assert code == 0, err
        scores = _run_scores(root / "out")
        waited = scores["status"].astype("string").str.contains("waiting for a model", na=False)  # scored later
        assert scores.loc[~waited, "status"].isna().all()  # every other row is scored
        results[name] = scores[~waited].drop(columns="status").reset_index(drop=True)
        events = pd.read_csv(root / "out" / "anomalies.csv")
        assert not events.duplicated(["asset", "event_id"]).any() and "P-201" in set(events["asset"])
    assert len(results["whole"]) == len(rows)
    for name in ("split", "killed"):
        pd.testing.assert_frame_equal(results[name], results["whole"], rtol=1e-5)


def test_fleet_run_sets_a_bad_asset_aside_and_processes_the_others(fleet, tmp_path, capsys):
    root = tmp_path
    (root / "in").mkdir()
    shutil.copy(Path(fleet["uri"].removeprefix("sqlite:///")), root / "mlflow.db")
    good = fleet["frames"]["P-101"].assign(asset="P-101")
    broken = fleet["frames"]["../etc"].assign(asset="../etc", motor_current="offline")  # a model sensor all text
    pd.concat([good, broken]).to_csv(root / "in" / "part0.csv", index=False)
    code, _, err = _cli(capsys, "run", "--input", str(root / "in"), "--out", str(root / "out"), "--state", str(root / "state"),
                        "--asset-column", "asset", "--config", str(fleet["config"]), "--model-name", "plant",
                        "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--workers", "1")  # fmt: skip
    assert code == 2 and "asset ../etc: not scored" in err, err
    scores = _run_scores(root / "out")
    assert scores[scores["asset"] == "P-101"]["score"].notna().sum() == len(good) - 7
    aside = scores[scores["asset"] == "../etc"]
    assert len(aside) == len(broken) and aside["score"].isna().all() and aside["status"].str.contains("not scored").all()


def test_encode_a_fleet_each_asset_with_its_own_model(fleet, fleet_scored, tmp_path, capsys):
    code, out, err = _cli(capsys, "encode", "--input", str(fleet["root"] / "plant.csv"), "--asset-column", "asset",
                          "--out", str(tmp_path / "enc"), "--model-name", "plant", "--tracking-uri", fleet["uri"])  # fmt: skip
    assert code == 2 and "asset short: not written" in err, err  # the asset without a model is named
    latent = pd.read_parquet(tmp_path / "enc" / "latent.parquet")
    assert list(latent.columns[:3]) == ["asset", "source", "timestamp"] and "score" in latent.columns
    counts = latent["asset"].value_counts()
    assert {asset: counts[asset] for asset in ASSETS} == {asset: len(fleet["frames"][asset]) - 7 for asset in ASSETS}
    scores = read_scores(fleet_scored["out"]).dropna(subset=["score"])
    joined = latent.merge(scores[["asset", "timestamp", "score"]], on=["asset", "timestamp"], suffixes=("", "_scored"))
    assert len(joined) == len(latent)
    np.testing.assert_allclose(joined["score"], joined["score_scored"], rtol=1e-6)


def test_fleet_scores_in_parquet_equal_the_csv_scores(fleet, tmp_path, capsys):
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    from pipeline.reports.fleet import fleet_scores_schema

    two = tmp_path / "two.csv"  # two assets with models, one without, and the rows with unusable ids
    frame = pd.read_csv(fleet["root"] / "plant.csv", dtype={"asset": str}, keep_default_na=False)
    frame[~frame["asset"].isin(["../etc"])].to_csv(two, index=False)
    common = ["--input", str(two), "--asset-column", "asset", "--model-name", "plant", "--tracking-uri", fleet["uri"]]
    assert _cli(capsys, "score", *common, "--out", str(tmp_path / "csv"))[0] == 2  # the short asset has no model
    assert _cli(capsys, "score", *common, "--out", str(tmp_path / "parquet"), "--format", "parquet")[0] == 2
    assert not (tmp_path / "parquet" / "scores.csv").exists()

    schema = pq.read_schema(tmp_path / "parquet" / "scores.parquet")
    sensors = [name.removeprefix("contrib_") for name in schema.names if name.startswith("contrib_")]
    assert schema.names[0] == "asset" and schema.equals(fleet_scores_schema(sensors))
    returned = pq.read_table(tmp_path / "parquet" / "scores.parquet").to_pandas()
    # "" (quoted: an empty asset id, a set-aside row's timestamp) is a string, an unquoted empty field a null
    options = pa_csv.ConvertOptions(column_types=schema, strings_can_be_null=True, quoted_strings_can_be_null=False)
    expected = pa_csv.read_csv(tmp_path / "csv" / "scores.csv", convert_options=options).to_pandas()
    assert len(returned) == len(frame) - (frame["asset"] == "../etc").sum()  # one row per input row
    assert {"P-101", ODD, "short"} <= set(returned["asset"].dropna()) and returned["status"].notna().any()
    pd.testing.assert_frame_equal(returned, expected)
    for name in ("anomalies.csv", "fleet.csv"):
        assert (tmp_path / "parquet" / name).exists()
