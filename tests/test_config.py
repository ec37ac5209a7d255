from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pipeline.config import PipelineConfig, load_config, to_yaml, with_overrides
from pipeline.errors import InputError


def test_the_readme_documents_every_setting_and_its_true_default():
    """The README's Configuration block, read as a config file, is exactly the defaults."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Configuration", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    documented = yaml.safe_load(block)
    assert documented == PipelineConfig().model_dump()


def test_a_file_sets_what_it_names_and_leaves_the_rest_at_the_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("events:\n  min_event_rows: 7\n")
    returned = load_config(path)
    assert returned.events.min_event_rows == 7
    assert returned.model_copy(update={"events": PipelineConfig().events}) == PipelineConfig()


def test_file_values_and_flag_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("features:\n  window_size: 16\ntraining:\n  normal_until: '2026-01-01'\n")
    config = with_overrides(load_config(path), {"training.normal_until": "2026-02-01", "ingest.label_column": None})
    assert config.features.window_size == 16
    assert config.training.normal_until == "2026-02-01"  # the flag wins
    assert config.ingest.label_column is None


def test_bad_value_names_field_allowed_and_given(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  architecture: transformer\n")
    with pytest.raises(InputError) as info:
        load_config(path)
    message = str(info.value)
    assert "model.architecture" in message and "'conv', 'dense', 'lstm' or 'vae'" in message and "'transformer'" in message


def test_unknown_field_and_bad_number_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("features:\n  windw_size: 8\n")
    with pytest.raises(InputError, match="features.windw_size"):
        load_config(path)
    path.write_text("threshold:\n  quantile: 1.5\n")
    with pytest.raises(InputError, match="threshold.quantile.*less than 1"):
        load_config(path)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text("features: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(path)


def test_yaml_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(PipelineConfig()))
    assert load_config(path) == PipelineConfig()


def test_normal_until_accepts_an_unquoted_yaml_datetime_and_refuses_a_bare_time(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  normal_until: 2026-10-01 12:00:00\n")
    assert load_config(path).training.normal_until == "2026-10-01 12:00:00"
    path.write_text("training:\n  normal_until: '12:00'\n")
    with pytest.raises(InputError, match="training.normal_until.*with a date"):
        load_config(path)


def test_overrides_leave_unset_settings_unset(tmp_path):
    """The scheduled run treats a reading setting as given only when it was set (e.g. source_timezone)."""
    path = tmp_path / "c.yaml"
    path.write_text("ingest:\n  decimal: ','\n")
    returned = with_overrides(load_config(path), {"ingest.asset_column": "asset", "training.normal_until": None})
    assert returned.ingest.model_fields_set == {"decimal", "asset_column"}
    assert returned.ingest.source_timezone == "UTC" and "training" not in returned.model_fields_set


def test_durations_become_rows_of_the_sampling_interval_at_two_rates():
    from pipeline.config import resolve_durations

    config = PipelineConfig.model_validate(
        {
            "features": {"window_duration": "10min"},
            "events": {"min_event_duration": "15min", "merge_gap_duration": "12min", "release_duration": "11min"},
        }
    )
    per_second = resolve_durations(config, 1.0)
    assert per_second.features.window_size == 600
    assert (per_second.events.min_event_rows, per_second.events.merge_gap_rows, per_second.events.release_rows) == (900, 720, 660)
    five_minutes = resolve_durations(config, 300.0)
    assert five_minutes.features.window_size == 2  # 10 min / 5 min
    # at least 15 min: 3 rows; gaps up to 12 min: 2 rows; release after 11 min: 3 rows
    assert (five_minutes.events.min_event_rows, five_minutes.events.merge_gap_rows, five_minutes.events.release_rows) == (3, 2, 3)
    # The durations stay beside the rows they gave; the input config is unchanged.
    assert five_minutes.features.window_duration == "10min" and config.features.window_size == 32
    # A window never shrinks below 2 rows; without durations nothing changes.
    assert resolve_durations(config, 3600.0).features.window_size == 2
    assert resolve_durations(PipelineConfig(), 300.0) == PipelineConfig()


def test_a_duration_that_is_not_one_names_the_field():
    with pytest.raises(ValidationError, match="positive duration"):
        PipelineConfig.model_validate({"events": {"release_duration": "soon"}})
