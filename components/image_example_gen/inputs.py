"""Finding ImageExampleGen's input files, reading them safely, and the label split rule.

Plain Python (no TFX, no TensorFlow), so the CLI can scan and check a data set without a
pipeline. Two input layouts, told apart by what ``input_base`` is:

* a directory: ``input_base/<label>/<image>``. Every regular file under it is a candidate,
  hidden files and non-images included, so that nothing is dropped silently: the checks
  reject what is not an image and the report says so. A file directly under ``input_base``
  has no label folder and is reported (``no_label``). Symlinked directories are not followed
  (they could loop or leave the tree) and are reported (``not_followed``); symlinked files are
  followed only if they resolve inside ``input_base``.
* a CSV file (GLDv2 style): columns ``id`` and ``landmark_id``, optionally ``path``; other
  columns are ignored. Images live under an image root, by default the folder named like the
  CSV's stem beside it (``data/train.csv`` -> ``data/train/``), otherwise ``images_subdir``
  (relative to the CSV's folder, absolute, or a URI). A row's file is ``path`` relative to the root
  when given, else ``<id[0]>/<id[1]>/<id[2]>/<id>.jpg``. The image id is ``id`` (or ``path``
  when there is no id), the label is ``landmark_id`` as written.

File names are byte strings on POSIX: a name that is not valid UTF-8 (an old archive's
Latin-1 ``caf\xe9.jpg``), holds a newline or is 250 bytes long is still ingested. Python
hands such names over with surrogate escapes; the file is opened under its real name, while
the image id, the label and every report show it through ``display_name``: valid UTF-8,
backslash escapes for undecodable bytes and control characters, reversible with
``from_display_name``.

``scan_inputs(..., labels_required=False)`` (gallery indexing) also accepts files directly
under a folder and a CSV without a ``landmark_id`` column: their label is "".

``input_base``, ``images_subdir`` and so the image root may be local paths or URIs
(``gs://``, ``s3://``, ...; see ``storage``). Local paths are listed and read with ``os`` and
their escape check resolves symlinks (``os.path.realpath``); URIs are listed and read through
TFX's fileio and their escape check is lexical (``storage.contained``). Only URIs import
TensorFlow, so the CLI's scans of local folders stay plain Python.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import os
import stat
from typing import Iterator, Optional, Union

from components.image_example_gen import storage
from components.images.checks import Rejected
# The split rule lives in ``splits``; these names stay importable from here.
from components.image_example_gen.splits import (  # noqa: F401
    EVAL, HASH_BUCKETS, SPLITS, TRAIN, assign_splits, label_bucket, split_counts)

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One input file (or manifest row) to validate.

    Attributes:
      image_id: the id emitted with the example: path relative to the root (folder layout)
        or the manifest's id.
      label: the label folder's name or the manifest's landmark_id, as text.
      root: the folder the file must stay inside.
      relpath: the file's path as found or written in the manifest, relative to ``root``.
      problem: (reason, detail) when the scan already knows the candidate is unusable.
    """
    image_id: str
    label: str
    root: str
    relpath: str
    problem: Optional[tuple[str, str]] = None

    @property
    def path(self) -> str:
        """The path as given (joined to the root), to open the file."""
        return os.path.join(self.root, self.relpath)  # posixpath on POSIX: right for URIs too

    @property
    def display_path(self) -> str:
        """The path for reports: valid UTF-8, whatever bytes the name holds (``display_name``)."""
        return display_name(self.path)


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_UNESCAPES = {"\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


def display_name(name: str) -> str:
    """A file name (or path) as printable, valid UTF-8, reversibly.

    Bytes that are not UTF-8 (surrogate-escaped by Python: ``"\\udcff"``) become ``\\xff``,
    control characters ``\\n``, ``\\t``, ``\\r`` or ``\\x01``, and the backslash itself
    ``\\\\``; everything else is kept. ``from_display_name`` gives the original back.
    """
    out = []
    for ch in name:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as os.fsdecode hands it over
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return "".join(out)


def from_display_name(text: str) -> str:
    """The inverse of ``display_name``: the name as ``os`` functions take it."""
    raw, i = bytearray(), 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and text[i + 1:i + 2] == "x":
            raw.append(int(text[i + 2:i + 4], 16))
            i += 4
        elif ch == "\\":
            raw += _UNESCAPES[text[i + 1]].encode()
            i += 2
        else:
            raw += ch.encode("utf-8")
            i += 1
    return os.fsdecode(bytes(raw))


def is_manifest(input_base: str) -> bool:
    """True when ``input_base`` is a CSV manifest file rather than a folder tree."""
    input_base = storage.canonical(input_base)
    if storage.is_uri(input_base):
        return storage.isfile(input_base)
    return os.path.isfile(input_base)


def manifest_image_root(csv_path: str, images_subdir: Optional[str] = None) -> str:
    """The folder a manifest's image paths are relative to (see the module docstring).

    A URI ``images_subdir`` is the root whatever the CSV's location; with a URI CSV, an
    absolute ``images_subdir`` is a folder in the CSV's bucket.
    """
    csv_path = storage.canonical(csv_path)
    stem = os.path.splitext(os.path.basename(csv_path))[0]
    if storage.is_uri(csv_path):
        return storage.join(storage.dirname(csv_path), images_subdir or stem)
    if images_subdir and storage.has_scheme(images_subdir):
        return storage.canonical(images_subdir)
    folder = os.path.dirname(os.path.abspath(csv_path))
    # An absolute images_subdir wins the join.
    return os.path.join(folder, images_subdir or stem)


def image_root(input_base: str, images_subdir: Optional[str] = None) -> str:
    """The folder every candidate of ``input_base`` must stay inside, as ``scan_inputs`` uses it."""
    if is_manifest(input_base):
        return manifest_image_root(input_base, images_subdir)
    input_base = storage.canonical(input_base)
    return input_base if storage.is_uri(input_base) else os.path.abspath(input_base)


def scan_inputs(input_base: str, images_subdir: Optional[str] = None,
                labels_required: bool = True) -> list[Candidate]:
    """Lists every candidate file (folder tree) or row (CSV manifest), in a stable order.

    Args:
      input_base: a folder ``<label>/<image>`` or a CSV manifest file.
      images_subdir: for a manifest only: the image root, relative to the CSV's folder.
      labels_required: False for a gallery: files directly under the folder and a CSV
        without ``landmark_id`` are accepted, with the label "".

    Returns:
      One Candidate per file or row. The count is "files seen": the ingestion invariant is
      files seen = examples emitted + files reported.

    Raises:
      FileNotFoundError: ``input_base`` does not exist.
      ValueError: the manifest lacks the required columns.
    """
    location = storage.canonical(input_base)
    uri = storage.is_uri(location)
    if not (storage.exists(location) if uri else os.path.exists(location)):
        raise FileNotFoundError(f"input_base {input_base!r} does not exist")
    if is_manifest(location):
        return _scan_manifest(location, manifest_image_root(location, images_subdir), labels_required)
    return _scan_folder(location if uri else os.path.abspath(location), labels_required)


_NO_LABEL = ("no_label", "file directly under input_base: no label folder")


# A folder tree is listed in two steps, so that ingestion can spread the second over workers:
# ``folder_top`` lists the root itself (label folders to walk, and the candidates that sit
# directly under the root), ``walk_label`` walks one label folder. ``scan_inputs`` chains
# them; the pipeline runs them as two fan-out steps (``listing``).

def folder_top(root: str, labels_required: bool = True) -> Iterator[Union[str, Candidate]]:
    """The root's own entries: a label folder's name (str) to walk, or a Candidate for a file
    directly under the root (``no_label`` when labels are required) or a symlinked folder
    (``not_followed``). Classified as ``os.walk(followlinks=False)`` classifies them."""
    # The root's own candidates first, then the label folders: the order scan_inputs has
    # always listed in (os.walk's), for local paths and URIs alike.
    if storage.is_uri(root):
        # Object stores have no symlinks, so there is nothing to report as not_followed.
        dirnames, filenames = storage.list_level(root)
        for name in sorted(filenames):
            yield Candidate(display_name(name), "", root, name, _NO_LABEL if labels_required else None)
        yield from sorted(dirnames)
        return
    links, files, labels = [], [], []
    with os.scandir(root) as entries:
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows symlinks, as os.walk's split into dirnames does
            except OSError:
                is_dir = False
            (links if is_dir and entry.is_symlink() else labels if is_dir else files).append(entry.name)
    for name in sorted(links):
        yield Candidate(display_name(name), display_name(name), root, name,
                        ("not_followed", "symlinked directory: not followed"))
    for name in sorted(files):
        yield Candidate(display_name(name), "", root, name, _NO_LABEL if labels_required else None)
    yield from sorted(labels)


def walk_label(root: str, name: str) -> Iterator[Candidate]:
    """Every candidate under the label folder ``root/name``, at any depth (symlinked folders
    inside it are reported ``not_followed``, never entered)."""
    label = display_name(name)
    if storage.is_uri(root):
        for rel in storage.walk_files(storage.join(root, name)):
            rel = f"{name}/{rel}"
            yield Candidate(display_name(rel), label, root, rel)
        return
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), followlinks=False):
        dirnames.sort()  # os.walk descends in this (now sorted) order: a stable listing
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/") + "/"
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                yield Candidate(display_name(rel_dir + d), label, root, rel_dir + d,
                                ("not_followed", "symlinked directory: not followed"))
        for f in sorted(filenames):
            yield Candidate(display_name(rel_dir + f), label, root, rel_dir + f)


