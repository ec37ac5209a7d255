"""Fleet input a wave of assets at a time: the waves together are exactly the fleet read at once.

With an asset column every file is split once and its pieces spilled; with asset folders a wave
reads only its own files. Either way the rows, row numbers, set-aside rows and unplaced files
must be those of reading the whole fleet.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import IngestConfig
from pipeline.data.files import discover_files
from pipeline.data.fleet import fleet_waves, read_asset, read_fleet
from pipeline.sample_data import generate

ASSETS = ["A-1", "B-2", "C 3", "D/4", "E-5"]


def _long_files(folder: Path) -> list[tuple[str, Path]]:
    """Two files with the five assets' rows interleaved, one bad asset id, a file without the column and an unreadable one."""
    frames = [generate(days=1, seed=i, faults=[]).iloc[:40].assign(asset=asset) for i, asset in enumerate(ASSETS)]
    rows = pd.concat(frames, ignore_index=True).sample(frac=1, random_state=0)
    rows.iloc[7, rows.columns.get_loc("asset")] = "   "  # an empty id: set aside with its reason
    folder.mkdir()
    rows.iloc[:120].to_csv(folder / "a.csv", index=False)
    rows.iloc[120:].to_csv(folder / "b.csv", index=False)
    frames[0].drop(columns="asset").to_csv(folder / "c.csv", index=False)
    (folder / "d.csv").write_bytes(b"\x00\x01binary")
    return discover_files([folder])


def _folder_files(folder: Path) -> list[tuple[str, Path]]:
    for i, asset in enumerate(["A-1", "B-2", "C-3"]):
        (folder / asset).mkdir(parents=True)
        frame = generate(days=1, seed=i, faults=[]).iloc[:60]
        frame.iloc[:30].to_csv(folder / asset / "1.csv", index=False)
        frame.iloc[30:].to_csv(folder / asset / "2.csv", index=False)
    generate(days=1, seed=5, faults=[]).iloc[:10].to_csv(folder / "loose.csv", index=False)  # in no asset folder
    return discover_files([folder])


def _same_pieces(expected: dict, returned: dict) -> None:
    assert sorted(returned) == sorted(expected)
    for asset, pieces in expected.items():
        assert [p.name for p in returned[asset]] == [p.name for p in pieces]
        for want, got in zip(pieces, returned[asset]):
            pd.testing.assert_frame_equal(got.frame, want.frame)
            assert list(got.data_rows()) == list(want.data_rows())


@pytest.mark.parametrize("layout", ["column", "folders"])
def test_waves_together_are_the_whole_fleet(tmp_path, layout):
    if layout == "column":
        files, ingest = _long_files(tmp_path / "in"), IngestConfig(asset_column="asset")
    else:
        files, ingest = _folder_files(tmp_path / "in"), IngestConfig(asset_folders=True)
    whole = read_fleet(files, ingest)

    waves = list(fleet_waves(files, ingest, 2))

    assert [wave.assets for wave in waves] == [whole.assets[i : i + 2] for i in range(0, len(whole.assets), 2)]
    _same_pieces(whole.pieces, {a: p for wave in waves for a, p in wave.pieces.items()})
    assert sorted(waves[0].unplaced) == sorted(whole.unplaced) and whole.unplaced  # named once, in the first wave
    pd.testing.assert_frame_equal(waves[0].rejected.reset_index(drop=True), whole.rejected.reset_index(drop=True))
    assert all(not wave.unplaced and not len(wave.rejected) for wave in waves[1:])


def test_a_wave_of_chosen_assets_and_the_spill_is_removed(tmp_path, monkeypatch):
    files = _long_files(tmp_path / "in")
    spill = tmp_path / "tmp"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))  # where temporary folders are made

    waves = fleet_waves(files, IngestConfig(asset_column="asset"), 10, only=["C 3", "A-1", "not in the data"])
    first = next(waves)
    assert first.assets == ["A-1", "C 3"]
    assert any(spill.iterdir())  # pieces spilled while the waves are read ...
    assert next(waves, None) is None
    assert not any(spill.iterdir())  # ... and gone once they are


def test_one_assets_rows_alone(tmp_path):
    files, ingest = _long_files(tmp_path / "in"), IngestConfig(asset_column="asset")
    whole = read_fleet(files, ingest)

    _same_pieces({"D/4": whole.pieces["D/4"]}, {"D/4": read_asset(files, ingest, "D/4")})
    assert read_asset(files, ingest, "not in the data") is None
