"""What a freshly loaded model's first serving_default request costs, against a floor.

A server (or ``dolg-tfx search``) that loads the pushed SavedModel pays, on its first request,
for building and optimising the whole graph: the decoder and the network. The floor is the same
network (the Keras model reloaded from the same SavedModel) exported behind a plain
``tf.io.decode_jpeg`` + ``tf.image.resize``: what the first request would cost with the bare
decoder. Each is loaded and called in a fresh process (load, first call, second call), several
times alternating, and the medians are compared. Target (issue 23): first call <= 1.3x the
floor's. TF Serving users pay neither: every pushed model carries warmup requests
(``assets.extra/tf_serving_warmup_requests``) that the server replays at load.

What the first call pays for the graph's library is measured beside it (not in smoke mode):
the floor again with a never-taken branch holding DEAD_FUNCTIONS tiny functions (tf.conds), and
with one holding DEAD_NODES nodes; their extra first-call time over the floor's, divided out,
is the cost of a function and of a node, which the decoder's library size multiplies.

Alternating runs: 2 (quick), 5 (full), 1 (smoke). --run DIR reads that completed run's model.

    tools/devenv.sh run python -m benchmarks.first_request [--quick|--full|--smoke] [--run DIR] [--json OUT]
"""
import json
import os
import statistics
import subprocess
import sys

from benchmarks import common

TARGET = 1.3
DEAD_FUNCTIONS, DEAD_NODES = 100, 4000

_CHILD = r"""
import json, sys, time
import dolg_model
import tensorflow as tf
path, image = sys.argv[1], open(sys.argv[2], "rb").read()
t = time.perf_counter(); fn = tf.saved_model.load(path).signatures["serving_default"]; load = time.perf_counter() - t
x = tf.constant([image])
t = time.perf_counter(); [v.numpy() for v in fn(x).values()]; first = time.perf_counter() - t
t = time.perf_counter(); [v.numpy() for v in fn(x).values()]; second = time.perf_counter() - t
library = fn.graph.as_graph_def().library.function  # what the first call's graph optimisation walks
print(json.dumps({"load": load, "first": first, "second": second, "functions": len(library),
                  "nodes": sum(len(f.node_def) for f in library)}))
"""


def _dead_body(functions, nodes):
    """A branch body of ``functions`` tiny functions (two per tf.cond) or ``nodes`` nodes (a
    chain of adds of Python constants: a Const and an AddV2 each)."""
    import tensorflow as tf

    def body(x):
        for i in range(functions // 2):
            x = tf.cond(x > i, lambda: x + 1, lambda: x - 1)
        for i in range(nodes // 2):
            x = x + (i % 7 + 1)
        return x
    return body


def export_floor(model_dir, config, out, dead_functions=0, dead_nodes=0):
    """The Keras model of ``model_dir`` behind decode_jpeg + resize, as its own SavedModel; with
    ``dead_*``, each image goes through a branch whose other side (never taken: a string's
    length is never negative) holds that many functions or nodes."""
    import tensorflow as tf

    from components.images.image_header import lazy_case
    from components.retrieval import serving_contract as contract
    from dolg_model.model import multi_scale_embedding

    keras_model = tf.keras.models.load_model(model_dir, compile=False)
    size, scales = config.model.image_size, tf.constant(config.model.scales, tf.float32)

    def decode(b):
        pixels = lambda: tf.image.resize(tf.cast(tf.io.decode_jpeg(b, channels=3), tf.float32), [size, size])  # noqa: E731
        if not (dead_functions or dead_nodes):
            return pixels()
        length = tf.strings.length(b)
        def dead():
            with tf.control_dependencies([_dead_body(dead_functions, dead_nodes)(length)]):
                return tf.zeros([size, size, 3])
        return lazy_case(tf.cast(length >= 0, tf.int32), [dead, pixels], name="dead")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.IMAGES_INPUT)])
    def serve(images):
        pixels = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return {contract.EMBEDDING_OUTPUT: multi_scale_embedding(keras_model, pixels, scales)}

    tf.saved_model.save(keras_model, out, signatures={contract.IMAGES_SIGNATURE: serve.get_concrete_function()})


def fresh_call(path, image_file):
    out = subprocess.run([sys.executable, "-c", _CHILD, path, image_file], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args):
    common.quiet_tf()
    from benchmarks.serving import model_dir
    from pipeline.demo_report import read_split

    preset, config, _, run_info = common.bench_run(args)
    path = model_dir(run_info["summary"])
    _, images, _ = read_split(run_info["summary"]["examples"], "eval")
    scratch = os.path.join(run_info["scratch"], "first_request")
    os.makedirs(scratch, exist_ok=True)
    image_file = os.path.join(scratch, "query.jpg")
    with open(image_file, "wb") as f:
        f.write(images[0])
    models = {"project": path, "floor": os.path.join(scratch, "floor_model")}
    export_floor(path, config, models["floor"])
    if not args.smoke:
        for name, dead in ((f"floor + {DEAD_FUNCTIONS} functions", {"dead_functions": DEAD_FUNCTIONS}),
                           (f"floor + {DEAD_NODES} nodes", {"dead_nodes": DEAD_NODES})):
            models[name] = os.path.join(scratch, name.replace(" + ", "_plus_").replace(" ", "_"))
            export_floor(path, config, models[name], **dead)
    results = {name: [] for name in models}
    for _ in range(5 if args.full else 1 if args.smoke else 2):
        for name, where in models.items():
            results[name].append(fresh_call(where, image_file))
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("load", "first", "second", "functions", "nodes")}
           for name, rs in results.items()}
    ratio = med["project"]["first"] / med["floor"]["first"]
    table = common.md_table(["model", "load s", "first call s", "second call ms", "library functions", "library nodes"],
                            [[name, f"{m['load']:.2f}", f"{m['first']:.2f}", f"{m['second'] * 1e3:.1f}",
                              f"{m['functions']:.0f}", f"{m['nodes']:.0f}"] for name, m in med.items()])
    check = common.verdict("first serving_default call / floor's", ratio, TARGET, higher_is_better=False)
    costs = ""
    if not args.smoke:
        def per_item(name, key):  # the extra first call over the floor's, over the extra library
            return (med[name]["first"] - med["floor"]["first"]) / (med[name][key] - med["floor"][key])
        costs = (f"\n- a library function costs the first call "
                 f"{per_item(f'floor + {DEAD_FUNCTIONS} functions', 'functions') * 1e3:.1f} ms, a library node "
                 f"{per_item(f'floor + {DEAD_NODES} nodes', 'nodes') * 1e3:.3f} ms")
    markdown = (f"Preset `{preset}`, model `{common.shown_path(path)}`; each loaded in a fresh process, "
                f"medians of {len(results['project'])} alternating runs, one JPEG per call. The library is the "
                "signature graph's function library, which the first call's graph optimisation walks whole, "
                "taken branches or not; the floor + rows measure what a function and a node of it cost."
                f"\n\n{table}\n\n- {check}{costs}")
    return markdown, [check] if "MISSED" in check else [], med


def main():
    args = common.parser(__doc__, reads_run=True).parse_args()
    markdown, missed, rows = run(args)
    common.finish(args, "First request of a freshly loaded model vs the bare decoder's", markdown, missed, rows)


if __name__ == "__main__":
    main()
