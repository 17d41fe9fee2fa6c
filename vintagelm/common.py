"""Small shared helpers: the user-error type, atomic file writes, rank-aware printing, the
BLAS thread count.

Nothing here knows about models, text or training; every layer may import it.
"""
import glob
import json
import os
import shutil
import stat
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
def atomic_file(path):
    """Yield a temporary file path beside `path`; when the body succeeds it is renamed over
    `path` (one rename: a reader, or a kill at any moment, sees the old file or the new one,
    never half of one). When the body raises, the temporary is removed and `path` untouched.
    Only this one file is written: the folder's other files are never touched."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name (for example {path / 'tokenizer.json'})")
    make_parent(path)
    remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600); a file we write is not
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after a successful rename


@contextmanager
def atomic_dir(path, is_ours):
    """Yield a temporary folder path beside `path` for the body to fill; when it succeeds the
    folder is put in place of `path`.

    A folder this program owns and recognises (`is_ours(path)`: a checkpoint, a prepared
    dataset) or an empty one may be replaced; anything else already at `path` is refused with
    a UserError, never removed. Replacing takes two renames (the old folder aside, the new one
    in): a kill between them leaves the old folder in the hidden temporary, and the next
    atomic_dir (or restore_interrupted) on `path` puts it back."""
    path = Path(path)
    restore_interrupted(path)
    remove_stale_temporaries(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file; give a folder")
    if path.is_dir() and any(path.iterdir()) and not is_ours(path):
        raise UserError(f"{path} exists and holds files this program did not write; choose a new folder or empty it")
    make_parent(path)
    nest = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent))
    target = nest / path.name  # the body writes here; the nest is only a private place for it
    try:
        yield target
        os.chmod(target, 0o777 & ~_umask())  # (mkdtemp's nest is private, but the folder we make is not)
        if path.exists():
            os.replace(path, nest / ".old")  # rename() cannot replace a non-empty folder
        try:
            os.replace(target, path)
        except BaseException:  # the old folder goes back before the nest is removed
            if (nest / ".old").exists() and not path.exists():
                os.replace(nest / ".old", path)
            raise
    finally:
        shutil.rmtree(nest, ignore_errors=True)


def temporary_prefix(path):
    """Temporaries beside `path` are named .NAME.PID.XXXX.tmp: the pid says whose they are."""
    return f".{Path(path).name}.{os.getpid()}."


def remove_stale_temporaries(path):
    """Delete the temporaries beside `path` that a process which no longer runs left behind
    (killed in the middle of a write); those of a live process, which may still be writing
    them, are left alone, and so is a nest holding an old folder to restore."""
    path = Path(path)
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".")[0]
        if not pid.isdigit() or _alive(int(pid)) or (tmp / ".old").exists():
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _umask():
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def make_parent(path):
    """Create the folder `path` goes in; a UserError when it cannot be (a file in the way, a
    read-only or virtual filesystem)."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder for {path}: {e.strerror or e}") from None


def restore_interrupted(path):
    """If `path` is missing because a replacement by atomic_dir was killed between its two
    renames, move the old folder back from the hidden temporary. Returns whether it did."""
    path = Path(path)
    if path.exists():
        return False
    for nest in sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp")):
        if (nest / ".old").is_dir():
            os.replace(nest / ".old", path)
            shutil.rmtree(nest, ignore_errors=True)
            return True
    return False


def write_json_atomic(path, obj):
    """Write `obj` as indented JSON to `path` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def regular_file(path, what="file"):
    """`path` as a Path when it is a regular file, else a one-line UserError: missing, a
    folder, or a device or pipe (/dev/zero, a FIFO), which a reader could wait on or read
    forever."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{what} {path} is a folder; give a file")
    if not stat.S_ISREG(mode):
        raise UserError(f"{what} {path} is not a regular file (a device or a pipe); give a file")
    return path


def read_json(path, what="file"):
    """Read a JSON file, turning a missing or malformed file into a one-line UserError."""
    path = regular_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, or an integer too long to convert
        raise UserError(f"{what} {path} is not valid JSON ({e}); re-create it") from None
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to be one of ours; re-create it") from None


PROBE = "write-probe"  # the small file check_output_folder writes and removes (a hidden temporary)


