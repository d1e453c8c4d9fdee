"""Runs every benchmark, each in its own subprocess, and writes one benchmarks/RESULTS.md.

Quick mode (the default) keeps the whole run under 10 minutes on a 2-core machine; --full runs
the documented sizes. Each benchmark gets a fresh Python process so one's allocations, thread
pools and TensorFlow state never leak into another's numbers; its section comes back through
its --json file, and its stdout and stderr go to scratch/bench/logs/<name>.log.

pipeline_wall runs first because it (re)makes the pipeline run that input_pipeline and serving
then reuse from scratch/bench/.

--smoke runs every benchmark at its smallest size (every code path, numbers meaningless: see
benchmarks.common), into scratch/bench/RESULTS-smoke.md unless --out says otherwise, logs in
scratch/bench/logs-smoke/; with --run DIR the benchmarks that read a pipeline run read that
completed run instead of making one (the suite passes its own run: tests/pipeline/
test_pipeline_e2e.py). A benchmark that fails shows as FAILED in its section and in "Targets
missed", and run_all then exits with status 1.

The output file is written whole, except its "## Kept from an earlier run ..." sections:
hand-kept results of runs make bench does not repeat (e.g. ingest_scale --full, 50 minutes).
run_all carries them forward verbatim from the file it replaces, at the end, and lists under
"Targets missed" what each one states under its own "Targets missed here (SOURCE):" line (a
"- " list right under the heading, or "none."), as "kept (SOURCE): ...". A kept section with
no such line is listed as one whose misses are not stated, so nothing is silently dropped.

    tools/devenv.sh run python -m benchmarks.run_all [--full|--smoke] [--run DIR] [--out FILE]
    make bench [BENCH_ARGS=--full]
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

from benchmarks import common

# (module, title, quick args, full args); every one takes --smoke. train_step predates
# --quick/--full: its quick size is the cpu-demo backbone (its default resnet50 at 224 px takes
# minutes per variant on 2 cores).
BENCHMARKS = (
    ("pipeline_wall", None, ["--quick"], ["--full"]),
    ("input_pipeline", None, ["--quick"], ["--full"]),
    ("serving", None, ["--quick"], ["--full"]),
    ("first_request", None, ["--quick"], ["--full"]),
    ("decode", None, ["--quick"], ["--full"]),
    ("retrieval_eval", None, ["--quick"], ["--full"]),
    ("train_step", "Training step: DOLG vs its floor",
     ["--backbone", "mobilenetv3small", "--size", "96", "--batch", "16", "--steps", "5"], []),
    ("dilated_conv", "Multi-atrous convolutions: tap by tap vs Keras' dilated Conv2D",
     ["--rounds", "3"], ["--rounds", "9"]),
    ("dolg_head", "What DOLG's head costs against the floor's GeM + FC", ["--rounds", "7"], ["--rounds", "21"]),
    ("index_scale", None, ["--quick"], ["--full"]),
    ("multi_worker", None, ["--quick"], ["--full"]),
    ("ingest_scale", None, ["--quick"], ["--full"]),
    ("gallery_scale", None, ["--quick"], ["--full"]),
    ("query_expansion", None, ["--quick"], ["--full"]),
)
# These print their own markdown table (caption line first); the others return it in JSON.
PRINTS_TABLE = {"train_step": "Training step", "dilated_conv": "Dilated 3x3", "dolg_head": "DOLG head"}
# These read a pipeline run, and take --run DIR.
READS_RUN = ("pipeline_wall", "input_pipeline", "serving", "first_request", "multi_worker", "query_expansion")
KEPT = "## Kept from an earlier run"
MISSED_HERE = "Targets missed here ("


def kept_sections(path):
    """The "## Kept from an earlier run" sections of the file at `path` (none if absent)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return kept_sections_text(f.read())


