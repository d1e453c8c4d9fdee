"""Shared plumbing of the benchmarks: command line, verdicts, JSON output, and one cached local
pipeline run whose real artifacts (Examples, Transform graph, exported SavedModel) the input
pipeline and serving benchmarks measure.

Every benchmark prints markdown and, with --json OUT, writes {"title", "markdown", "missed",
"rows"} so that benchmarks.run_all can assemble one RESULTS.md without re-parsing stdout.

Sizes: --quick (the default), --full (the documented sizes) and --smoke: the smallest sizes
that still run every code path end to end (every candidate measured, the table, the verdicts
and the JSON built as in the other modes), so that the test suite can run every benchmark in
about a minute (tests/pipeline/test_pipeline_e2e.py). Smoke figures mean nothing: the section
says so in its title, and its verdicts are computed only to exercise them.

The benchmarks that read a pipeline run take --run DIR: a completed local run's output folder
(the --output of ``dolg-tfx run``: run.json, metadata.sqlite, the artifacts) to read instead of
the run they make or reuse in scratch/bench/. Scratch files go to $DOLG_TFX_BENCH_SCRATCH when
set (the suite points it at a temporary folder), else to scratch/bench/.
"""
import argparse
import json
import os
import shutil
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRATCH = os.environ.get("DOLG_TFX_BENCH_SCRATCH") or os.path.join(REPO, "scratch", "bench")
SMOKE_NOTE = ("*Smoke run: sizes chosen to run every code path, not to measure; the figures and "
              "the verdicts below mean nothing.*")

# The data sets the benchmarks run the pipeline on. 160 px JPEGs are generate_landmarks'
# default (the demo's size), so the decode cost measured is the demo's decode cost.
QUICK_DATA = {"n_landmarks": 10, "views_per_landmark": 6, "size": 160}
DEMO_DATA = {"n_landmarks": 40, "views_per_landmark": 10, "size": 160}
QUICK_PRESET, FULL_PRESET = "tiny", "cpu-demo"


def load_module(path):
    """A Python file loaded by its path (the tests' fixtures, which are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Mode(argparse.Action):
    """--smoke / --quick / --full: sets args.mode and, from it, args.full and args.smoke."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        mode = option_string.lstrip("-")
        namespace.mode, namespace.full, namespace.smoke = mode, mode == "full", mode == "smoke"


def parser(doc, reads_run=False):
    """argparse with the options every benchmark shares: --quick (default) / --full / --smoke,
    --json, and with `reads_run` --run DIR."""
    p = argparse.ArgumentParser(description=doc.strip().split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action=_Mode, dest="mode", help="small sizes (default)")
    mode.add_argument("--full", action=_Mode, dest="mode", help="the documented sizes")
    mode.add_argument("--smoke", action=_Mode, dest="mode",
                      help="the smallest sizes that run every code path (the numbers mean nothing)")
    p.set_defaults(mode="quick", full=False, smoke=False)
    p.add_argument("--json", help="also write the results to this JSON file")
    if reads_run:
        p.add_argument("--run", metavar="DIR",
                       help="read this completed local pipeline run (the --output of `dolg-tfx run`) "
                            "instead of making or reusing one in scratch/bench/")
    return p


def verdict(what, value, target, higher_is_better, unit="x"):
    """'met' or 'MISSED by ...' for value against target; the relative shortfall is reported
    because the targets are ratios and an absolute gap would hide how far off they are."""
    ok = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    if ok:
        return f"{what}: {value:.2f}{unit} (target {sign} {target}{unit}) met"
    gap = (target / value if higher_is_better else value / target) if value else float("inf")
    return (f"{what}: {value:.2f}{unit} (target {sign} {target}{unit}) MISSED by "
            f"{abs(value - target):.2f}{unit} ({(gap - 1) * 100:.0f}% off)")


def finish(args, title, markdown, missed, rows):
    """Print the section and, with --json, write it for run_all (a smoke run's says so)."""
    if getattr(args, "smoke", False):
        title, markdown = f"{title} (smoke)", f"{SMOKE_NOTE}\n\n{markdown}"
    print(f"\n## {title}\n\n{markdown}")
    for line in missed:
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"title": title, "markdown": markdown, "missed": missed, "rows": rows},
                      f, indent=2, default=float)


