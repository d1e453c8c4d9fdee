"""AnomalyGate: stops the run when ExampleValidator found anomalies, saying what to fix.

ExampleValidator only records anomalies; without a gate, Transform and the Trainer would go on
with data that broke the curated schema. This component reads the anomalies of every split and
raises with one readable line per problem.

It fails closed: every split the artifact names must have a readable anomalies file. A file
that is missing or unreadable is an error naming the split and the path, never "no anomalies".
All reads go through TFX's filesystem layer (``fileio`` -> ``tf.io.gfile``), so the gate sees
the artifacts on gs:// or any other filesystem TensorFlow can open, where ``os.path`` sees
nothing.
"""
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

ANOMALIES_FILE = "SchemaDiff.pb"  # what ExampleValidator writes under Split-<name>/


class AnomaliesUnreadable(RuntimeError):
    """A split's anomalies could not be read: the data was not checked, so the run stops."""


def anomalies_path(anomalies_artifact, split: str) -> str:
    # The artifact URI may be any filesystem's: join with "/", as fileio and URIs expect.
    return f"{anomalies_artifact.uri.rstrip('/')}/Split-{split}/{ANOMALIES_FILE}"


def read_split_anomalies(anomalies_artifact, split: str):
    """The split's Anomalies proto.

    Raises:
      AnomaliesUnreadable: the file is missing, unreadable or not an Anomalies proto.
    """
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    from tfx.dsl.io import fileio

    path = anomalies_path(anomalies_artifact, split)
    try:
        if not fileio.exists(path):
            raise AnomaliesUnreadable(f"split {split}: no anomalies file at {path}; ExampleValidator's "
                                      "output is incomplete, so the data was not checked")
        with fileio.open(path, "rb") as f:
            data = f.read()
        if not data:  # ExampleValidator always records the schema it checked against
            raise AnomaliesUnreadable(f"split {split}: the anomalies file {path} is empty (a partial write?)")
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(data)
    except AnomaliesUnreadable:
        raise
    except (DecodeError, OSError, tf.errors.OpError, fileio.NotFoundError) as err:
        raise AnomaliesUnreadable(f"split {split}: cannot read the anomalies file {path} "
                                  f"({type(err).__name__}: {getattr(err, 'message', err)})") from err
    return anomalies


def describe_anomalies(anomalies_artifact) -> list:
    """One line per anomalous feature per split: 'split eval: feature "format": <what>'.

    Raises:
      AnomaliesUnreadable: a split's anomalies file is missing or unreadable.
    """
    splits = artifact_utils.decode_split_names(anomalies_artifact.split_names)
    if not splits:
        raise AnomaliesUnreadable(f"the anomalies artifact at {anomalies_artifact.uri} names no split; "
                                  "nothing was checked")
    lines = []
    for split in splits:
        anomalies = read_split_anomalies(anomalies_artifact, split)
        for feature, info in sorted(anomalies.anomaly_info.items()):
            what = "; ".join(r.description or r.short_description for r in info.reason) or info.description
            lines.append(f'split {split}: feature "{feature}": {what}')
        if anomalies.HasField("dataset_anomaly_info"):
            what = "; ".join(r.description for r in anomalies.dataset_anomaly_info.reason)
            lines.append(f"split {split}: dataset: {what}")
    return lines


def raise_on_anomalies(anomalies_artifact) -> None:
    """Raises RuntimeError listing every anomaly, with what to do about them (and
    AnomaliesUnreadable, a RuntimeError too, when a split's anomalies cannot be read)."""
    lines = describe_anomalies(anomalies_artifact)
    if lines:
        raise RuntimeError(
            "The data does not match the curated schema (schemas/schema.pbtxt):\n  - "
            + "\n  - ".join(lines)
            + "\nFix or remove the offending files (the ingestion report lists every file), or, if the "
              "new values are legitimate, update schemas/schema.pbtxt and run again.")


@component
def AnomalyGate(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]):
    """Stops the run if the examples broke the schema."""
    raise_on_anomalies(anomalies)
