"""ImageExampleGen's component spec, its parameter keys and the report artifact type.

Kept apart from ``component.py`` so the executor can import the keys without importing the
component (which imports the executor).
"""
from tfx import types
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.images.rules import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS  # noqa: F401  (the one home of the caps)

# Output keys.
EXAMPLES_KEY = "examples"
REPORT_KEY = "report"
# Execution parameter keys.
INPUT_BASE_KEY = "input_base"
IMAGES_SUBDIR_KEY = "images_subdir"
EVAL_FRACTION_KEY = "eval_fraction"
MAX_BYTES_KEY = "max_bytes"
MAX_PIXELS_KEY = "max_pixels"
DECODE_SIZE_KEY = "decode_size"
SPLIT_SALT_KEY = "split_salt"
INPUT_FINGERPRINT_KEY = "input_fingerprint"

# Defaults, shared by the component's constructor and the executor (which must also cope
# with exec properties that omit the optional ones, e.g. when Do() is called directly).
DEFAULT_EVAL_FRACTION = 0.2
DEFAULT_SPLIT_SALT = "dolg-tfx"

REJECTED_FILE = "rejected.jsonl"
SUMMARY_FILE = "summary.json"


class IngestionReport(types.Artifact):
    """What an ingestion refused and why: ``rejected.jsonl`` and ``summary.json`` in its uri.

    A type of its own (rather than ExternalArtifact or ExampleAnomalies) so that lineage
    queries can ask MLMD for "the ingestion reports of this pipeline" by type, and so no
    downstream TFX component mistakes it for one of its inputs. The name has the
    ``<namespace>.<Title>`` form that KubeflowV2DagRunner requires of custom artifact types
    (it becomes the KFP schema title). Summary counts are mirrored as custom properties.
    """
    TYPE_NAME = "dolg_tfx.IngestionReport"


class ImageExampleGenSpec(types.ComponentSpec):
    """ImageExampleGen: image files or a GLDv2 CSV in, label-disjoint train/eval Examples out."""

    PARAMETERS = {
        INPUT_BASE_KEY: ExecutionParameter(type=str),
        IMAGES_SUBDIR_KEY: ExecutionParameter(type=str, optional=True),
        EVAL_FRACTION_KEY: ExecutionParameter(type=float, optional=True),
        MAX_BYTES_KEY: ExecutionParameter(type=int, optional=True),
        MAX_PIXELS_KEY: ExecutionParameter(type=int, optional=True),
        DECODE_SIZE_KEY: ExecutionParameter(type=int, optional=True),
        SPLIT_SALT_KEY: ExecutionParameter(type=str, optional=True),
        # Not read by the executor: a digest of the input files, so that TFX's cache (keyed on
        # exec properties) reruns ingestion when images are added, removed or changed.
        INPUT_FINGERPRINT_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {}
    OUTPUTS = {
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        REPORT_KEY: ChannelParameter(type=IngestionReport),
    }