def _scan_folder(root: str, labels_required: bool = True) -> list[Candidate]:
    out: list[Candidate] = []
    for item in folder_top(root, labels_required):
        out.extend(walk_label(root, item) if isinstance(item, str) else [item])
    return out


def _open_manifest(csv_path: str):
    if storage.is_uri(csv_path):
        return storage.open_text(csv_path)
    return open(csv_path, newline="", encoding="utf-8")


def check_columns(csv_path: str, columns, labels_required: bool = True) -> list[str]:
    """The manifest's header, checked. Raises ValueError naming the file and its columns."""
    if ("landmark_id" not in set(columns) and labels_required) or not set(columns) & {"id", "path"}:
        raise ValueError(f"{csv_path}: needs a 'landmark_id' column and an 'id' or 'path' column, "
                         f"has {sorted(columns)}")
    return list(columns)


def manifest_candidate(row_no: int, row: dict, root: str, labels_required: bool = True) -> Candidate:
    """One manifest row (``row_no`` counts the header as row 1) as a Candidate, every check
    but ``duplicate_id`` applied (that one needs the earlier rows: ``first_listed``)."""
    iid = (row.get("id") or "").strip()
    label = (row.get("landmark_id") or "").strip()
    given = (row.get("path") or "").strip()
    image_id = iid or given or f"<row {row_no}>"
    rel = given or (gldv2_relpath(iid) if iid else None) or ""
    problem = None
    if (labels_required and not label) or not (iid or given):
        problem = ("bad_manifest_row", f"row {row_no}: empty id/path or landmark_id")
    elif not rel:
        problem = ("bad_manifest_row", f"row {row_no}: id {iid!r} too short for the GLDv2 layout")
    return Candidate(image_id, label, root, rel, problem)


