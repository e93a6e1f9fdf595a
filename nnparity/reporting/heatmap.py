"""Draw a failing comparison: scratch, reference and scratch - reference as heatmaps in one PNG.

A transposed gradient shows as a mirrored pattern, a crop or padding slip as a frame, a
shift as a stripe, a factor as a difference shaped like the reference. Tensors of more
than two axes are tiled: (A, B, H, W) as A rows x B columns of H x W tiles (NaN gaps
between them), (A, H, W) as one row of A tiles, more axes folded into the rows; a 1-D
tensor is one row.
"""

from __future__ import annotations

import os

import numpy as np

from nnparity.training.adapters import ArgumentError


def check_path(path) -> str:
    """A writable ``.png`` path, or one ``ArgumentError`` line naming the problem and the fix."""
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentError(f"plot must be a path to a .png file, got {type(path).__name__}")
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ArgumentError(f"plot={path!r}: the heatmap is a PNG: give a path ending in .png")
    if os.path.isdir(path):
        raise ArgumentError(f"plot={path!r} is a folder: give a file path ending in .png")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ArgumentError(f"plot={path!r}: the folder {folder} does not exist: create it or write elsewhere")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ArgumentError(f"plot={path!r}: cannot write there (permission denied): give a writable path")
    return path


def check_folder(path, flag: str = "--plot") -> str:
    """A folder the heatmaps can be written into (made if its parent exists), or one
    ``ArgumentError`` line naming the problem and the fix."""
    path = os.fspath(path)
    if not path:
        raise ArgumentError(f"{flag} needs a folder: {flag} DIR")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ArgumentError(f"{flag} {path}: that is a file, not a folder: give a folder for the PNGs")
    if not os.path.isdir(path):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ArgumentError(f"{flag} {path}: its parent folder {parent} does not exist: create it or "
                                "write elsewhere")
        try:
            os.mkdir(path)
        except OSError as e:
            raise ArgumentError(f"{flag} {path}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK):
        raise ArgumentError(f"{flag} {path}: cannot write there (permission denied): give a writable folder")
    return path


def draw_divergence(folder: str, diagnosis, net: str, dtype: str) -> list:
    """PNGs of a failed parity run's failing tensors at its first failing step (``Diagnosis.arrays``):
    the first divergence and, when it is another tensor, the culprit stage's worst one. Returns the paths."""
    names = [diagnosis.first.name]
    worst = diagnosis.culprit.worst() if diagnosis.culprit is not None else None
    if worst is not None and worst.name != names[0]:
        names.append(worst.name)
    paths = []
    for name in names:
        if name not in diagnosis.arrays:
            continue
        a, b = diagnosis.arrays[name]
        path = os.path.join(folder, f"{net}_{dtype}_step{diagnosis.step}_{name.replace('/', '_')}.png")
        pattern = diagnosis.first.pattern if name == diagnosis.first.name else None
        paths.append(draw_difference(path, a, b, f"{net} {dtype} step {diagnosis.step}: {name}", pattern))
    return paths


def tile(a) -> np.ndarray:
    """A 2-D view of any tensor for a heatmap (see the module docstring)."""
    a = np.asarray(a, np.float64)
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1)
    if a.ndim == 2:
        return a
    if a.ndim > 4:   # leading axes folded into the rows
        a = a.reshape(-1, *a.shape[-3:])
    if a.ndim == 3:
        a = a[None]
    rows, cols, h, w = a.shape
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for i in range(rows):
        for j in range(cols):
            out[i * (h + 1):i * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = a[i, j]
    return out


def draw_difference(path: str, scratch, reference, title: str, pattern: str | None = None) -> str:
    """Write the PNG; an ``OSError`` on writing is one ``ArgumentError`` line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = np.asarray(scratch, np.float64), np.asarray(reference, np.float64)
    panels = [("scratch", a), ("reference", b)]
    if a.shape == b.shape:
        panels.append(("scratch - reference", a - b))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (label, v) in zip(axes[0], panels):
        t = tile(v)
        finite = t[np.isfinite(t)]
        lim = float(np.abs(finite).max()) if finite.size else 1.0
        lim = lim or 1.0
        im = ax.imshow(t, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest", aspect="auto")
        ax.set_title(f"{label} {tuple(v.shape)}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title + (f"\n{_wrap(pattern)}" if pattern else ""), fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise ArgumentError(f"plot={path!r}: cannot write the heatmap ({e.strerror or e}): give a writable path") \
            from None
    finally:
        plt.close(fig)
    return path


def _wrap(text: str, width: int = 110) -> str:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return "\n".join(lines + [cur])