def kept_sections_text(text):
    """The "## Kept from an earlier run" sections of `text`, verbatim: each from its heading to
    the next "## " heading or the end."""
    sections, current = [], None
    for line in text.split("\n"):
        if line.startswith("## "):
            if current is not None:
                sections.append("\n".join(current).strip("\n"))
            current = [line] if line.startswith(KEPT) else None
        elif current is not None:
            current.append(line)
    if current is not None:
        sections.append("\n".join(current).strip("\n"))
    return sections


def kept_misses(section):
    """What a kept section states as missed, as "kept (SOURCE): ..." lines: the "- " items right
    after its "Targets missed here (SOURCE):" line (nothing when that line ends in "none.");
    without that line, one line saying the section states no such list."""
    lines = section.split("\n")
    at = next((i for i, line in enumerate(lines) if line.startswith(MISSED_HERE)), None)
    if at is None:
        tail = lines[0][len(KEPT):]
        heading = (tail.split("):", 1)[1] if "):" in tail else tail).strip(" :") or lines[0]
        return [f'kept ({heading}): the section states no "{MISSED_HERE}...)" list; read it for its misses']
    source, _, rest = lines[at][len(MISSED_HERE):].partition(")")
    if rest.strip(" :").rstrip(".").lower() == "none":
        return []
    items, started = [], False
    for line in lines[at + 1:]:
        if line.startswith("- "):
            items.append(line[2:].strip())
            started = True
        elif line.startswith("  ") and started:  # an item wrapped over several lines
            items[-1] += " " + line.strip()
        elif line.strip() or started:
            break
    return [f"kept ({source}): {item}" for item in items]


def git_commit():
    """HEAD's commit, read from .git directly (git itself is not installed in the rootfs env)."""
    git = os.path.join(common.REPO, ".git")
    try:
        with open(os.path.join(git, "HEAD")) as f:
            head = f.read().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        path = os.path.join(git, ref)
        if os.path.exists(path):
            with open(path) as f:
                return f"{f.read().strip()} ({ref.rsplit('/', 1)[-1]})"
        with open(os.path.join(git, "packed-refs")) as f:
            for line in f:
                if line.strip().endswith(" " + ref):
                    return f"{line.split()[0]} ({ref.rsplit('/', 1)[-1]})"
    except OSError:
        pass
    return "unknown"


def machine():
    """Markdown lines describing where the numbers were taken."""
    def first(path, key):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1].strip('"\n')
        except OSError:
            pass
        return "unknown"

    mem_kb = first("/proc/meminfo", "MemTotal").split()[0]
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return [
        f"- CPUs: {os.cpu_count()} (nproc), {first('/proc/cpuinfo', 'model name')}",
        f"- RAM: {int(mem_kb) / 2 ** 20:.1f} GiB",
        f"- OS: {first('/etc/os-release', 'PRETTY_NAME=')}, kernel {platform.release()}, "
        f"Python {platform.python_version()}",
        f"- load average at start (1/5/15 min): {load} (the machine is shared: read the ratios, "
        f"not the absolute times)",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- git commit: {git_commit()} (the working tree may carry uncommitted changes)",
    ]


def run_one(module, args, logs):
    """Runs one benchmark; returns (section dict or None, seconds, stdout, log path)."""
    out_json = os.path.join(logs, f"{module}.json")
    if os.path.exists(out_json):
        os.remove(out_json)
    log = os.path.join(logs, f"{module}.log")
    start = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args, "--json", out_json],
                              cwd=common.REPO, stdout=subprocess.PIPE, stderr=err, text=True)
    seconds = time.perf_counter() - start
    with open(log, "a") as f:
        f.write(f"\n---- stdout ----\n{proc.stdout}")
    if proc.returncode != 0:
        return None, seconds, proc.stdout, log
    with open(out_json) as f:
        return json.load(f), seconds, proc.stdout, log


def printed_markdown(stdout, caption):
    """A benchmark that prints its own table (its JSON has rows only): its caption line onward."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(caption)), None)
    if start is None:
        return "(no table printed)"
    # its caption sits right above the table; markdown needs a blank line between them
    return "\n".join([lines[start], ""] + lines[start + 1:]).strip()


def bench_args(module, quick_args, full_args, args):
    """The command-line arguments of one benchmark in this run's mode."""
    chosen = ["--smoke"] if args.smoke else full_args if args.full else quick_args
    return chosen + (["--run", os.path.abspath(args.run)] if args.run and module in READS_RUN else [])


