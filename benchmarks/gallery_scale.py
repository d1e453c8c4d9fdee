"""Gallery indexing at scale: `dolg-tfx index build`'s launcher memory and images/s at two sizes.

The gallery is ingest_scale's generated tree (``tree/<label>/<id>.jpg``, 20 distinct tiny JPEGs
a label); the model is the stand-in SavedModel with the pushed model's serving contract
(tests/fixtures/stand_in_model.py: the model's cost is not what is measured). Each size runs
``index build --backend exact`` in a fresh process on the DirectRunner (in-memory: the workers
run inside the launcher, so its memory is everything), after importing what the command
imports; reported: the launcher's peak RSS over that import baseline, images/s, and the
growth from the small size to the large one. ``--backend exact`` keeps the index itself out of
the memory (HNSW holds its graph in memory by design; the exact and IVF-PQ indexes map their
shards).

Target (issue 24): the peak (anonymous) over imports grows by <= 50 MB from 20,000 to 200,000
images.

    tools/devenv.sh run python -m benchmarks.gallery_scale [--quick|--full|--smoke] [--json OUT]
      quick: 1,000 and 15,000 images (ingest_scale's quick trees, shared); --full: 20,000 and
      200,000; --smoke: 40 and 80
"""
import json
import math
import os
import shutil
import subprocess
import sys
import time

from benchmarks import common
from benchmarks.ingest_scale import make_data

_CHILD = r"""
import json, resource, sys, threading, time
from dolg_tfx.cli import main
import apache_beam, faiss, tensorflow  # noqa: F401  (what the command imports, before the baseline)
from components.retrieval import gallery_embedding, index  # noqa: F401
images, model, out = sys.argv[1:4]
def anon_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("RssAnon")) / 1024
peak, done = [anon_mb()], threading.Event()
def sample():  # the kernel keeps no peak of anonymous memory alone: sampled every 10 ms
    while not done.wait(0.01):
        peak[0] = max(peak[0], anon_mb())
base, base_rss = peak[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
main(["index", "build", "--model", model, "--images", images, "-o", out, "--backend", "exact"],
     standalone_mode=False)
seconds = time.perf_counter() - t0
done.set()
meta = json.load(open(out + "/meta.json"))
print(json.dumps({"n": meta["count"], "seconds": seconds, "base_mb": base, "peak_mb": max(peak[0], anon_mb()),
                  "base_rss_mb": base_rss, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _model():
    path = os.path.join(common.SCRATCH, "gallery_scale_model", "1")
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        stand_in = common.load_module(os.path.join(common.REPO, "tests", "fixtures", "stand_in_model.py"))
        stand_in.save_stand_in_model(path, dim=64)
    return path


def run(sizes):
    model, rows = _model(), []
    for n in sizes:
        root = os.path.join(common.SCRATCH, f"ingest-{n}")
        make_data(root, n)
        out = os.path.join(root, "gallery-index")
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-c", _CHILD, os.path.join(root, "tree"), model, out],
                              cwd=common.REPO, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"index build of {n} images failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        assert r["n"] == n, r  # every image indexed: the same work at each size
        r.update(images=n, images_per_s=n / r["seconds"], over_imports_mb=r["peak_mb"] - r["base_mb"])
        print(json.dumps(r), flush=True)
        rows.append(r)
        shutil.rmtree(out, ignore_errors=True)
    return rows


def report(rows):
    small, large = rows[0], rows[-1]
    growth = large["over_imports_mb"] - small["over_imports_mb"]
    exponent = math.log(max(large["over_imports_mb"], 1) / max(small["over_imports_mb"], 1)) / \
        math.log(large["images"] / small["images"])
    table = common.md_table(
        ["images", "seconds", "images/s", "launcher peak anonymous MB (imports)", "over imports MB",
         "peak RSS incl. mapped files MB (imports)"],
        [[f"{r['images']:,}", f"{r['seconds']:.0f}", f"{r['images_per_s']:.0f}", f"{r['peak_mb']:.0f} "
          f"({r['base_mb']:.0f})", f"{r['over_imports_mb']:.0f}",
          f"{r['peak_rss_mb']:.0f} ({r['base_rss_mb']:.0f})"] for r in rows])
    note = (f"\n`index build --backend exact` over ingest_scale's generated tree (20 images a label "
            f"folder), the stand-in model (64-d), DirectRunner in-memory. From {small['images']:,} to "
            f"{large['images']:,} images the launcher's peak over its imports grew by {growth:.0f} MB "
            f"(exponent {exponent:.2f}). Anonymous memory is what the process holds (sampled every 10 ms); "
            "the RSS column adds the pages of files it maps (the parts, the index's shards), which the "
            "kernel drops under pressure.")
    line = common.verdict(f"launcher peak growth {small['images']:,} -> {large['images']:,} images",
                          growth, 50, False, unit=" MB")
    return table + "\n" + note, ([line] if "MISSED" in line else [])


def main():
    args = common.parser(__doc__).parse_args()
    sizes = {"quick": (1_000, 15_000), "full": (20_000, 200_000), "smoke": (40, 80)}[args.mode]
    rows = run(sizes)
    markdown, missed = report(rows)
    common.finish(args, f"Gallery indexing from {sizes[0]:,} to {sizes[1]:,} images: the launcher's memory",
                  markdown, missed, rows)


if __name__ == "__main__":
    main()
