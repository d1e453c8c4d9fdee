"""`dolg-tfx explain`: the model-side commands of the CLI."""
import click

from dolg_tfx.cli import main


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True),
              help="A saved DOLG model (SavedModel directory, .keras or .h5).")
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
    model = explain_lib.load_descriptor_model(model_dir)
    heat = explain_lib.attention_map(model, rgb)
    explain_lib.overlay(rgb, heat, alpha).save(output, format="PNG")
    click.echo(f"wrote {output} (attention range mapped to [0, 1] over {heat.shape[1]}x{heat.shape[0]} px)")
