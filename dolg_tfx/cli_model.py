"""`dolg-tfx explain`: the model-side commands of the CLI."""
import click


@click.command()
@click.argument("image")
@click.option("--model", "model_dir", required=True,
              help="A pushed/exported model (its version folder or the base folder holding versions), "
                   "or a Keras save of the descriptor (.keras, .h5, SavedModel); a local path or any "
                   "URI TensorFlow opens (gs://...).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the PNG with the attention heatmap overlaid.")
@click.option("--alpha", default=0.5, show_default=True, help="Opacity of the heatmap.")
def explain(image, model_dir, output, alpha):
    """Overlay DOLG's local attention map on IMAGE."""
    import io

    import numpy as np
    import tensorflow as tf
    from PIL import Image, ImageOps

    from components.retrieval import serving_contract
    from components.retrieval.embedder import Embedder
    from dolg_model import explain as explain_lib

    # tf.io.gfile, not open/os.path: the image and the model may be URIs (gs://, ram://).
    try:
        with tf.io.gfile.GFile(image, "rb") as f:
            data = f.read()
    except tf.errors.OpError as err:
        raise click.ClickException(f"{image}: cannot read the file ({err.message})")
    if not tf.io.gfile.exists(model_dir):
        raise click.ClickException(f"{model_dir}: no such model")
    exported = model_dir
    if tf.io.gfile.isdir(model_dir):
        try:  # a TF Serving base folder -> its newest complete version
            exported = serving_contract.resolve_model_dir(model_dir)
        except FileNotFoundError:
            pass  # a folder that is not a SavedModel: load_descriptor_model says what is wrong
    try:
        with Image.open(io.BytesIO(data)) as im:
            # Upright, as the exported model's decoder sees it (EXIF orientation applied).
            rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except Exception as err:  # Pillow raises many types for bad files
        raise click.ClickException(f"{image}: cannot read the image ({err})")
    if serving_contract.has_signature(exported, serving_contract.ATTENTION_SIGNATURE):
        heat = explain_lib.unit_range(Embedder(exported).attention_map(data))
    else:  # a Keras save of the descriptor (.keras, .h5, or a version folder without signatures)
        heat = explain_lib.attention_map(explain_lib.load_descriptor_model(exported), rgb)
    explain_lib.with_colour_bar(explain_lib.overlay(rgb, heat, alpha)).save(output, format="PNG")
    click.echo(f"wrote {output} (attention range mapped to [0, 1] over {heat.shape[1]}x{heat.shape[0]} px)")
