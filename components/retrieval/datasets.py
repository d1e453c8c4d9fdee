"""Loaders for the standard retrieval test sets, from a local folder (nothing is downloaded).

Expected layouts (``DATA`` is what ``dolg-tfx evaluate --data`` gets):

* Revisited Oxford / Paris (``roxford5k``, ``rparis6k``), as revisitop lays them out::

      DATA/gnd_roxford5k.pkl           (or DATA/roxford5k/gnd_roxford5k.pkl)
      DATA/jpg/<name>.jpg              one per name in imlist and qimlist

  The pickle is revisitop's dict: ``imlist`` (database names, no extension), ``qimlist``
  (query names) and ``gnd`` (per query a dict with ``bbx`` = [x1, y1, x2, y2] and the
  database indices ``easy``, ``hard``, ``junk``). Queries are cropped to ``bbx``.

* Google Landmarks v2 retrieval (``gldv2``)::

      DATA/index.csv                   column ``id``: the index (database) images
      DATA/test.csv                    column ``id``: the test (query) images
      DATA/retrieval_solution_v2.1.csv columns id, images (space-separated index ids), Usage
      DATA/index/<a>/<b>/<c>/<id>.jpg  a, b, c = the id's first three characters
      DATA/test/<a>/<b>/<c>/<id>.jpg

  Solution rows with Usage ``Ignored`` are skipped; the queries are the remaining solution
  rows (every one must be listed in test.csv), the database is every id of index.csv.

* UKBench (``ukbench``)::

      DATA/full/ukbench00000.jpg ... ukbenchNNNNN.jpg   (or the images directly in DATA)

  Images 4g..4g+3 show one object (group g); every image is a query and the database.

The loaders check that the listed files exist (a missing file is a broken download and would
silently change the benchmark) but do not decode them; decoding is the embedder's job.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import pickle
import re
from typing import Optional

import numpy as np

REVISITED = ("roxford5k", "rparis6k")
PROTOCOL_NAMES = REVISITED + ("gldv2", "ukbench")
GLDV2_SOLUTION = "retrieval_solution_v2.1.csv"
_UKBENCH_NAME = re.compile(r"^ukbench(\d{5})\.jpg$")


@dataclasses.dataclass
class RetrievalSet:
    """A test set: database and query images plus the ground truth its protocol needs.

    Exactly one of ``gnd`` (revisited), ``solution`` (GLDv2) or ``groups`` (UKBench) is set.
    For UKBench the queries are the database images (``queries_are_database``).
    """
    name: str
    root: str
    db_ids: list
    db_paths: list
    query_ids: list
    query_paths: list
    query_boxes: Optional[list] = None
    gnd: Optional[list] = None
    solution: Optional[dict] = None
    groups: Optional[np.ndarray] = None
    queries_are_database: bool = False


class _GroundTruthUnpickler(pickle.Unpickler):
    """Loads revisitop's pickle without executing arbitrary code.

    A pickle can call any importable function; the ground truth only needs builtins and
    numpy arrays/scalars, so everything else is refused.
    """
    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"ground-truth pickle refers to {module}.{name}: refused")


def _require_files(paths, what: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{what}: {len(missing)} of {len(paths)} missing, e.g. {missing[:3]}")


def _int_list(values) -> list:
    return [int(v) for v in np.asarray(values).ravel()]


def load_revisited(data_dir: str, name: str) -> RetrievalSet:
    """Revisited Oxford (``roxford5k``) or Paris (``rparis6k``) from ``data_dir``."""
    if name not in REVISITED:
        raise ValueError(f"name must be one of {REVISITED}, got {name!r}")
    root = data_dir
    if not os.path.isfile(os.path.join(root, f"gnd_{name}.pkl")):
        root = os.path.join(data_dir, name)  # revisitop's data/datasets/<name>/ layout
    gnd_path = os.path.join(root, f"gnd_{name}.pkl")
    if not os.path.isfile(gnd_path):
        raise FileNotFoundError(f"no gnd_{name}.pkl in {data_dir} or {data_dir}/{name}")
    with open(gnd_path, "rb") as f:
        cfg = _GroundTruthUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    for key in ("imlist", "qimlist", "gnd"):
        if key not in cfg:
            raise ValueError(f"{gnd_path}: no {key!r} (has {sorted(cfg)})")
    imlist, qimlist = [str(n) for n in cfg["imlist"]], [str(n) for n in cfg["qimlist"]]
    if len(cfg["gnd"]) != len(qimlist):
        raise ValueError(f"{gnd_path}: {len(cfg['gnd'])} gnd entries for {len(qimlist)} queries")
    gnd, boxes = [], []
    for q, entry in enumerate(cfg["gnd"]):
        clean = {k: _int_list(entry.get(k, ())) for k in ("easy", "hard", "junk")}
        for k, idx in clean.items():
            if any(not 0 <= i < len(imlist) for i in idx):
                raise ValueError(f"{gnd_path}: query {q} {k} has indices outside the database")
        gnd.append(clean)
        bbx = entry.get("bbx")
        boxes.append(None if bbx is None else [float(v) for v in np.asarray(bbx).ravel()[:4]])
    image_dir = os.path.join(root, "jpg")
    db_paths = [os.path.join(image_dir, n + ".jpg") for n in imlist]
    q_paths = [os.path.join(image_dir, n + ".jpg") for n in qimlist]
    _require_files(db_paths + q_paths, f"{name} images under {image_dir}")
    return RetrievalSet(name, root, imlist, db_paths, qimlist, q_paths, query_boxes=boxes, gnd=gnd)


def _read_ids(csv_path: str) -> list:
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "id" not in (reader.fieldnames or ()):
            raise ValueError(f"{csv_path}: needs an 'id' column, has {reader.fieldnames}")
        return [row["id"].strip() for row in reader if row["id"].strip()]


def gldv2_path(data_dir: str, split: str, image_id: str) -> str:
    """``<data_dir>/<split>/<a>/<b>/<c>/<id>.jpg``: the GLDv2 download's layout."""
    from components.image_example_gen.inputs import gldv2_relpath

    rel = gldv2_relpath(image_id)
    if rel is None:
        raise ValueError(f"GLDv2 id {image_id!r} is too short for the <a>/<b>/<c> layout")
    return os.path.join(data_dir, split, *rel.split("/"))


