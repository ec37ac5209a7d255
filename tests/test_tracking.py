"""The tracking module against a real sqlite store: what a run records reads back intact."""

import json

from pipeline.tracking import INPUT_PATHS_TAG, TAG_LIMIT, Tracker


def test_input_paths_always_read_back_whole_however_long(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "paths")
    short = [tmp_path / "a.csv"]
    long = [tmp_path / f"{'x' * 90}_{i}.csv" for i in range(100)]
    assert len(json.dumps([str(p) for p in long])) > TAG_LIMIT
    for paths in (short, long):
        with tracker.run("score", "paths") as run_id:
            tracker.record_input_paths(paths)
        run = tracker.client.get_run(run_id)
        assert tracker.recorded_input_paths(run) == [str(p.resolve()) for p in paths]
        tag = run.data.tags.get(INPUT_PATHS_TAG)
        assert tag is None or json.loads(tag) == [str(p.resolve()) for p in paths]  # never a cut, unparseable tag
