"""Checkpoints of a side-by-side run: one ``.npz`` file, written atomically, loaded
with ``allow_pickle=False``.

It holds both sides' parameters, optimizer state (momentum buffers) and buffers
(BatchNorm running statistics), the state of every NumPy generator the scratch
model draws from (dropout masks), the finished epochs' metrics and the run's
identity (network, recipe, dtype, seed). Batch order needs no saved state: it is
a function of (seed, epoch). The torch side draws no random numbers (it reuses
the scratch side's masks), so it has no generator state to save.
"""

from __future__ import annotations

import io as _io
import json
import zipfile
from pathlib import Path

import numpy as np

from . import io

FORMAT = "nn-parity checkpoint v1"
FILE_NAME = "checkpoint.npz"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, corrupt, foreign, or from another run."""


def _generators(model):
    """Every NumPy Generator held by a scratch module, by ``module path.attribute``."""
    for path, mod in model.named_modules():
        for attr, value in vars(mod).items():
            if isinstance(value, np.random.Generator):
                yield (f"{path}.{attr}" if path else attr), value


def save(path, training, identity: dict) -> Path:
    """Write ``training``'s full state (both sides) to ``path`` atomically."""
    arrays = {}
    for side in training.sides:
        for key, value in side.state().items():
            arrays[f"{side.name}/{key}"] = np.array(value, copy=True)
    rng = {name: gen.bit_generator.state for name, gen in _generators(training.scratch.model)}
    meta = {"format": FORMAT, "identity": identity, "epoch": len(training.history),
            "step_count": training.step_count, "history": training.history, "rng": rng,
            "step_drift": training.step_drift}
    arrays["meta"] = np.array(json.dumps(meta))
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    io.write_bytes(path, buf.getvalue())
    return Path(path)


def load(path, expected_identity: dict) -> tuple[dict, dict]:
    """Read and validate a checkpoint; returns (meta, arrays by ``side/key``)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint there (runs write one with --save-every K)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise CheckpointError(f"{path}: corrupt or not an nn-parity checkpoint ({type(e).__name__}: {e})") from None
    try:
        meta = json.loads(str(arrays.pop("meta")))
        assert meta["format"] == FORMAT
    except Exception:
        raise CheckpointError(f"{path}: not an nn-parity checkpoint (no '{FORMAT}' header)") from None
    got = meta["identity"]
    diffs = [f"{k}: checkpoint {got.get(k)!r}, this run {v!r}" for k, v in expected_identity.items()
             if got.get(k) != v]
    if diffs:
        raise CheckpointError(f"{path}: checkpoint belongs to another run ({'; '.join(diffs)})")
    return meta, arrays


def restore(training, meta: dict, arrays: dict) -> int:
    """Put a loaded checkpoint's state into ``training``; returns the next epoch to run."""
    for side in training.sides:
        prefix = f"{side.name}/"
        side.load_state({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
    gens = dict(_generators(training.scratch.model))
    for name, state in meta["rng"].items():
        gens[name].bit_generator.state = state
    training.history = meta["history"]
    training.step_drift = [tuple(d) for d in meta["step_drift"]]
    training.step_count = meta["step_count"]
    return meta["epoch"] + 1