def load_gldv2(data_dir: str, solution_csv: str = GLDV2_SOLUTION) -> RetrievalSet:
    """GLDv2 retrieval: index.csv, test.csv, the solution CSV and the image folders."""
    index_ids = _read_ids(os.path.join(data_dir, "index.csv"))
    test_ids = set(_read_ids(os.path.join(data_dir, "test.csv")))
    solution_path = os.path.join(data_dir, solution_csv)
    solution = {}
    with open(solution_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"id", "images", "Usage"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{solution_path}: needs columns id, images, Usage; "
                             f"has {reader.fieldnames}")
        for row in reader:
            if row["Usage"].strip() == "Ignored":  # test images with no landmark in the index
                continue
            qid = row["id"].strip()
            if qid not in test_ids:
                raise ValueError(f"{solution_path}: query {qid!r} is not in test.csv")
            solution[qid] = row["images"].split()
    if not solution:
        raise ValueError(f"{solution_path}: no scored (non-Ignored) queries")
    index_set = set(index_ids)
    unknown = {i for rel in solution.values() for i in rel} - index_set
    if unknown:
        raise ValueError(f"{solution_path}: {len(unknown)} relevant ids are not in index.csv, "
                         f"e.g. {sorted(unknown)[:3]}")
    q_ids = list(solution)
    db_paths = [gldv2_path(data_dir, "index", i) for i in index_ids]
    q_paths = [gldv2_path(data_dir, "test", i) for i in q_ids]
    _require_files(db_paths, f"index images under {data_dir}/index")
    _require_files(q_paths, f"test (query) images under {data_dir}/test")
    return RetrievalSet("gldv2", data_dir, index_ids, db_paths, q_ids, q_paths, solution=solution)


def load_ukbench(data_dir: str) -> RetrievalSet:
    """UKBench: ``ukbenchNNNNN.jpg`` in ``data_dir/full`` (or ``data_dir``), complete groups of 4."""
    image_dir = os.path.join(data_dir, "full")
    if not os.path.isdir(image_dir):
        image_dir = data_dir
    numbered = sorted((int(m.group(1)), name) for name in os.listdir(image_dir)
                      if (m := _UKBENCH_NAME.match(name)))
    if not numbered:
        raise FileNotFoundError(f"no ukbenchNNNNN.jpg in {image_dir}")
    numbers = np.asarray([n for n, _ in numbered])
    groups = numbers // 4
    _, counts = np.unique(groups, return_counts=True)
    if np.any(counts != 4):  # the N-S score's maximum of 4 assumes whole groups
        bad = np.unique(groups)[counts != 4]
        raise ValueError(f"{image_dir}: {bad.size} incomplete groups of 4, e.g. group {int(bad[0])} "
                         f"(images {4 * int(bad[0])}..{4 * int(bad[0]) + 3})")
    ids = [os.path.splitext(name)[0] for _, name in numbered]
    paths = [os.path.join(image_dir, name) for _, name in numbered]
    return RetrievalSet("ukbench", image_dir, ids, paths, list(ids), list(paths), groups=groups,
                        queries_are_database=True)


def load(protocol: str, data_dir: str) -> RetrievalSet:
    """The test set for ``protocol`` (one of ``PROTOCOL_NAMES``) from ``data_dir``."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir}: not a directory")
    if protocol in REVISITED:
        return load_revisited(data_dir, protocol)
    if protocol == "gldv2":
        return load_gldv2(data_dir)
    if protocol == "ukbench":
        return load_ukbench(data_dir)
    raise ValueError(f"protocol must be one of {PROTOCOL_NAMES}, got {protocol!r}")