def md_table(header, rows):
    """A markdown table from a header list and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def peak_rss_mb():
    """Peak resident set size of this process so far, MB (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- the pipeline run

def run_key(preset, data, overrides=None):
    extra = "".join(f"-{k}{v}" for k, v in sorted((overrides or {}).items()))
    return f"{preset}-{data['n_landmarks']}x{data['views_per_landmark']}-{data['size']}px{extra}"


def pipeline_run(preset, data, fresh=False, output=None, **overrides):
    """A complete local pipeline run of `preset` (updated by `overrides`, PipelineConfig fields)
    on generate_landmarks(**data).

    Reused from scratch/bench/<key>/ when a previous benchmark completed one with the same key
    (the run's summary.json is written last, so a killed run is never reused); `fresh` deletes
    it and runs again with the TFX cache off, so every component really executes.

    Returns {"output", "data", "summary", "wall_s", "reused", "scratch"}: "scratch" is where a
    benchmark may write files of its own beside the run.
    """
    from pipeline import local_runner
    from pipeline.config import load_config
    from pipeline.demo_data import generate_landmarks

    root = output or os.path.join(SCRATCH, run_key(preset, data, overrides))
    marker = os.path.join(root, "summary.json")
    if not fresh and os.path.exists(marker):
        with open(marker) as f:
            return dict(json.load(f), reused=True, scratch=root)
    shutil.rmtree(root, ignore_errors=True)
    data_dir = os.path.join(root, "data")
    generate_landmarks(data_dir, seed=0, **data)
    start = time.perf_counter()
    summary = local_runner.run(load_config(preset, **overrides), data_dir, os.path.join(root, "run"),
                               enable_cache=False)
    result = {"output": os.path.join(root, "run"), "data": data_dir, "preset": preset,
              "summary": summary, "wall_s": time.perf_counter() - start}
    with open(marker, "w") as f:
        json.dump(result, f, indent=2, default=str)
    return dict(result, reused=False, scratch=root)


def given_run(output):
    """The completed local run in `output` (--run DIR), read as it is: its preset and config from
    its run.json, its summary from ML Metadata. Refuses a folder that is not one, or whose latest
    run has a component that neither completed nor was reused from the cache.

    Returns (preset, PipelineConfig, a description of its data, the run info of pipeline_run
    with "wall_s" None: the run's own runner wall time is not known)."""
    import hashlib

    from pipeline import local_runner, run_manifest
    from pipeline.config import PipelineConfig

    output = os.path.abspath(output)
    manifest = run_manifest.read(output) if os.path.isdir(output) else {}
    if not manifest or not os.path.exists(local_runner.Layout(output).metadata_path):
        raise SystemExit(f"--run {output}: not the output folder of a local pipeline run "
                         "(no run.json and metadata.sqlite)")
    summary = local_runner.summarise(local_runner.Layout(output))
    unfinished = {k: v for k, v in summary["components"].items() if v not in ("COMPLETE", "CACHED")}
    if unfinished:
        raise SystemExit(f"--run {output}: its latest run did not complete: {unfinished}")
    scratch = os.path.join(SCRATCH, "given-run-" + hashlib.sha1(output.encode()).hexdigest()[:10])
    os.makedirs(scratch, exist_ok=True)
    preset = manifest.get("preset") or "custom config"
    info = {"output": output, "data": manifest["data"], "preset": preset, "summary": summary,
            "wall_s": None, "reused": True, "given": True, "scratch": scratch}
    return preset, PipelineConfig.from_dict(manifest["config"]), f"the images of `{manifest['data']}`", info


def describe_data(data):
    """generate_landmarks' settings as the benchmarks' text names them."""
    return (f"{data['n_landmarks']}x{data['views_per_landmark']} generated {data['size']} px JPEGs")


def bench_run(args):
    """(preset, its PipelineConfig, a description of the data, the pipeline run) a benchmark
    reads: --run DIR's when given, else the cached run of the mode's preset and data (--smoke
    reads quick's: a smaller data set would still pay for a whole run)."""
    from pipeline.config import load_config

    if getattr(args, "run", None):
        return given_run(args.run)
    preset, data = (FULL_PRESET, DEMO_DATA) if args.full else (QUICK_PRESET, QUICK_DATA)
    return preset, load_config(preset), describe_data(data), pipeline_run(preset, data)


def shown_path(path):
    """`path` relative to the repository when inside it (as RESULTS.md shows paths), else as is."""
    rel = os.path.relpath(path, REPO)
    return path if rel.startswith("..") else rel


def round_robin(steps, rounds, burst=1):
    """{name: median seconds} of calling every step `burst` times in a row per round.

    Interleaving spreads a burst of load on the shared machine over all candidates alike;
    `burst` > 1 times only the visits' later calls, so that switching between large models
    (oneDNN's primitive cache, memory) is not charged to whichever runs first."""
    import statistics

    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            for call in range(burst):
                start = time.perf_counter()
                step()
                if burst == 1 or call > 0:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def run_artifacts(output):
    """(Examples artifact as a TFX Artifact, Transform graph URI, Trainer's exported model dir)
    of the latest run in `output`, read from ML Metadata like the orchestrator hands them over."""
    from tfx.types import artifact_utils

    from pipeline import local_runner

    layout = local_runner.Layout(output)
    store, _, executions = local_runner.latest_run_executions(layout)
    [examples] = local_runner._outputs(store, executions["ImageExampleGen"], "Examples")
    [graph] = local_runner._outputs(store, executions["Transform"], "TransformGraph")
    [model] = local_runner._outputs(store, executions["Trainer"], "Model")
    # A TFX Artifact (not the raw MLMD proto): tfxio_utils reads its split names and payload
    # format properties exactly as the Trainer's executor does.
    [examples_type] = store.get_artifact_types_by_id([examples.type_id])
    artifact = artifact_utils.deserialize_artifact(examples_type, examples)
    return artifact, graph.uri, os.path.join(model.uri, "Format-Serving")


def quiet_tf():
    """Silence TF's C++ and Python chatter so the benchmark's own lines stay readable."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # read when TensorFlow loads: call before importing it
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
