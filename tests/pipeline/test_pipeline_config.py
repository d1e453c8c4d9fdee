"""PipelineConfig: presets, JSON files, validation messages, what the Trainer sees."""
import json

import pytest

from dolg_model.config import ConfigError
from pipeline.config import NOT_FOR_TRAINER, PRESETS, PipelineConfig, load_config
from pipeline.pipeline import beam_pipeline_args


def test_presets_are_valid_and_round_trip():
    for name, config in PRESETS.items():
        assert PipelineConfig.from_json(config.to_json()) == config, name


def test_config_file_overrides_preset_and_model_fields(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train_steps": 7, "warmup_steps": 1, "model": {"embedding_dim": 64}}))
    config = load_config("tiny", str(path))
    assert config.train_steps == 7 and config.model.embedding_dim == 64
    assert config.model.backbone == PRESETS["tiny"].model.backbone  # the rest kept


@pytest.mark.parametrize("values, field", [
    ({"train_stepz": 3}, "train_stepz"),
    ({"model": {"embeding_dim": 3}}, "embeding_dim"),
    ({"batch_size": 0}, "batch_size"),
    ({"pipeline_name": "Bad_Name"}, "pipeline_name"),
    ({"model": {"head": "softmax"}}, "head"),
])
def test_bad_values_name_the_field(tmp_path, values, field):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ConfigError) as err:
        load_config("tiny", str(path))
    assert err.value.field == field and field in str(err.value)


def test_unreadable_config_file_is_named(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="c.json"):
        load_config("tiny", str(path))


def test_trainer_view_ignores_thresholds_and_beam():
    a = PRESETS["tiny"]
    b = a.replace(min_map=0.9, max_map_drop=0.5, beam_mode="multi_processing", pipeline_name="other")
    assert a.trainer_json() == b.trainer_json()
    assert a.trainer_json() != a.replace(learning_rate=0.5).trainer_json()
    assert not set(NOT_FOR_TRAINER) & set(json.loads(a.trainer_json()))


def test_direct_runner_flags_only_without_another_runner():
    config = PRESETS["tiny"].replace(beam_mode="multi_processing", beam_workers=3)
    assert beam_pipeline_args(config) == ["--runner=components.beam_runner.LocalRunner",
                                          "--direct_running_mode=multi_processing", "--direct_num_workers=3"]
    flink = config.replace(beam_args=("--runner=FlinkRunner", "--flink_master=host:8081"))
    assert beam_pipeline_args(flink) == ["--runner=FlinkRunner", "--flink_master=host:8081"]
    direct = config.replace(beam_args=("--runner=DirectRunner",))  # asked for by name: Beam's own
    assert beam_pipeline_args(direct) == ["--direct_running_mode=multi_processing", "--direct_num_workers=3",
                                          "--runner=DirectRunner"]


def test_the_local_runner_runs_both_modes_without_trying_prism(caplog):
    """The local runner runs a pipeline with a grouping and a side input in-memory and with
    two worker processes, and never goes near Prism (whose binary the DirectRunner would
    download from GitHub). Mutation that fails it: ``RUNNER`` set back to "DirectRunner"."""
    import logging

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    from components.beam_runner import RUNNER

    for mode in (["--direct_running_mode=in_memory"], ["--direct_running_mode=multi_processing",
                                                       "--direct_num_workers=2"]):
        with caplog.at_level(logging.INFO):
            with beam.Pipeline(options=PipelineOptions([f"--runner={RUNNER}", *mode])) as p:
                total = p | "Total" >> beam.Create([10])
                doubled = (p | beam.Create([1, 2, 3, 3]) | beam.Map(lambda x: (x, 1)) | beam.CombinePerKey(sum)
                           | beam.Map(lambda kv, t: kv[0] * kv[1] + t, t=beam.pvalue.AsSingleton(total)))
                assert_that(doubled, equal_to([11, 12, 16]))
    assert "prism" not in caplog.text.lower()


def test_run_command_passes_beam_mode_to_the_pipeline(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dolg_tfx.cli import main
    from pipeline import local_runner, run_report

    seen = {}

    def fake_run(config, data, output, enable_cache=True, verbose=True, preset=None, watch=None):
        seen.update(config=config, data=data, cache=enable_cache, preset=preset)
        return {"run": "r", "components": {}}

    monkeypatch.setattr(local_runner, "run", fake_run)
    monkeypatch.setattr(run_report, "write_report", lambda output, model=None: f"{output}/report.html")
    result = CliRunner().invoke(main, ["run", "--data", str(tmp_path), "--output", str(tmp_path / "o"),
                                       "--preset", "tiny", "--beam-mode", "multi_processing",
                                       "--beam-workers", "3", "--no-cache"])
    assert result.exit_code == 0, result.output
    assert seen["config"].beam_mode == "multi_processing" and seen["config"].beam_workers == 3
    assert seen["cache"] is False and seen["preset"] == "tiny"
    assert "--direct_num_workers=3" in beam_pipeline_args(seen["config"])


def test_fingerprint_max_files_reaches_ingestion(tmp_path, caplog):
    """Above the config's file count, ImageExampleGen takes no fingerprint and says why."""
    from pipeline.pipeline import create_pipeline
    from schemas import SCHEMA_FILE
    from pipeline.config import PREPROCESSING_FN, RUN_FN

    for i in range(3):
        (tmp_path / "data" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "a" / f"{i}.jpg").write_bytes(b"x" * i)

    def fingerprint_of(config):
        pipe = create_pipeline(config, data=str(tmp_path / "data"), pipeline_root=str(tmp_path / "root"),
                               serving_model_dir=str(tmp_path / "serving"), schema_file=SCHEMA_FILE,
                               preprocessing_fn=PREPROCESSING_FN, run_fn=RUN_FN)
        [gen] = [c for c in pipe.components if c.id == "ImageExampleGen"]
        return gen.exec_properties["input_fingerprint"]

    assert fingerprint_of(PRESETS["tiny"])
    with caplog.at_level("WARNING"):
        assert not fingerprint_of(PRESETS["tiny"].replace(fingerprint_max_files=2))
    assert "fingerprint_max_files" in caplog.text and "--no-cache" in caplog.text
    with pytest.raises(ConfigError, match="fingerprint_max_files"):
        PRESETS["tiny"].replace(fingerprint_max_files=0)