def first_listed(rows) -> Iterator[Candidate]:
    """The rows that share one image id, as (row_no, Candidate), in any order: the first
    listed keeps its own verdict, a later one without a problem of its own is a duplicate."""
    rows = sorted(rows, key=lambda r: r[0])
    for i, (row_no, c) in enumerate(rows):
        if i and c.problem is None:
            c = dataclasses.replace(c, problem=("duplicate_id", f"row {row_no}: id {c.image_id!r} already listed"))
        yield c


def _scan_manifest(csv_path: str, root: str, labels_required: bool = True) -> list[Candidate]:
    with _open_manifest(csv_path) as f:
        reader = csv.DictReader(f)
        check_columns(csv_path, reader.fieldnames or (), labels_required)
        rows = [(row_no, manifest_candidate(row_no, row, root, labels_required))
                for row_no, row in enumerate(reader, start=2)]  # row 1 is the header
    by_id: dict[str, list] = {}
    for row_no, c in rows:
        by_id.setdefault(c.image_id, []).append((row_no, c))
    verdict = {row_no: c for group in by_id.values()
               for (row_no, _), c in zip(sorted(group, key=lambda r: r[0]), first_listed(group))}
    return [verdict[row_no] for row_no, _ in rows]


def gldv2_relpath(image_id: str) -> Optional[str]:
    """Where GLDv2 keeps an image under its image root, ``<id[0]>/<id[1]>/<id[2]>/<id>.jpg``;
    None for an id shorter than 3 characters, which has no place in that layout."""
    if len(image_id) < 3:
        return None
    return f"{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"


