"""Prints every op of the running TensorFlow with its attribute names, one op per line:
``NAME attr1,attr2,...`` (sorted). Run with the TensorFlow that TF Serving's image embeds
(the header of the generated tf_<version>_ops.txt has the exact command); imports nothing of
this project.

Why the attributes: a graph node whose op gained an attribute in a newer TensorFlow fails to
load in an older one ("NodeDef mentions attr ... not in Op"), even when the op name exists.
"""
import sys

import tensorflow as tf
from tensorflow.python.framework import op_def_registry


COMMAND = """\
# Generated on a Debian 12 host (Python 3.11), outside the project's environment, by:
#   python3 -m venv /tmp/tf-{v}-venv
#   /tmp/tf-{v}-venv/bin/pip install tensorflow-cpu=={v}
#   /tmp/tf-{v}-venv/bin/python tests/kubeflow/testdata/list_tf_ops.py > tests/kubeflow/testdata/tf_{v}_ops.txt
# tensorflow/serving:{v} is built on TensorFlow {v}. One op a line: NAME attr,attr,..."""


def main():
    names = sorted(n for n in dir(tf.raw_ops) if not n.startswith("_"))
    print(COMMAND.format(v=tf.__version__))
    print(f"# tensorflow {tf.__version__}: {len(names)} names in tf.raw_ops")
    # A GraphDef whose versions.min_consumer is above this is refused by this TensorFlow.
    print(f"# graph_def_version {tf.version.GRAPH_DEF_VERSION}")
    for name in names:
        op_def = op_def_registry.get(name)
        if op_def is None:  # a raw_ops wrapper without a registered kernel op: not loadable
            print(f"# skipped {name}: not in the op registry", file=sys.stderr)
            continue
        print(f"{name} {','.join(sorted(a.name for a in op_def.attr))}".rstrip())


if __name__ == "__main__":
    main()
