"""Multi-worker training on one 2-core machine: steps/s of two local CPU workers
(MultiWorkerMirroredStrategy over gRPC on 127.0.0.1) against one process, same global batch.

Both run the pipeline's run_fn through TFX's Trainer executor (tests/fixtures/multi_worker.py)
on the Examples, Transform graph and schema of a real pipeline run: the tiny preset's cached run
in scratch/bench/ (the one pipeline_wall makes and input_pipeline and serving read; made here
when absent), or --run DIR's. Two workers on two cores share the same CPU the one process has,
so this measures what the collective costs (gradient all-reduce every step, two input
pipelines), not a speed-up: a ratio near 1.0 means the collective is cheap.
Steps/s is read from Keras' per-epoch ms/step after the first epoch (which traces the step).

Steps (steps per epoch): quick 24 (6), full 60 (10), smoke 2 (1: one epoch timed). Until
2026-12-02 each run first made its own inputs (the fixture's ``prepare``: a 17 s pipeline).

    tools/devenv.sh run python -m benchmarks.multi_worker [--quick|--full|--smoke] [--run DIR] [--json OUT]
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

from benchmarks import common

FIXTURE = os.path.join(common.REPO, "tests", "fixtures", "multi_worker.py")
local_cluster = common.load_module(os.path.join(common.REPO, "tests", "fixtures", "local_cluster.py"))
ENV = {"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "1"}
# Keras' epoch line ends "- 198ms/step", or "- 5s/step" when a step takes a second or more (the
# first epoch's, which traces): both must match, or dropping the first match drops a later epoch.
_PER_STEP = re.compile(r"^\d+/\d+ - .* - (\d+)(us|ms|s)/step", re.M)
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _launch(inputs, out, config_json, steps, log, tf_config=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(ENV)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    return subprocess.Popen([sys.executable, FIXTURE, "train", inputs, out, config_json, str(steps)],
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _steps_per_s(log):
    ms = [int(v) * _UNIT_MS[unit] for v, unit in _PER_STEP.findall(open(log, errors="replace").read())][1:]
    if not ms:
        raise RuntimeError(f"no epoch timings after the first in {log}")
    return 1000.0 / (sum(ms) / len(ms))


def write_inputs(run_output, path):
    """The fixture's inputs.json (what ``train`` reads) for the artifacts of the run in `run_output`."""
    from tfx.types import artifact_utils

    from pipeline import local_runner

    examples, graph_uri, _ = common.run_artifacts(run_output)
    store, _, executions = local_runner.latest_run_executions(local_runner.Layout(run_output))
    [schema] = local_runner._outputs(store, executions["ImportSchemaGen"], "Schema")
    with open(path, "w") as f:
        json.dump({"examples": examples.uri, "splits": artifact_utils.decode_split_names(examples.split_names),
                   "transform_graph": graph_uri, "schema": schema.uri}, f)


def run(steps, per_epoch, given=None):
    """Rows of the one process and the two workers; `given`: a --run DIR to read."""
    from pipeline.config import load_config

    if given:
        _, config, _, run_info = common.given_run(given)
    else:  # the tiny run whatever the mode: only the number of steps changes
        config = load_config(common.QUICK_PRESET)
        run_info = common.pipeline_run(common.QUICK_PRESET, common.QUICK_DATA)
    work = os.path.join(common.SCRATCH, "multi_worker")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    inputs = os.path.join(work, "inputs.json")
    write_inputs(run_info["output"], inputs)
    config = config.replace(train_steps=steps, steps_per_epoch=per_epoch, augment=False)
    rows = []
    one_log = os.path.join(work, "one.log")
    start = time.perf_counter()
    one = _launch(inputs, os.path.join(work, "one"), config.trainer_json(), steps, one_log)
    if one.wait() != 0:
        raise RuntimeError(f"the single process failed: see {one_log}")
    rows.append({"run": "one process, default strategy", "replicas": 1, "per_replica": config.batch_size,
                 "steps_per_s": _steps_per_s(one_log), "wall_s": time.perf_counter() - start})
    ports = local_cluster.free_ports(2)
    logs = [os.path.join(work, f"worker{i}.log") for i in range(2)]
    start = time.perf_counter()
    procs = [_launch(inputs, os.path.join(work, "cluster"), config.trainer_json(), steps, logs[i],
                     local_cluster.tf_config(ports, i)) for i in range(2)]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError(f"a worker failed: see {logs}")
    rows.append({"run": "two workers on 127.0.0.1 (MultiWorkerMirroredStrategy)", "replicas": 2,
                 "per_replica": config.batch_size // 2, "steps_per_s": _steps_per_s(logs[0]),
                 "wall_s": time.perf_counter() - start})
    return rows, (f"{config.model.backbone} at {config.model.image_size} px, the Examples of "
                  f"`{common.shown_path(run_info['output'])}`")


def main():
    parser = common.parser(__doc__, reads_run=True)
    args = parser.parse_args()
    steps, per_epoch = {"quick": (24, 6), "full": (60, 10), "smoke": (2, 1)}[args.mode]
    rows, config_text = run(steps, per_epoch, args.run)
    ratio = rows[1]["steps_per_s"] / rows[0]["steps_per_s"]
    table = common.md_table(
        ["run", "replicas x batch", "steps/s", "wall s (incl. start-up, export)"],
        [[r["run"], f"{r['replicas']} x {r['per_replica']}", f"{r['steps_per_s']:.2f}", f"{r['wall_s']:.0f}"]
         for r in rows])
    note = (f"\n\n{config_text}, global batch {rows[0]['per_replica']}, "
            f"{steps} steps; steps/s after the first epoch. Two workers / one process: {ratio:.2f}x. "
            "On 2 shared cores the two workers split the CPU the one process has: the ratio "
            "shows the collective's overhead (all-reduce over gRPC, a second input pipeline), "
            "not the speed-up separate machines would give.")
    common.finish(args, "Multi-worker training: two local CPU workers vs one process", table + note, [], rows)


if __name__ == "__main__":
    main()
