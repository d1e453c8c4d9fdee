"""AnomalyGate: stops the run when ExampleValidator found anomalies, saying what to fix.

ExampleValidator only records anomalies; without a gate, Transform and the Trainer would go on
with data that broke the curated schema. This component reads the anomalies of every split and
raises with one readable line per problem.
"""
import os

from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx.utils import io_utils


def describe_anomalies(anomalies_artifact) -> list:
    """One line per anomalous feature per split: 'split eval: feature "format": <what>'."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    lines = []
    for split in artifact_utils.decode_split_names(anomalies_artifact.split_names):
        path = os.path.join(anomalies_artifact.uri, f"Split-{split}", "SchemaDiff.pb")
        if not os.path.exists(path):
            continue
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(io_utils.read_bytes_file(path))
        for feature, info in sorted(anomalies.anomaly_info.items()):
            what = "; ".join(r.description or r.short_description for r in info.reason) or info.description
            lines.append(f'split {split}: feature "{feature}": {what}')
        if anomalies.HasField("dataset_anomaly_info"):
            what = "; ".join(r.description for r in anomalies.dataset_anomaly_info.reason)
            lines.append(f"split {split}: dataset: {what}")
    return lines


def raise_on_anomalies(anomalies_artifact) -> None:
    """Raises RuntimeError listing every anomaly, with what to do about them."""
    lines = describe_anomalies(anomalies_artifact)
    if lines:
        raise RuntimeError(
            "The data does not match the curated schema (schemas/schema.pbtxt):\n  - "
            + "\n  - ".join(lines)
            + "\nFix or remove the offending files (the ingestion report lists every file), or, if the "
              "new values are legitimate, update schemas/schema.pbtxt and run again.")


@tfx.dsl.components.component
def AnomalyGate(anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies]):
    """Stops the run if the examples broke the schema."""
    raise_on_anomalies(anomalies)