def run_benchmarks(args, logs):
    """{module: (result, seconds, stdout, log)}, one benchmark at a time, in BENCHMARKS' order."""
    results = {}
    for module, _, quick_args, full_args in BENCHMARKS:
        argv = bench_args(module, quick_args, full_args, args)
        print(f"[run_all] {module} {' '.join(argv)} ...", flush=True)
        results[module] = run_one(module, argv, logs)
        print(f"[run_all] {module} {'FAILED' if results[module][0] is None else 'done'} in "
              f"{results[module][1]:.0f} s", flush=True)
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick")
    mode.add_argument("--full", dest="mode", action="store_const", const="full")
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke",
                      help="every benchmark at its smallest size: checks they run, measures nothing")
    p.set_defaults(mode="quick")
    p.add_argument("--run", metavar="DIR", help=f"a completed local pipeline run for {', '.join(READS_RUN)} to read")
    p.add_argument("--out", help="default benchmarks/RESULTS.md, with --smoke scratch/bench/RESULTS-smoke.md")
    args = p.parse_args()
    args.full, args.smoke = args.mode == "full", args.mode == "smoke"
    out = args.out or (os.path.join(common.SCRATCH, "RESULTS-smoke.md") if args.smoke
                       else os.path.join(common.REPO, "benchmarks", "RESULTS.md"))
    logs = os.path.join(common.SCRATCH, "logs-smoke" if args.smoke else "logs")
    os.makedirs(logs, exist_ok=True)

    header = machine()
    kept = kept_sections(out)
    results = run_benchmarks(args, logs)
    sections, missed, timing, failed = [], [], [], []
    for module, title, _, _ in BENCHMARKS:
        result, seconds, stdout, log = results[module]
        timing.append(f"{module} {seconds:.0f} s")
        log_rel = common.shown_path(log)
        if result is None:
            failed.append(module)
            sections.append(f"## {title or module}\n\nFAILED after {seconds:.0f} s; see `{log_rel}`.")
            missed.append(f"{module}: FAILED (see {log_rel})")
        elif module in PRINTS_TABLE:
            smoke = " (smoke)" if args.smoke else ""
            sections.append(f"## {title}{smoke}\n\n{printed_markdown(stdout, PRINTS_TABLE[module])}")
        else:
            sections.append(f"## {result['title']}\n\n{result['markdown']}")
            missed += [f"{module}: {line}" for line in result["missed"]]
    for section in kept:
        missed += kept_misses(section)

    command = "tools/devenv.sh run python -m benchmarks.run_all" + "".join(f" {a}" for a in sys.argv[1:])
    smoke_note = ["Smoke run: every benchmark at its smallest size, to check that it runs; no figure below",
                  "means anything, and the verdicts were computed only to run their code.", ""] if args.smoke else []
    text = "\n".join([
        "# DOLG-TFX benchmarks",
        "",
        f"Mode: **{args.mode}**. Command: `{command}`" + ("" if args.smoke else " (`make bench` runs the same)."),
        "Every figure that matters is a ratio of two things measured side by side in the same run;",
        "each benchmark ran in its own subprocess. Written by benchmarks/run_all.py: do not edit by hand,",
        'except the sections headed "Kept from an earlier run" at the end, which run_all carries forward as they are.',
        "",
        "## Machine",
        "",
        *header,
        f"- wall time per benchmark: {', '.join(timing)}",
        "",
        "## Targets missed",
        "",
        *smoke_note,
        *([f"- {m}" for m in missed] or ["- none"]),
        "",
        *[s + "\n" for s in sections],
        *[s + "\n" for s in kept],
    ])
    with open(out, "w") as f:
        f.write(text)
    print(text)
    print(f"[run_all] wrote {out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
