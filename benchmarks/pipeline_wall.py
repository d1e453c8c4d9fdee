"""Wall time of each pipeline component, from ML Metadata, and each one's share of the run.

Runs the whole pipeline from scratch (TFX cache off, a new output folder) with LocalDagRunner:
full mode the demo (preset cpu-demo on generate_landmarks' default 40 landmarks x 10 views of
160 px), quick mode preset tiny on 10 x 6. Per component the wall time is
last_update_time_since_epoch - create_time_since_epoch of its execution in the latest
pipeline_run context (the orchestrator stamps both), named by the execution's "node" context
(pipeline.local_runner.latest_run_executions). Shares are of the components' span; the last
line compares that span with the wall time of local_runner.run around it, whose difference is
the runner's own start-up (pipeline compilation, MLMD connection, Beam set-up).

The run is left in scratch/bench/<preset-data>/ where the input pipeline and serving
benchmarks reuse it (run_all runs this one first).

--run DIR reads an existing completed run instead (the --output of ``dolg-tfx run``): its
components' times as ML Metadata recorded them (a rerun's cached components show as CACHED and
count as missed), without the runner's own wall time, which only a run made here measures.
--smoke makes no fresh run: it reads --run DIR, or reuses quick's run (made when absent).

    tools/devenv.sh run python -m benchmarks.pipeline_wall [--quick|--full|--smoke] [--run DIR] [--json OUT]
"""
import time

from benchmarks import common


def component_times(output):
    """[(component, state, start offset s, wall s)] of the latest run, in start order."""
    from pipeline import local_runner

    _, _, executions = local_runner.latest_run_executions(local_runner.Layout(output))
    if not executions:
        raise RuntimeError(f"no executions recorded in {output}")
    t0 = min(e.create_time_since_epoch for e in executions.values())
    rows = []
    for name, e in sorted(executions.items(), key=lambda kv: kv[1].create_time_since_epoch):
        rows.append({"component": name, "state": local_runner._state(e),
                     "start_s": (e.create_time_since_epoch - t0) / 1000.0,
                     "wall_s": (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000.0,
                     "end_ms": e.last_update_time_since_epoch})
    span = (max(r["end_ms"] for r in rows) - t0) / 1000.0
    return rows, span


def run(args):
    common.quiet_tf()
    if args.run or args.smoke:
        preset, _, data, run_info = common.bench_run(args)
        outer = None
    else:
        preset = common.FULL_PRESET if args.full else common.QUICK_PRESET
        data = common.DEMO_DATA if args.full else common.QUICK_DATA
        start = time.perf_counter()
        run_info = common.pipeline_run(preset, data, fresh=True)
        outer = time.perf_counter() - start  # includes generating the data
        data = common.describe_data(data)
    rows, span = component_times(run_info["output"])
    for r in rows:
        r["share"] = r["wall_s"] / span
    table = common.md_table(
        ["component", "state", "starts at s", "wall s", "share of run"],
        [[r["component"], r["state"], f"{r['start_s']:.1f}", f"{r['wall_s']:.2f}", f"{r['share'] * 100:.1f}%"]
         for r in rows] + [["**total** (first start to last end)", "", "0.0", f"**{span:.1f}**", "100%"]])
    runner = run_info["wall_s"]
    ing = run_info["summary"].get("ingestion", {})
    if outer is not None:
        made = (f"TFX cache off.\n\n{table}\n\nlocal_runner.run wall {runner:.1f} s: components' span / runner "
                f"wall = {span / runner:.2f} (the rest, {runner - span:.1f} s, is the runner's own start-up and "
                f"bookkeeping); data generation {outer - runner:.1f} s, not included.")
    else:  # read, not made here: the run's own runner wall is known only when reused from scratch/bench
        made = (f"an existing run read from `{common.shown_path(run_info['output'])}`.\n\n{table}\n\n"
                + (f"local_runner.run wall when it was made: {runner:.1f} s." if runner else
                   "The runner's own wall time is not known for a run read with --run."))
    markdown = (f"Preset `{preset}` on {data} ({ing.get('emitted_total', '?')} ingested), {made} Slowest "
                f"component: {max(rows, key=lambda r: r['wall_s'])['component']}.")
    missed = [f"component {r['component']} ended {r['state']}" for r in rows if r["state"] != "COMPLETE"]
    return markdown, missed, {"components": rows, "span_s": span, "runner_s": runner}


def main():
    args = common.parser(__doc__, reads_run=True).parse_args()
    markdown, missed, rows = run(args)
    common.finish(args, "Pipeline wall time per component", markdown, missed, rows)


if __name__ == "__main__":
    main()
