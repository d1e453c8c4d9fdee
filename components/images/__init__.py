"""Images as the project reads them: one home for the rules (``rules``), ingestion's per-file
verdict (``checks``, Pillow) and the graph decoder that the Transform, the Trainer and every
serving signature run (``image_header``: the probe and EXIF; ``image_ops``: the decode).

Ingestion (``components.image_example_gen``) and the Transform (``pipeline.preprocessing``)
both import from here; nothing here imports them back. Importing the package itself is free:
TensorFlow loads only with ``image_header`` / ``image_ops``.
"""
