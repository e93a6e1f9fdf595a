"""Atomic output: a file is either its old self or completely new, never half-written
(``write_bytes``), and a run's folder is either the previous complete run or this
complete run, never a mix (``RunFolder``)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import math
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class OutputError(OSError):
    """An output folder or file cannot be used or written; the message names it and the fix."""


def write_bytes(path, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush, fsync, then rename over ``path``.
    A failure (disk full, a folder in the way) raises ``OutputError`` naming the file."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        _unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def finite(o):
    """JSON has no inf/nan: write them as strings so the file stays standard JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o


def write_json(path, obj) -> None:
    write_text(path, json.dumps(finite(obj), indent=1) + "\n")


def write_figure(path, fig) -> None:
    """Save a matplotlib figure as PNG, atomically."""
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    write_bytes(path, buf.getvalue())


def ensure_writable_dir(path) -> Path:
    """Create ``path`` if needed and check it can be written; raise ``OutputError`` naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output directory {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {path} is not writable")
    return path


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def check_path_text(out, example: str = "runs") -> Path:
    """``--out`` as a path, or ``OutputError`` if it is empty or not encodable as UTF-8
    (reports record the names of their files, and the console prints them): found
    before any work, not when the first file is written."""
    text = str(os.fspath(out))
    if not text.strip():
        raise OutputError(f"--out is empty: name one, e.g. --out {example}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise OutputError(f"--out {text!r} is not valid UTF-8: reports record the names of their files; "
                          "choose a UTF-8 name") from None
    return Path(text)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``);
    False where the system cannot (then the caller falls back to two renames)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    r = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if r == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OutputError(f"cannot put {a} in place of {b}: {os.strerror(err)}")


class RunFolder:
    """``OUT/NAME`` for one run, replaced whole: it always holds one complete run.

    A run writes into a work folder beside the target (``OUT/.NAME.partial``), guarded by a
    lock (``OUT/.NAME.lock``, an ``flock`` held for the whole run, so a second run into the
    same folder is refused with the first one's process id, and a killed run's lock is
    free again at once). At the end, ``finish(complete=True)`` swaps the work folder into
    ``OUT/NAME`` in one atomic rename (the previous run's folder is then removed);
    ``finish(complete=False)`` (interrupted, diverged, failed) leaves ``OUT/NAME``
    untouched and moves the work folder to ``OUT/NAME.incomplete``. Whatever a
    SIGKILLed run left (its work folder, a half-made swap, ``.tmp`` files) is cleaned up
    by the next run into the same folder, before it writes anything.
    """

    def __init__(self, out, name: str):
        self.out = check_path_text(out)
        self.name = name
        self.target = self.out / name
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"cannot create output directory {self.target}: {self.out} is a file, not a folder")
        self.incomplete = self.out / f"{name}.incomplete"
        self.work = self.out / f".{name}.partial"
        self._old = self.out / f".{name}.old"
        self._lock_path = self.out / f".{name}.lock"
        self._lock_fd = None
        self.final = None  # where the files ended up, after finish()

    @property
    def path(self) -> Path:
        """The folder to write this run's files into (the work folder until ``finish``)."""
        return self.final or self.work

    def __enter__(self) -> "RunFolder":
        ensure_writable_dir(self.out)
        for p in (self.target, self.incomplete):
            if p.exists() and not p.is_dir():
                raise OutputError(f"cannot create output directory {p}: a file of that name is in the way")
        self._lock()
        try:
            self._clean_leftovers()
            self.work.mkdir()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.final is None and self.work.exists():
                if any(self.work.iterdir()):  # an error or interrupt the run did not handle: keep what it wrote
                    self.finish(complete=False)
                else:  # stopped before writing anything: leave no trace
                    shutil.rmtree(self.work, ignore_errors=True)
        finally:
            self._unlock()
        return False

    def finish(self, complete: bool) -> Path:
        """Put the work folder in place: ``OUT/NAME`` if ``complete``, else ``OUT/NAME.incomplete``."""
        for tmp in self.work.glob(".*.tmp"):  # a write cut short by an exception
            _unlink(tmp)
        dest = self.target if complete else self.incomplete
        if dest.exists():
            if not _exchange(self.work, dest):
                os.replace(dest, self._old)  # a SIGKILL between these two renames is repaired next run
                os.replace(self.work, dest)
            else:
                os.replace(self.work, self._old)  # the previous folder, now at the work path
            shutil.rmtree(self._old, ignore_errors=True)
        else:
            os.replace(self.work, dest)
        _fsync_dir(self.out)
        self.final = dest
        return dest

    def discard(self) -> None:
        """Remove the work folder: this run leaves nothing (its final files could not be written)."""
        shutil.rmtree(self.work, ignore_errors=True)

    def _lock(self) -> None:
        while True:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise OutputError(f"{self.target} is being written by another run (process {holder}); "
                                  "wait for it to finish, or choose another --out") from None
            try:  # the lock file may have been removed by its previous holder after we opened it
                same = os.fstat(fd).st_ino == os.stat(self._lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            _unlink(self._lock_path)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _clean_leftovers(self) -> None:
        """Repair what a killed run left: a swap cut between its two renames (``OUT/NAME``
        missing, the previous folder still at ``.NAME.old``), its work folder, stray ``.tmp``."""
        if self._old.exists():
            if not self.target.exists():
                os.replace(self._old, self.target)
            else:
                shutil.rmtree(self._old, ignore_errors=True)
        if self.work.exists():
            shutil.rmtree(self.work)
        for folder in (self.target, self.incomplete):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    _unlink(tmp)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def compact_json(obj, level: int = 0) -> str:
    """JSON like ``json.dumps(obj, indent=1)``, except that a list of records (dicts) is
    written one record per line: per-step and per-epoch histories stay readable and
    small. Floats are written exactly (``repr``); non-finite ones as strings, as
    ``nnparity.core.io.write_json`` does."""
    obj = finite(obj) if level == 0 else obj
    pad, inner = " " * level, " " * (level + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {compact_json(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        return "[\n" + ",\n".join(inner + json.dumps(v) for v in obj) + f"\n{pad}]"
    if isinstance(obj, list) and obj and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + compact_json(v, level + 1) for v in obj) + f"\n{pad}]"
    return json.dumps(obj)
