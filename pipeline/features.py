"""Feature names shared by the ExampleGen output, the Transform module, the Trainer and the
signatures (one place, so a rename cannot leave one of them behind)."""
IMAGE = "image"          # raw: encoded bytes; transformed: (S, S, 3) float32 in [0, 255]
LABEL = "label"          # raw: label string; transformed: int64 vocabulary index
IMAGE_ID = "image_id"
LABEL_VOCAB = "label"            # tft vocabulary file: labels by descending frequency
LABEL_COUNTS = "label_counts"    # the same with counts ("count label" per line)
# The names of the exported signatures, inputs and outputs: components/retrieval/serving_contract.py
