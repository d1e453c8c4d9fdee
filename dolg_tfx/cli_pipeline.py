"""`dolg-tfx run` and `dolg-tfx demo`: the pipeline on a user's data, or on the synthetic demo."""
import os

import click


def _run_pipeline(config, data, output, verbose, preset, before=None, after=None, **kwargs):
    """local_runner.run behind a quiet console (one line per component; everything in a log
    file under the output; the whole stream with --verbose), then the run's report.html.
    ``before() -> str`` and ``after(summary, loaded model) -> str`` run inside the console too (their noise
    goes to the log; before's text is said on the console).
    Returns (summary, report path, log path, after's text); refusals (output held by another run, an
    unreadable artifact) become one-line CLI errors."""
    from pipeline import console as console_lib, local_runner, run_facts, run_lock, run_report
    from pipeline.console import ComponentLines, Console

    log_path = console_lib.log_path(output, "run")
    layout = local_runner.Layout(os.path.abspath(output))
    try:
        with Console(log_path, verbose) as console:
            if before is not None:
                console.say(before())
            console.say(f"Running the pipeline on {os.path.abspath(data)} (preset {preset}); "
                        f"full log: {log_path}")
            lines = ComponentLines(console, lambda name: run_facts.component_result(layout, name, config))
            summary = local_runner.run(config, data, output, verbose=verbose, preset=preset, watch=lines,
                                       **kwargs)
            console.say("Writing the report ...")
            from pipeline import demo_report  # imports TensorFlow: inside the console, whose log takes its notices

            model = demo_report.report_model(summary)  # one load for the report and the closing text
            report = run_report.write_report(layout.output, model)
            extra = after(summary, model) if after is not None else ""
    except (run_lock.RunLocked, local_runner.ArtifactUnreadable) as err:
        raise click.ClickException(str(err))
    return summary, report, log_path, extra


def _closing_lines(summary, report, log_path):
    from pipeline import local_runner

    click.echo(local_runner.format_summary(summary))
    click.echo(f"Report: {report}")
    click.echo(f"Full log: {log_path}")


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
@click.option("--gallery", default=None, metavar="DIR_OR_CSV_OR_URI",
              help="Images to search (a folder, flat or <label>/<image>, or a CSV; a path or gs://...): "
                   "every model the run pushes to OUTPUT/serving_model/<V> gets its index in "
                   "OUTPUT/gallery_index/<V>. Default: the config's gallery, if any.")
@click.option("-v", "--verbose", is_flag=True,
              help="Show every log line (TFX, TensorFlow, Beam) on the console too; the full log is "
                   "always kept in OUTPUT/logs/.")
def run(data, output, config_file, preset, no_cache, beam_mode, beam_workers, gallery, verbose):
    """Run the whole pipeline on your images, print a summary and write report.html."""
    overrides = {k: v for k, v in (("beam_mode", beam_mode), ("beam_workers", beam_workers),
                                   ("gallery", gallery)) if v}
    config = _load(preset, config_file, overrides)
    summary, report, log_path, _ = _run_pipeline(config, data, output, verbose, preset,
                                                  enable_cache=not no_cache)
    _closing_lines(summary, report, log_path)


@click.command()
@click.option("--output", default="outputs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--landmarks", default=40, show_default=True, help="Synthetic landmarks to draw.")
@click.option("--views", default=12, show_default=True, help="Views of each landmark.")
@click.option("--preset", default="cpu-demo", show_default=True)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False))
@click.option("-v", "--verbose", is_flag=True,
              help="Show every log line (TFX, TensorFlow, Beam) on the console too; the full log is "
                   "always kept in OUTPUT/logs/.")
def demo(output, landmarks, views, preset, config_file, verbose):
    """Generate synthetic landmarks, run the pipeline with them as the gallery too, compare
    trained and untrained mAP, and query the pushed model through its pushed gallery index."""
    data = os.path.join(output, "data")
    # The demo's landmarks are its gallery: the pipeline indexes them with the model it pushes.
    config = _load(preset, config_file, {"gallery": os.path.abspath(data)})

    # The imports that load TensorFlow happen inside the console, so its start-up notices go
    # to the log, not the terminal.
    def draw_data():
        from pipeline.demo_data import generate_landmarks

        if os.path.isdir(data):
            return f"Using the synthetic landmarks in {os.path.abspath(data)}"
        info = generate_landmarks(data, n_landmarks=landmarks, views_per_landmark=views,
                                  size=max(160, config.model.image_size), seed=0)
        return f"Generated {info['n_images']} images of {landmarks} synthetic landmarks in {os.path.abspath(data)}"

    summary, report, log_path, closing = _run_pipeline(
        config, data, os.path.join(output, "run"), verbose, preset, before=draw_data,
        after=_demo_report(config))
    click.echo(closing)
    _closing_lines(summary, report, log_path)


def _demo_report(config):
    def after(summary, model):
        from pipeline import demo_report

        return demo_report.report(config, summary, model)
    return after


@click.command()
@click.argument("output", type=click.Path(exists=True, file_okay=False))
def report(output):
    """Write OUTPUT/report.html again for a run's output folder (`run --output`, or a demo's
    OUTPUT/run)."""
    from pipeline import local_runner, run_report

    try:
        click.echo(f"wrote {run_report.write_report(os.path.abspath(output))}")
    except (local_runner.ArtifactUnreadable, RuntimeError) as err:
        raise click.ClickException(str(err))
