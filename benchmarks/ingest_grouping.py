"""What ingestion's grouping steps alone cost the DirectRunner's launcher, per candidate.

``ingest_scale`` showed the in-memory launcher growing with the number of files once the
image bytes streamed to their files. This separates the suspects: N candidates are made
inside a worker (no file is read, the launcher lists nothing) and then either counted
directly, or first put in hash order by ListCandidates' ``hash_order.HashOrder`` (through
files, the workers' job), or regrouped by a GroupByKey on the same hash (what
ListCandidates did before: ``crc32(id) % 1000``), or reduced to their distinct labels. Each
case runs in a fresh process; reported: peak RSS over the RSS after imports.

    tools/devenv.sh run python -m benchmarks.ingest_grouping [--sizes 20000,200000]
"""
import argparse
import json
import subprocess
import sys

from benchmarks import common

_CHILD = r"""
import json, sys, tempfile, zlib
import dolg_tfx  # noqa: F401
import apache_beam as beam
from components.image_example_gen import hash_order, inputs

def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024

n, mode = int(sys.argv[1]), sys.argv[2]
def make(_):  # GLDv2-like: 20 files a label, under a folder-tree root
    for i in range(n):
        yield inputs.Candidate(f"{i:016x}", f"{i // 20:06d}", "/data/photos/tree", f"{i // 20:06d}/{i:016x}.jpg", None)
before = status_mb("VmRSS")
with beam.Pipeline(argv=["--direct_running_mode=in_memory"]) as p:
    c = p | beam.Create([None]) | beam.FlatMap(make)
    if mode == "hash order (files)":
        c = c | beam.Map(lambda c: (c.image_id, c)) | hash_order.HashOrder(tempfile.mkdtemp())
    elif mode == "GroupByKey on the hash (before)":
        c = (c | beam.Map(lambda c: (zlib.crc32(c.image_id.encode()) % 1000, c)) | beam.GroupByKey()
             | beam.FlatMap(lambda kv: kv[1]))
    elif mode == "distinct labels":
        c = c | beam.Map(lambda c: c.label) | beam.Distinct()
    _ = c | beam.combiners.Count.Globally()
print(json.dumps({"growth_mb": status_mb("VmHWM") - before}))
"""

MODES = ("no grouping", "hash order (files)", "GroupByKey on the hash (before)", "distinct labels")


def measure(n, mode):
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(n), mode], cwd=common.REPO,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["growth_mb"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="20000,200000", help="comma-separated candidate counts")
    sizes = [int(s) for s in p.parse_args().sizes.split(",")]
    rows = [[mode] + [f"{measure(n, mode):.1f}" for n in sizes] for mode in MODES]
    print(common.md_table([""] + [f"launcher MB over imports, {n:,} candidates" for n in sizes], rows))


if __name__ == "__main__":
    main()
