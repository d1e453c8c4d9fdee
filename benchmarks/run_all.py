"""Runs every benchmark, each in its own subprocess, and writes one benchmarks/RESULTS.md.

Quick mode (the default) keeps the whole run to a few minutes on a 2-core machine; --full runs
the documented sizes. Each benchmark gets a fresh Python process so one's allocations, thread
pools and TensorFlow state never leak into another's numbers; its section comes back through
its --json file, and its stdout and stderr go to scratch/bench/logs/<name>.log.

pipeline_wall runs first because it (re)makes the pipeline run that input_pipeline and serving
then reuse from scratch/bench/.

    tools/devenv.sh run python -m benchmarks.run_all [--full] [--out benchmarks/RESULTS.md]
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

# (module, title, quick args, full args). train_step predates --quick/--full: its quick size is
# the cpu-demo backbone (its default resnet50 at 224 px takes minutes per variant on 2 cores).
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
    ("query_expansion", None, ["--quick"], ["--full"]),
)
# These print their own markdown table (caption line first); the others return it in JSON.
PRINTS_TABLE = {"train_step": "Training step", "dilated_conv": "Dilated 3x3", "dolg_head": "DOLG head"}


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


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="full", action="store_false")
    mode.add_argument("--full", dest="full", action="store_true")
    p.set_defaults(full=False)
    p.add_argument("--out", default=os.path.join(common.REPO, "benchmarks", "RESULTS.md"))
    args = p.parse_args()
    logs = os.path.join(common.SCRATCH, "logs")
    os.makedirs(logs, exist_ok=True)

    header = machine()
    sections, missed, timing = [], [], []
    for module, title, quick_args, full_args in BENCHMARKS:
        bench_args = full_args if args.full else quick_args
        print(f"[run_all] {module} {' '.join(bench_args)} ...", flush=True)
        result, seconds, stdout, log = run_one(module, bench_args, logs)
        timing.append(f"{module} {seconds:.0f} s")
        log_rel = os.path.relpath(log, common.REPO)
        if result is None:
            sections.append(f"## {title or module}\n\nFAILED after {seconds:.0f} s; see `{log_rel}`.")
            missed.append(f"{module}: FAILED (see {log_rel})")
        elif module in PRINTS_TABLE:
            sections.append(f"## {title}\n\n{printed_markdown(stdout, PRINTS_TABLE[module])}")
        else:
            sections.append(f"## {result['title']}\n\n{result['markdown']}")
            missed += [f"{module}: {line}" for line in result["missed"]]
        print(f"[run_all] {module} done in {seconds:.0f} s", flush=True)

    command = "tools/devenv.sh run python -m benchmarks.run_all" + "".join(f" {a}" for a in sys.argv[1:])
    text = "\n".join([
        "# DOLG-TFX benchmarks",
        "",
        f"Mode: **{'full' if args.full else 'quick'}**. Command: `{command}` (`make bench` runs the same).",
        "Every figure that matters is a ratio of two things measured side by side in the same run;",
        "each benchmark ran in its own subprocess. Written by benchmarks/run_all.py: do not edit by hand.",
        "",
        "## Machine",
        "",
        *header,
        f"- wall time per benchmark: {', '.join(timing)}",
        "",
        "## Targets missed",
        "",
        *([f"- {m}" for m in missed] or ["- none"]),
        "",
        *[s + "\n" for s in sections],
    ])
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    print(f"[run_all] wrote {args.out}")


if __name__ == "__main__":
    main()
