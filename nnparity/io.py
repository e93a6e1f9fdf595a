"""Atomic file output: a file is either its old self or completely new, never half-written."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush, fsync, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
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
    """Create ``path`` if needed and check it can be written; raise OSError naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create output directory {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OSError(f"output directory {path} is not writable")
    return path
