"""Multi-worker training on one 2-core machine: steps/s of two local CPU workers
(MultiWorkerMirroredStrategy over gRPC on 127.0.0.1) against one process, same global batch.

Both run the pipeline's run_fn through TFX's Trainer executor (tests/fixtures/multi_worker.py)
on a real Transform output of the tiny preset. Two workers on two cores share the same CPU the
one process has, so this measures what the collective costs (gradient all-reduce every step,
two input pipelines), not a speed-up: a ratio near 1.0 means the collective is cheap.
Steps/s is read from Keras' per-epoch ms/step after the first epoch (which traces the step).

    tools/devenv.sh run python -m benchmarks.multi_worker [--full] [--json OUT]
"""
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
_MS_PER_STEP = re.compile(r"^\d+/\d+ - .* - (\d+)ms/step", re.M)


def _launch(inputs, out, config_json, steps, log, tf_config=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(ENV)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    return subprocess.Popen([sys.executable, FIXTURE, "train", inputs, out, config_json, str(steps)],
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _steps_per_s(log):
    ms = [int(m) for m in _MS_PER_STEP.findall(open(log, errors="replace").read())][1:]
    if not ms:
        raise RuntimeError(f"no epoch timings after the first in {log}")
    return 1000.0 / (sum(ms) / len(ms))


def run(steps, per_epoch):
    from pipeline.config import load_config

    work = os.path.join(common.SCRATCH, "multi_worker")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    subprocess.run([sys.executable, FIXTURE, "prepare", work], check=True, env=dict(os.environ, **ENV),
                   stdout=open(os.path.join(work, "prepare.log"), "wb"), stderr=subprocess.STDOUT)
    inputs = os.path.join(work, "inputs.json")
    config = load_config("tiny").replace(train_steps=steps, steps_per_epoch=per_epoch, augment=False)
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
    return rows


def main():
    parser = common.parser(__doc__)
    args = parser.parse_args()
    steps, per_epoch = (60, 10) if args.full else (24, 6)
    rows = run(steps, per_epoch)
    ratio = rows[1]["steps_per_s"] / rows[0]["steps_per_s"]
    table = common.md_table(
        ["run", "replicas x batch", "steps/s", "wall s (incl. start-up, export)"],
        [[r["run"], f"{r['replicas']} x {r['per_replica']}", f"{r['steps_per_s']:.2f}", f"{r['wall_s']:.0f}"]
         for r in rows])
    note = (f"\n\nTiny preset (MobileNetV3-Small, 64 px), global batch {rows[0]['per_replica']}, "
            f"{steps} steps; steps/s after the first epoch. Two workers / one process: {ratio:.2f}x. "
            "On 2 shared cores the two workers split the CPU the one process has: the ratio "
            "shows the collective's overhead (all-reduce over gRPC, a second input pipeline), "
            "not the speed-up separate machines would give.")
    common.finish(args, "Multi-worker training: two local CPU workers vs one process", table + note, [], rows)


if __name__ == "__main__":
    main()
