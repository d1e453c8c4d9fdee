"""`dolg-tfx run` and `dolg-tfx demo`: the pipeline on a user's data, or on the synthetic demo."""
import os

import click


def _run_pipeline(config, data, output, **kwargs):
    """local_runner.run with its refusals (output held by another run, an unreadable
    artifact) as one-line CLI errors."""
    from pipeline import local_runner, run_lock

    try:
        return local_runner.run(config, data, output, **kwargs)
    except (run_lock.RunLocked, local_runner.ArtifactUnreadable) as err:
        raise click.ClickException(str(err))


def _load(preset, config_file, overrides=None):
    from dolg_model.config import ConfigError
    from pipeline.config import load_config

    try:
        return load_config(preset, config_file, **(overrides or {}))
    except ConfigError as err:
        raise click.ClickException(str(err))


@click.command()
@click.option("--data", required=True, type=click.Path(exists=True),
              help="A folder tree root/<label>/<image> or a GLDv2-style CSV (id,landmark_id).")
@click.option("--output", required=True, type=click.Path(file_okay=False),
              help="Pipeline root, ML Metadata and the pushed model go here.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON file with PipelineConfig fields (\"model\" holds DOLGConfig fields).")
@click.option("--preset", default="cpu-demo", show_default=True, help="paper, cpu-demo or tiny.")
@click.option("--no-cache", is_flag=True, help="Run every component even if its inputs are unchanged.")
@click.option("--beam-mode", type=click.Choice(["in_memory", "multi_processing"]), default=None,
              help="Beam DirectRunner mode (default: the config's; multi_processing uses --beam-workers).")
@click.option("--beam-workers", type=click.IntRange(min=1), default=None)
@click.option("-v", "--verbose", is_flag=True, help="Show TFX's INFO logs.")
def run(data, output, config_file, preset, no_cache, beam_mode, beam_workers, verbose):
    """Run the whole pipeline on your images and print a summary."""
    from pipeline import local_runner

    overrides = {k: v for k, v in (("beam_mode", beam_mode), ("beam_workers", beam_workers)) if v}
    config = _load(preset, config_file, overrides)
    summary = _run_pipeline(config, data, output, enable_cache=not no_cache, verbose=verbose)
    click.echo(local_runner.format_summary(summary))


@click.command()
@click.option("--output", default="outputs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--landmarks", default=40, show_default=True, help="Synthetic landmarks to draw.")
@click.option("--views", default=12, show_default=True, help="Views of each landmark.")
@click.option("--preset", default="cpu-demo", show_default=True)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False))
@click.option("-v", "--verbose", is_flag=True, help="Show TFX's INFO logs.")
def demo(output, landmarks, views, preset, config_file, verbose):
    """Generate synthetic landmarks, run the pipeline, compare trained and untrained mAP,
    and query the pushed model."""
    from pipeline import demo_report, local_runner
    from pipeline.demo_data import generate_landmarks

    config = _load(preset, config_file)
    data = os.path.join(output, "data")
    if not os.path.isdir(data):
        info = generate_landmarks(data, n_landmarks=landmarks, views_per_landmark=views,
                                  size=max(160, config.model.image_size), seed=0)
        click.echo(f"Generated {info['n_images']} images of {landmarks} synthetic landmarks in {os.path.abspath(data)}")
    click.echo("Running the pipeline (ExampleGen, statistics, schema, Transform, Trainer, Evaluator, Pusher)...")
    summary = _run_pipeline(config, data, os.path.join(output, "run"), verbose=verbose)
    click.echo(local_runner.format_summary(summary))
    click.echo(demo_report.report(config, summary))
