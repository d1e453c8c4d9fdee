"""Retrieval for DOLG-TFX: the evaluation protocols (``protocols``, pure numpy: one
implementation of each), the TFMA metric that wraps them (``tfma_metric``), benchmark test sets
(``datasets``) and their scoring (``evaluation``), the local embedder of a SavedModel
(``embedder``, TensorFlow), gallery indexes (``index``, numpy and faiss), pushed-model versions
(``model_versions``) and the search grid picture (``search_grid``, Pillow). Import the module
you need: the package itself imports nothing.
"""
