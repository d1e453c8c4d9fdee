"""The features ImageExampleGen writes into every tf.Example; the pipeline reads them by these
names (pipeline/features.py takes them from here), and the schema (schemas/schema.pbtxt) lists them."""
IMAGE = "image"          # the file's original bytes, never pixels
IMAGE_ID = "image_id"    # the path under the root (folders) or the manifest's id
LABEL = "label"          # the label folder's name or the manifest's landmark_id
FORMAT = "format"        # what the header check recognised (JPEG, PNG, ...)
WIDTH = "width"          # stored dimensions, before any EXIF orientation
HEIGHT = "height"