def read_candidate(candidate: Candidate, max_bytes: int) -> bytes:
    """Reads a candidate's bytes after the file-level checks.

    Args:
      candidate: from ``scan_inputs``.
      max_bytes: larger files are refused from their size, without reading them.

    Returns:
      The file's bytes.

    Raises:
      checks.Rejected: ``outside_root`` (absolute path, ``..`` or a symlink leaving the root),
        ``missing``, ``unreadable``, ``too_many_bytes``, or the scan's own ``problem``.
    """
    if candidate.problem:
        raise Rejected(*candidate.problem)
    root = storage.canonical(candidate.root)
    if storage.is_uri(root):
        # Lexical check, then the read of exactly the checked URI (see storage.contained).
        return storage.read_capped(storage.contained(root, candidate.relpath), max_bytes)
    if os.path.isabs(candidate.relpath):
        raise Rejected("outside_root", "absolute path; paths must be relative to the image root")
    root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root, candidate.relpath))  # resolves .. and symlinks
    if os.path.commonpath([real, root]) != root:
        raise Rejected("outside_root", f"resolves to {real}, outside {root}")
    try:
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode):
            raise Rejected("unreadable", "not a regular file")
        if st.st_size > max_bytes:  # refused from the size: a 10 GB file is never read
            raise Rejected("too_many_bytes", f"{st.st_size} bytes > max_bytes {max_bytes}")
        with open(real, "rb") as f:
            return f.read(max_bytes + 1)  # +1: a file that grew since stat still trips the cap
    except FileNotFoundError:
        raise Rejected("missing", "no such file") from None
    except OSError as e:
        raise Rejected("unreadable", f"{type(e).__name__}: {e.strerror or e}") from None


DEFAULT_FINGERPRINT_MAX_FILES = 200_000


def fingerprint(input_base: str, images_subdir: Optional[str] = None,
                max_files: Optional[int] = DEFAULT_FINGERPRINT_MAX_FILES) -> Optional[str]:
    """A digest of what ingestion would read from a LOCAL input: every file's path, size and
    modification time under the image root, plus the manifest's bytes, in one walk.

    None for URIs (listing an object store at pipeline-definition time is not this
    function's job), a missing path, or a tree of more than ``max_files`` files: the walk
    stops there and a warning says that TFX's cache can then not see changed images. Every
    file is stat'ed because an edit in place changes only that file's own mtime.
    """
    input_base = storage.canonical(input_base)
    if storage.is_uri(input_base) or not os.path.exists(input_base):
        return None
    digest = hashlib.sha256()
    root = image_root(input_base, images_subdir)
    if is_manifest(input_base):
        with open(input_base, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    seen = 0
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        seen += len(files)
        if max_files is not None and seen > max_files:
            _log.warning(
                "ImageExampleGen: %s holds more than %d files (fingerprint_max_files), so no input "
                "fingerprint was taken: TFX's cache cannot see added, removed or edited images. "
                "After changing the data, run without the cache (dolg-tfx run --no-cache, or "
                "enable_cache=False), or pass input_fingerprint yourself.", root, max_files)
            return None
        for name in sorted(files):
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError:
                continue  # vanished or unreadable: ingestion will report it
            # fsencode: a name that is not UTF-8 (surrogate-escaped) is hashed as its bytes.
            digest.update(os.fsencode(os.path.relpath(path, root)) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()