def check_output_folder(path, ours, what="--out"):
    """The folder a command is about to write into, checked before any work starts -> its
    resolved Path (a link to a folder is followed, so the folder itself is written, not the link).

    `ours(folder)` returns the names in an existing folder that this command wrote there (an
    earlier run of it), or raises its own UserError; any other name is the user's and the folder
    is refused, naming it. A missing folder is created. Then a small file is written in it and
    removed, so that a read-only folder or a full disk fails now rather than after the work.
    Every refusal is a one-line UserError: a file, under a file, cannot be created, not ours."""
    folder = Path(os.path.realpath(path))  # (not Path.resolve: a link loop would raise there)
    try:
        refuse_unusable_folder(folder, ours, f"{what} {path}")
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # /proc/x, a folder we may not list or enter
        raise UserError(f"cannot create {what} {path}: {e.strerror or e}") from None
    probe_writable(folder, f"{what} {path}")
    return folder


def refuse_unusable_folder(folder, ours, what):
    """A UserError when `folder` is a file, lies under a file, or holds files that are not
    ours(folder) (named, up to 3); an OSError when it cannot be looked at."""
    restore_interrupted(folder)  # an atomic_dir swap killed halfway: the old folder comes back first
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} is a file; give a folder")
    blocker = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"{what} is under {blocker}, which is a file; give a folder")
    if folder.is_dir():
        remove_stale_temporaries(folder / PROBE)
        foreign = foreign_files(folder, ours)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise UserError(f"{what} holds files vintagelm did not write ({shown}); choose a new folder or empty it")


def foreign_files(folder, ours):
    """The sorted names in `folder` that are not ours(folder): a link is never ours (we make
    none), and the hidden temporary of one of our files (a write that was killed) is ours."""
    mine = set(ours(folder))
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.is_symlink() or (p.name not in mine and temporary_of(p.name) not in mine | {PROBE}))


def temporary_of(name):
    """The file whose temporary (temporary_prefix: .NAME.PID.XXXX.tmp) `name` is, else None."""
    parts = name[1:-len(".tmp")].rsplit(".", 2) if name.startswith(".") and name.endswith(".tmp") else []
    return parts[0] if len(parts) == 3 and parts[1].isdigit() else None


def probe_writable(folder, what):
    """Write a few KiB in `folder` and remove them: a one-line UserError naming `what` when the
    folder is read-only or its disk is full (a full disk refuses the data, not the empty file)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=temporary_prefix(Path(folder) / PROBE), suffix=".tmp", dir=folder)
        try:
            os.write(fd, bytes(4096))
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write in {what}: {e.strerror or e}") from None


@contextmanager
def disk_errors(path):
    """Turn what a disk says when it refuses a write in the body (full, over quota, read-only,
    file too large) into a one-line UserError naming `path`; any other OSError stays a bug."""
    import errno

    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
            raise
        raise UserError(f"cannot write {path}: {e.strerror}") from None


def open_nofollow(path, mode="a"):
    """Open the regular file `path` as open(path, mode, encoding="utf-8") would, for mode "r",
    "a" or "a+" ("a" and "a+" create it), but never through a symbolic link: a link left where
    a program writes its own file (a lock, a log) would have it write into, or truncate, the
    user's file at the other end. A link, a second name (hard link) of a file written to, or
    something that is not a regular file is a one-line UserError, and nothing is touched.
    O_NOFOLLOW makes the check and the open one step: no link can be swapped in between."""
    flags = {"r": os.O_RDONLY, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
             "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND}[mode]
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for its other end (it is refused below)
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
    except OSError as e:
        if path.is_symlink():
            raise link_refused(path) from None
        raise UserError(f"cannot open {path}: {e.strerror or e}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or (mode != "r" and info.st_nlink > 1):
        os.close(fd)
        what = "has another name (a hard link)" if stat.S_ISREG(info.st_mode) else "is not a regular file"
        raise UserError(f"{path} {what}; this program writes only a file of its own there: remove it")
    os.set_blocking(fd, True)
    return os.fdopen(fd, mode, encoding="utf-8")


def link_refused(path):
    """The UserError for a symbolic link found where this program keeps a file or folder of its own."""
    return UserError(f"{path} is a symbolic link (to {os.readlink(path)}); this program does not read or write "
                     "its own files through links: remove the link (what it points to is left as it is)")
