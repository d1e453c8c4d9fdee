"""The gallery index in lockstep with the pushed model: ``build`` (the incremental build and
the pushed layout, plain Python + TensorFlow) and ``component`` (the TFX component
GalleryIndexer, imported only by the pipeline so the CLI does not pay TFX's import)."""
