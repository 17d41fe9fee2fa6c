"""Small shared helpers: the user-error type, atomic file writes, rank-aware printing, the
BLAS thread count.

Nothing here knows about models, text or training; every layer may import it.
"""
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option, corrupt file).

    The CLI prints it as one line, without a traceback, and exits with status 2.
    Bugs keep raising their ordinary exceptions.
    """


def cache_root():
    """Where vintagelm caches downloads and prepared datasets: $VINTAGELM_CACHE, else
    ~/.cache/vintagelm."""
    root = os.environ.get("VINTAGELM_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "vintagelm"


def set_blas_threads(n):
    """Let NumPy's BLAS use n threads for every matmul from now on, process-wide.

    threadpoolctl limits only the libraries already loaded, so NumPy (which loads its BLAS) is
    imported first; both are imported here so that importing this module stays cheap."""
    import numpy  # noqa: F401
    import threadpoolctl

    threadpoolctl.threadpool_limits(n, user_api="blas")


def print0(*args, **kwargs):
    """Print only on the main process (rank 0 under MPI; always when not distributed)."""
    if int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0"))) == 0:
        print(*args, **kwargs)


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success rename it over `path`.

    Works for files and directories alike. If the body raises (or the process dies),
    `path` is untouched and the temporary is removed, so a reader never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name  # the body writes here; the mkdtemp dir is only a private nest
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            # rename() cannot replace a non-empty directory: move the old one aside first
            old = tmp / ".old"
            os.replace(path, old)
            os.replace(target, path)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path, obj):
    """Write `obj` as indented JSON to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path, what="file"):
    """Read a JSON file, turning a missing or malformed file into a one-line UserError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({e}); re-create it") from None
