"""`dolg-tfx explain`: the model-side commands of the CLI."""
import click

from dolg_tfx.cli import main


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True),
              help="A pushed/exported model (its version folder or the base folder holding versions), "
                   "or a Keras save of the descriptor (.keras, .h5, SavedModel).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the PNG with the attention heatmap overlaid.")
@click.option("--alpha", default=0.5, show_default=True, help="Opacity of the heatmap.")
def explain(image, model_dir, output, alpha):
    """Overlay DOLG's local attention map on IMAGE."""
    import numpy as np
    from PIL import Image, ImageOps

    from dolg_model import explain as explain_lib

    try:
        with Image.open(image) as im:
            rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except Exception as err:  # Pillow raises many types for bad files
        raise click.ClickException(f"{image}: cannot read the image ({err})")
    exported = _latest_version(model_dir)
    if explain_lib.has_attention_signature(exported):
        # The exported model decodes the bytes itself, exactly as it does when serving.
        with open(image, "rb") as f:
            data = f.read()
        rgb = np.asarray(Image.open(image).convert("RGB"))  # stored orientation, as served
        heat = explain_lib.serving_attention_map(exported, data)
    else:
        heat = explain_lib.attention_map(explain_lib.load_descriptor_model(model_dir), rgb)
    explain_lib.overlay(rgb, heat, alpha).save(output, format="PNG")
    click.echo(f"wrote {output} (attention range mapped to [0, 1] over {heat.shape[1]}x{heat.shape[0]} px)")


def _latest_version(model_dir):
    """A TF Serving base folder -> its highest numbered version; anything else unchanged."""
    import os

    versions = [d for d in os.listdir(model_dir) if d.isdigit()] if os.path.isdir(model_dir) else []
    return os.path.join(model_dir, max(versions, key=int)) if versions else model_dir
