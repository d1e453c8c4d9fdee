"""`dolg-tfx index build` and `dolg-tfx search`: a searchable gallery from a pushed model.

``index build`` enumerates the gallery with ImageExampleGen's ``scan_inputs`` (a folder tree
``root/<label>/<image>``, a flat folder of images, or a CSV ``id[,landmark_id][,path]``;
labels are used when present, an unlabelled gallery has none), embeds it with a
Beam pipeline (DirectRunner; the model is loaded once per worker) and saves a
``components.retrieval.index.GalleryIndex``. ``search`` embeds one query image, prints the
top k gallery images with their scores and can draw them as a PNG grid.
"""
from __future__ import annotations

import os
import tempfile

import click

from components.images.rules import DEFAULT_MAX_BYTES


@click.group("index")
def index_group():
    """Build gallery indexes for `dolg-tfx search`."""


@index_group.command("build")
@click.option("--model", "model_dir", required=True,
              help="The pushed SavedModel (a version folder, or the base with version folders); "
                   "a local path or any URI TensorFlow opens (gs://...).")
@click.option("--images", required=True,
              help="Gallery: a folder of images (flat, or root/<label>/<image>) or a CSV "
                   "id[,landmark_id][,path]; labels are optional. A local path or gs://.")
@click.option("--images-subdir", default=None,
              help="CSV only: the image root relative to the CSV (default: the CSV's stem).")
@click.option("-o", "--output", required=True,
              help="Index directory to write: a local path or gs:// (written locally, then copied up, "
                   "meta.json last).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "exact", "hnsw", "ivfpq"]),
              help="auto: exact below 20,000 images (or without faiss), faiss HNSW above, IVF-PQ "
                   "when the vectors exceed --memory-budget.")
@click.option("--memory-budget", default=16.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="GiB of float32 vectors an in-memory index (exact, HNSW) may hold; auto only.")
@click.option("--max-bytes", default=DEFAULT_MAX_BYTES, show_default=True,
              type=click.IntRange(min=1), help="Skip image files larger than this.")
@click.option("--dba", "dba", default=0, show_default=True, type=click.IntRange(min=0), metavar="K",
              help="Database-side augmentation: each gallery vector becomes the normalised sum of itself "
                   "and its top K gallery neighbours weighted by similarity^--dba-alpha (0: off). "
                   "`search` then expands its queries the same way.")
@click.option("--dba-alpha", default=3.0, show_default=True, type=click.FloatRange(min=0), metavar="A",
              help="The weight exponent of --dba.")
@click.option("--beam-arg", "beam_args", multiple=True, metavar="ARG",
              help="A Beam pipeline argument for the embedding, repeatable, as for the pipeline "
                   "(e.g. --beam-arg=--runner=DataflowRunner; then give --work-dir on gs://).")
@click.option("--work-dir", default=None,
              help="Where Beam writes the embedding shards (default: a local temporary folder).")
@click.option("-v", "--verbose", is_flag=True,
              help="Show every log line (TensorFlow, Beam) on the console too; the full log is always "
                   "kept in OUTPUT/logs/.")
def build(model_dir, images, images_subdir, output, batch_size, backend, memory_budget, max_bytes, dba, dba_alpha,
          beam_args, work_dir, verbose):
    """Embed a gallery with a Beam pipeline and write a searchable index."""
    from components.retrieval import index_files
    from pipeline.console import Console, log_path

    # The log is a local file: beside a local index, in the temporary folder for a gs:// one.
    log = log_path(os.path.join(tempfile.gettempdir(), "dolg-tfx") if index_files.is_remote(output) else output,
                   "index-build")
    # The console shows the steps and a bar over the images; TensorFlow's and Beam's notices go
    # to the log. What the user must read (skipped files, the result) is printed after it.
    with Console(log, verbose) as console, console.showing_progress():
        console.say(f"Building a gallery index from {_shown(images)}; full log: {log}")
        built, n_candidates = _build_index(
            console, model_dir, images, images_subdir, output, batch_size, backend, memory_budget, max_bytes,
            beam_args, work_dir, dba, dba_alpha)
    for f in built.failures:
        click.echo(f"skipped {f.path}: {f.reason}", err=True)
    click.echo(f"indexed {built.count} of {n_candidates} images ({len(built.failures)} skipped), "
               f"dim {built.dim}, backend {built.backend}{_dba_note(built)} -> {output}")
    click.echo(f"Full log: {log}")


