"""Feature names shared by the ExampleGen output, the Transform module, the Trainer and the
signatures (one place, so a rename cannot leave one of them behind)."""
# Raw names as ImageExampleGen writes them. Transformed: IMAGE is (S, S, 3) float32 in
# [0, 255], LABEL an int64 vocabulary index.
from components.image_example_gen.features import IMAGE, IMAGE_ID, LABEL  # noqa: F401
LABEL_VOCAB = "label"            # tft vocabulary file: labels by descending frequency
LABEL_COUNTS = "label_counts"    # the same with counts ("count label" per line)
# The names of the exported signatures, inputs and outputs: components/retrieval/serving_contract.py
