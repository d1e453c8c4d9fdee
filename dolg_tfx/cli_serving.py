"""`dolg-tfx embed`: embeddings for image files from a model served by TensorFlow Serving."""
import click


@click.command()
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@click.option("--server", metavar="URL",
              help="TF Serving's REST address, e.g. http://localhost:8501.")
@click.option("--grpc", "grpc_target", metavar="HOST:PORT",
              help="Use TF Serving's gRPC API at HOST:PORT (e.g. localhost:8500) instead of REST.")
@click.option("--model-name", default="dolg", show_default=True,
              help="The model's name in TF Serving's model config.")
@click.option("--model-version", type=int, default=None,
              help="Pin a loaded version (default: the newest), e.g. the one a gallery "
                   "index was built with.")
@click.option("--signature", default="serving_default", show_default=True,
              help="Signature taking encoded image bytes as its single input 'images'.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Images per request.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds per request.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the embeddings to this .npy file (float32 [n, D], in argument order).")
@click.option("--show", default=4, show_default=True, type=click.IntRange(min=0),
              help="How many leading values to print per image.")
def embed(images, server, grpc_target, model_name, model_version, signature, batch_size, timeout, output,
          show):
    """Embed IMAGE files with the served DOLG model.

    The files' bytes are sent as they are (the model decodes them). Prints one line per
    image: its name, the embedding's L2 norm (1 for the pushed model) and its first values.
    """
    import numpy as np

    from dolg_tfx import serving_client as sc

    if not server and not grpc_target:
        raise click.UsageError("give --server URL (REST) or --grpc HOST:PORT")
    try:
        blobs = sc.read_images(images)
        if grpc_target:
            with sc.GrpcClient(grpc_target, model_name, signature, timeout,
                               version=model_version) as client:
                embeddings = client.embed(blobs, batch_size)
        else:
            client = sc.RestClient(server, model_name, signature, timeout,
                                   version=model_version)
            embeddings = client.embed(blobs, batch_size)
    except sc.ServingError as err:
        raise click.ClickException(str(err))

    if output:
        np.save(output, embeddings)
        click.echo(f"wrote {output} ({embeddings.shape[0]} x {embeddings.shape[1]} float32)")
        return
    norms = np.linalg.norm(embeddings, axis=1)
    for name, vector, norm in zip(images, embeddings, norms):
        values = [f"{v:+.4f}" for v in vector[:show]] + (["..."] if vector.shape[0] > show else [])
        click.echo(f"{name}\tdim={vector.shape[0]}\tnorm={norm:.4f}\t[{', '.join(values)}]")
