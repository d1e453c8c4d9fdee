"""Where ImageExampleGen's files live: local paths through ``os``, URIs through TFX's fileio.

Two kinds of location, told apart by a ``scheme://`` prefix:

* local (or mounted) paths keep going through ``os``: only the local file system has
  symlinks, and the escape check for them must resolve links (``os.path.realpath``), which
  no generic file-system layer offers. It also keeps the CLI's local scans free of the
  TensorFlow/TFX import.
* URIs (``gs://``, ``s3://``, ``hdfs://``, ``ram://``, whatever ``tf.io.gfile`` or a TFX
  filesystem plugin handles) go through ``tfx.dsl.io.fileio``, imported on first use. Object
  stores have no symlinks and no real directories, so containment is decided lexically
  (``contained``): the path part is normalised with ``posixpath.normpath`` and must stay
  under the root's path part in the root's own scheme and bucket; the file read is exactly
  that normalised path, so what was checked is what is read.

``file://`` URIs are turned into local paths, so a local tree named by URI still gets the
symlink-resolving check instead of the weaker lexical one.
"""
from __future__ import annotations

import contextlib
import io
import posixpath
import re
from typing import Iterator, Optional

from components.images.checks import Rejected

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def has_scheme(path: str) -> bool:
    """True when ``path`` starts with ``scheme://`` (including ``file://``)."""
    return _SCHEME.match(path) is not None


def canonical(path: str) -> str:
    """``file://`` URIs as local paths, other URIs with a normalised path part, paths as given.

    Raises:
      ValueError: a ``file://`` URI that names another host.
    """
    match = _SCHEME.match(path)
    if not match:
        return path
    if match.group(1).lower() == "file":
        host, _, rest = path[match.end():].partition("/")
        if host not in ("", "localhost"):
            raise ValueError(f"{path!r}: file:// URIs must name the local host")
        return "/" + rest
    prefix, part = split(path)
    return prefix + part


def is_uri(path: str) -> bool:
    """True for a location that must go through fileio (a URI that is not ``file://``)."""
    return has_scheme(path) and has_scheme(canonical(path))


def split(uri: str) -> tuple[str, str]:
    """(``scheme://bucket``, normalised absolute path part) of a URI.

    The leading slashes are collapsed first: POSIX normpath keeps a leading ``//``, which
    would make ``gs://b//x`` and ``gs://b/x`` compare as different roots.
    """
    match = _SCHEME.match(uri)
    if not match:
        raise ValueError(f"{uri!r} is not a URI")
    bucket, _, rest = uri[match.end():].partition("/")
    return uri[:match.end()] + bucket, posixpath.normpath("/" + rest.lstrip("/"))


def dirname(uri: str) -> str:
    """The URI's parent folder."""
    prefix, part = split(uri)
    return prefix + posixpath.dirname(part)


def join(base_uri: str, sub: str) -> str:
    """``sub`` under ``base_uri``: a URI ``sub`` replaces it, an absolute one stays in its bucket.

    For trusted settings (``images_subdir``), so ``..`` is allowed here; manifest rows go
    through ``contained`` instead.
    """
    if has_scheme(sub):
        return canonical(sub)
    prefix, part = split(base_uri)
    return prefix + posixpath.normpath(posixpath.join(part, sub))


def contained(root_uri: str, relpath: str) -> str:
    """The URI of ``relpath`` under ``root_uri``, checked without touching the file system.

    Raises:
      checks.Rejected: ``outside_root`` for an absolute path, a URI of its own (another
        scheme or bucket), or ``..`` climbing out of the root.
    """
    if has_scheme(relpath):
        raise Rejected("outside_root", "a URI; paths must be relative to the image root")
    if relpath.startswith("/"):
        raise Rejected("outside_root", "absolute path; paths must be relative to the image root")
    prefix, root = split(root_uri)
    target = posixpath.normpath(posixpath.join(root, relpath))
    inside = root.rstrip("/") + "/"  # "/" for a bucket root: everything in the bucket
    if target != root and not target.startswith(inside):
        raise Rejected("outside_root", f"resolves to {prefix}{target}, outside {prefix}{root}")
    return prefix + target


# --------------------------------------------------------------------------- fileio access

def _fileio():
    from tfx.dsl.io import fileio  # lazily: local paths never need TensorFlow or TFX

    return fileio