def _shown(path: str) -> str:
    """A location as the user should read it: URIs as given, local paths absolute."""
    from components.retrieval import index_files

    return path if index_files.is_remote(path) else os.path.abspath(index_files.local_path(path))


def _dba_note(index) -> str:
    return f", DBA top {index.dba['k']} alpha {index.dba['alpha']:g}" if index.dba else ""


def _build_index(console, model_dir, images, images_subdir, output, batch_size, backend, memory_budget, max_bytes,
                 beam_args, work_dir, dba=0, dba_alpha=3.0):
    """The steps of `index build`; returns (what was written, images found)."""
    from components.gallery_index.build import NothingToIndex, index_from_parts
    from components.retrieval.gallery_embedding import embed_gallery
    from components.retrieval.serving_contract import resolve_model_dir

    console.say(f"  embedding the gallery with {model_dir}: the workers list, embed and write parts ...")
    # Beam's files and the parts are scratch: they live beside nothing the user owns and go when done.
    with tempfile.TemporaryDirectory(prefix="dolg-tfx-index-") as scratch:
        work = (work_dir or scratch).rstrip("/")
        try:
            model_dir = resolve_model_dir(model_dir)
            units = embed_gallery(images, model_dir, f"{work}/parts", f"{work}/beam", images_subdir=images_subdir,
                                  batch_size=batch_size, max_bytes=max_bytes, pipeline_args=beam_args)
        except (OSError, ValueError) as err:
            raise click.ClickException(str(err))
        try:
            built = index_from_parts(f"{work}/parts", [u["part"] for u in units], output, model_dir,
                                     backend=backend, memory_budget=int(memory_budget * 2**30), dba=dba,
                                     dba_alpha=dba_alpha, say=console.say)
        except NothingToIndex as err:
            raise click.ClickException(f"{images}: {err}")
        except (ImportError, ValueError) as err:
            raise click.ClickException(str(err))
    console.say(f"  embedded {built.count}, skipped {len(built.failures)}")
    return built, built.count + len(built.failures)


@click.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--index", "index_dir", required=True,
              help="An index written by `dolg-tfx index build`, or one the pipeline pushed "
                   "(gallery_index/<version>, searched only with that model version; "
                   "gallery_index itself means its newest version). A local path or gs://.")
@click.option("--model", "model_dir", default=None,
              help="The SavedModel to embed the query with (default: the index's model); a local "
                   "path or any URI TensorFlow opens.")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--grid", type=click.Path(dir_okay=False), help="Write a PNG of query + top k.")
@click.option("--label", default=None,
              help="The query's label (default: inferred from the gallery or its folder).")
@click.option("--box", nargs=4, type=float, default=None, metavar="X1 Y1 X2 Y2",
              help="Crop the query to this box (pixels) before embedding.")
@click.option("--exact", is_flag=True, help="Search exactly even if the index has a faiss (HNSW or IVF-PQ) index.")
@click.option("--qe", "qe", default=None, type=click.IntRange(min=0), metavar="K",
              help="Alpha query expansion: search again with the normalised sum of the query and its top K "
                   "results, weighted by similarity^--qe-alpha; 0: off. Default: 0, or the index's DBA "
                   "settings when it was built with --dba (queries are then augmented like the gallery).")
@click.option("--qe-alpha", default=None, type=click.FloatRange(min=0), metavar="A",
              help="The weight exponent of --qe (default: the index's DBA alpha, else 3).")
