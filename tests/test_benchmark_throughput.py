"""The throughput benchmark's command and generator (the benchmark itself is a command that
prints figures; no test times anything)."""

from pipeline.benchmark.throughput import generate_series
from pipeline.cli import main
from pipeline.sample_data import SENSORS


def test_too_few_rows_is_a_bad_argument(capsys):
    assert main(["benchmark", "throughput", "--rows", "10", "--work", "unused"]) == 2
    assert "--rows 10" in capsys.readouterr().err


def test_the_generated_file_has_the_asked_sensors_and_rows():
    frame = generate_series(2_000, 1_000, sensors=11)
    assert len(frame) == 2_000
    assert list(frame.columns[: 1 + len(SENSORS)]) == ["timestamp", *SENSORS]
    assert len(frame.columns) == 12 and frame.iloc[:, 1:].notna().all().all()
    assert list(generate_series(2_000, 1_000, sensors=3).columns) == ["timestamp", *SENSORS[:3]]
