"""The ``dolg-tfx`` command line. Subcommands register themselves from their own modules."""
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


# Subcommands live beside the code they drive; importing registers them on `main`.
from dolg_tfx import cli_model  # noqa: E402,F401
from dolg_tfx import cli_evaluate  # noqa: E402,F401
from dolg_tfx import cli_index  # noqa: E402,F401
from dolg_tfx import cli_serving  # noqa: E402,F401
from dolg_tfx import cli_pipeline  # noqa: E402,F401
from dolg_tfx import cli_kubeflow  # noqa: E402,F401


if __name__ == "__main__":
    main()