def search(image, index_dir, model_dir, k, grid, label, box, exact, qe, qe_alpha):
    """Print the gallery images nearest to IMAGE: rank, score, id, label (tab-separated)."""
    import tensorflow as tf

    from components.gallery_index.pairs import resolve_pair
    from components.retrieval.embedder import Embedder, crop_to_png, error_reason, read_file
    from components.retrieval.expansion import expanded_search
    from components.retrieval.index import GalleryIndex
    from components.retrieval.model_versions import VersionMismatch, check_index_matches_model
    from components.retrieval.search_grid import gallery_row, infer_query_label, render_grid
    from components.retrieval.serving_contract import resolve_model_dir

    try:  # a pushed base: the newest version with both halves of the pair
        pair = resolve_pair(index_dir, model_dir)
    except (FileNotFoundError, VersionMismatch) as err:
        raise click.ClickException(str(err))
    if pair.note:
        click.echo(f"note: {pair.note}", err=True)
    index_dir = pair.index_dir
    try:
        index = GalleryIndex.load(index_dir)
    except (OSError, ValueError) as err:
        raise click.ClickException(f"cannot load the index: {err}")
    if index.local_copy:
        click.echo(f"read {index_dir} through a local copy in {index.local_copy} (faiss and memory-mapping "
                   "need local files)", err=True)
    model_dir = pair.model_dir or index.model
    if not model_dir:
        raise click.ClickException("the index records no model; pass --model")
    try:
        # The pair first, before seconds of model loading: an index is searched only with the
        # model version that embedded it (the pipeline pushes both under one version).
        check_index_matches_model(index.model_version, index_dir, resolve_model_dir(model_dir))
        embedder = Embedder(model_dir)
    except (FileNotFoundError, VersionMismatch) as err:
        raise click.ClickException(str(err))
    if index.model and os.path.realpath(embedder.model_dir) != os.path.realpath(index.model):
        click.echo(f"warning: the index was built with {index.model}; embeddings of another "
                   "model are not comparable", err=True)
    try:
        data = read_file(image)
        if box:
            data = crop_to_png(data, box)
        emb = embedder.embed_bytes([data])
    except (OSError, ValueError, tf.errors.OpError) as err:
        # The reason alone (the same line index build reports), not TensorFlow's node dump.
        raise click.ClickException(f"{image}: cannot embed the query ({error_reason(err)})")
    if emb.shape[1] != index.dim:
        raise click.ClickException(f"the model gives dim {emb.shape[1]}, the index has {index.dim}")
    dba = index.dba or {"k": 0, "alpha": 3.0}
    qe = dba["k"] if qe is None else qe
    qe_alpha = dba["alpha"] if qe_alpha is None else qe_alpha
    # The query's own gallery entry (same file) is no neighbour of its expansion: it is the query.
    own = gallery_row(image, index) if qe else None
    scores, rows = expanded_search(emb, lambda q, n: index.search(q, n, exact=exact), index.vectors, k, qe, qe_alpha,
                                   exclude=None if own is None else [own])
    click.echo(f"answered by {index.answered_by(exact)}", err=True)
    if index.dba or qe:
        click.echo(("gallery: DBA, top {k} neighbours, alpha {alpha:g}; ".format(**index.dba) if index.dba
                    else "gallery: not augmented; ")
                   + (f"query: alpha QE, top {qe}, alpha {qe_alpha:g}" if qe else "query: not expanded (--qe 0)"),
                   err=True)
    query_label = label if label is not None else infer_query_label(image, index)
    results = []
    for rank, (score, row) in enumerate(zip(scores[0], rows[0]), start=1):
        lab = index.labels[row] if index.labels else None
        path = index.paths[row] if index.paths else None
        results.append((rank, float(score), index.ids[row], lab, path))
        click.echo(f"{rank}\t{score:.4f}\t{index.ids[row]}\t{'' if lab is None else lab}")
    if grid:
        render_grid(image, query_label, results, grid)
        click.echo(f"wrote {grid} (query label: {query_label if query_label is not None else 'unknown'})",
                   err=True)
