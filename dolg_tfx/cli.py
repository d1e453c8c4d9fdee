"""The ``dolg-tfx`` command line: the group and its registrations. Command modules (``cli_*``)
parse arguments and print; the work is done by library modules, which raise ordinary exceptions."""
import click

import dolg_tfx


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(dolg_tfx.__version__, prog_name="dolg-tfx")
def main():
    """DOLG image retrieval as a TFX pipeline: train, evaluate, serve."""


@main.command("env")
def env_cmd():
    """Print the versions of the stack this environment resolved."""
    import importlib.metadata as md
    import tensorflow as tf

    for dist in ("tfx", "tensorflow", "tf-keras", "tensorflow-transform",
                 "tensorflow-model-analysis", "apache-beam", "ml-metadata"):
        click.echo(f"{dist:28s}{md.version(dist)}")
    click.echo(f"{'tf.keras':28s}{tf.keras.__name__}")


# Each command lives in its own module and knows nothing of `main`; registering them here
# keeps the imports one-way (cli -> cli_*), so no module depends on import order.
from dolg_tfx import (cli_evaluate, cli_index, cli_kubeflow, cli_model,  # noqa: E402
                      cli_pipeline, cli_serving)

for _command in (cli_pipeline.run, cli_pipeline.demo, cli_pipeline.report, cli_model.explain, cli_serving.embed,
                 cli_index.index_group, cli_index.search, cli_evaluate.evaluate, cli_kubeflow.kubeflow):
    main.add_command(_command)


if __name__ == "__main__":
    main()