def _errors():
    """(not-found errors, all file-system errors) as raised by fileio and tf.io.gfile."""
    import tensorflow as tf

    fileio = _fileio()
    # fileio converts NotFound for stat/listdir/walk but not for open(): GFile reads lazily
    # and raises TensorFlow's own error on the first read.
    return ((fileio.NotFoundError, tf.errors.NotFoundError, FileNotFoundError),
            (tf.errors.OpError, OSError))


def exists(uri: str) -> bool:
    return _fileio().exists(uri)


def isfile(uri: str) -> bool:
    return _fileio().exists(uri) and not _fileio().isdir(uri)


def walk_files(root_uri: str) -> list[str]:
    """Every file under ``root_uri``, as ``/``-separated paths relative to it.

    In the order ``os.walk`` gives the local scan (a folder's files by name, then its
    subfolders by name, depth first), so the listing is stable and the same as for the same
    tree on disk, whatever order the store lists in.
    """
    def fail(error):  # tf.io.gfile.walk skips unlistable folders silently otherwise
        raise error

    keyed = []
    for dirpath, _, filenames in _fileio().walk(root_uri, onerror=fail):
        if not dirpath.startswith(root_uri):
            raise RuntimeError(f"walk of {root_uri!r} returned {dirpath!r}, outside it")
        rel_dir = [p for p in dirpath[len(root_uri):].split("/") if p]
        for name in filenames:
            name = name.strip("/")  # some stores list directory markers as "name/"
            if name:
                key = [(1, d) for d in rel_dir] + [(0, name)]  # files sort before subfolders
                keyed.append((key, "/".join(rel_dir + [name])))
    return [rel for _, rel in sorted(keyed)]


def list_level(root_uri: str) -> tuple[list[str], list[str]]:
    """(folder names, file names) directly under ``root_uri``, as ``walk_files`` sees them."""
    def fail(error):
        raise error

    for _, dirnames, filenames in _fileio().walk(root_uri, onerror=fail):  # the first level only
        return ([d.strip("/") for d in dirnames if d.strip("/")],
                [n.strip("/") for n in filenames if n.strip("/")])
    return [], []


@contextlib.contextmanager
def open_binary(uri: str, offset: int = 0) -> Iterator[io.BufferedIOBase]:
    """A URI opened for buffered binary reading (``readline`` keeps ``\r``), from ``offset``."""
    with _fileio().open(uri, "rb") as f:
        f.seek(offset)
        yield io.BufferedReader(_RawReader(f), buffer_size=1 << 20)


class _RawReader(io.RawIOBase):
    """A fileio file as a raw stream, so ``io.TextIOWrapper`` can decode it.

    Iterating a GFile itself would not do: its readline drops ``\\r``, which changes quoted
    CSV fields and line counts relative to the same file read locally with ``newline=""``.
    """

    def __init__(self, f):
        super().__init__()
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._f.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


@contextlib.contextmanager
def open_text(uri: str) -> Iterator[io.TextIOBase]:
    """A UTF-8 text file opened as ``open(path, newline="", encoding="utf-8")`` would be."""
    with _fileio().open(uri, "rb") as f:
        with io.TextIOWrapper(io.BufferedReader(_RawReader(f)), encoding="utf-8", newline="") as text:
            yield text


def read_capped(uri: str, max_bytes: int) -> bytes:
    """The bytes of ``uri``, refused from its size (``stat``) before any read where possible.

    Raises:
      checks.Rejected: ``missing``, ``unreadable`` (a folder, or an I/O error) or
        ``too_many_bytes``.
    """
    import tensorflow as tf

    not_found, fs_errors = _errors()
    size: Optional[int] = None
    try:
        st = _fileio().stat(uri)
        if st.is_directory:
            raise Rejected("unreadable", "not a regular file")
        size = st.length
    except not_found:
        raise Rejected("missing", "no such file") from None
    except tf.errors.UnimplementedError:
        pass  # a file system without stat: the capped read below still bounds the memory
    except fs_errors as e:
        raise Rejected("unreadable", _describe(e)) from None
    if size is not None and size > max_bytes:  # refused from the size: never read
        raise Rejected("too_many_bytes", f"{size} bytes > max_bytes {max_bytes}")
    try:
        with _fileio().open(uri, "rb") as f:
            return f.read(max_bytes + 1)  # +1: a file that grew since stat still trips the cap
    except not_found:
        raise Rejected("missing", "no such file") from None
    except fs_errors as e:
        raise Rejected("unreadable", _describe(e)) from None


def _describe(e: Exception) -> str:
    message = getattr(e, "message", None) or getattr(e, "strerror", None) or str(e)
    return f"{type(e).__name__}: {message}".rstrip(": ")
