"""Checkpoints of a side-by-side run: one ``.npz`` file, written atomically, loaded
with ``allow_pickle=False`` and validated whole before a run does any work.

It holds both sides' parameters, optimizer state (momentum buffers) and buffers
(BatchNorm running statistics), the state of every NumPy generator the scratch
model draws from (dropout masks), the finished epochs' metrics and the run's
identity (network, recipe, dtype, seed). Batch order needs no saved state: it is
a function of (seed, epoch). The torch side draws no random numbers (it reuses
the scratch side's masks), so it has no generator state to save.

Loading trusts nothing in the file. ``expected_state`` builds, cheaply, what the
resuming run will build (both sides' arrays: names, shapes, dtypes; the scratch
side's generators; the planned epochs); ``load`` then checks, in this order: the
zip's member names; the metadata (format, identity field by field, epoch, history,
generator states, drift record); every member's ``.npy`` header (shape and dtype
against the expected array, and the member's declared size against what that array
needs) *before any array is read*, so a forged header or a zip bomb is refused
without allocating it; finally the arrays' values (no NaN or infinity). Each refusal
is a ``CheckpointError`` of one line that names the field.
"""

from __future__ import annotations

import io as _io
import json
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from nnparity.core import io

FORMAT = "nn-parity checkpoint v1"
FILE_NAME = "checkpoint.npz"
META = "meta"
META_FIELDS = ("format", "identity", "epoch", "step_count", "history", "rng", "step_drift")
# The metadata is a JSON string (a 0-d unicode array, 4 bytes per character): ~1.5 K
# characters of identity, ~600 per finished epoch, ~30 per recorded drift step (mlp16
# after 2 epochs: 2,798 characters, 11 KB). 64 MiB is far above any run's and bounds
# what a forged header can make the loader allocate.
MAX_META_BYTES = 64 << 20
# The metrics every finished epoch records (``train.Training.run_epoch``); the report
# and the drift assessment read them, so a checkpoint row without them is refused here
# rather than failing after the training.
SIDE_METRICS = ("train_loss", "train_error", "test_loss", "test_accuracy", "seconds")
ROW_NUMBERS = ("lr", "max_abs_weight_diff", "max_rel_weight_diff", "max_abs_param_diff", "max_rel_param_diff")
# run options by identity field, to say how to make this run match the checkpoint
FLAGS = {"seed": "--seed", "dtype": "--dtype", "lr": "--lr", "batch_size": "--batch-size",
         "train_size": "--train-size", "test_size": "--test-size"}


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
    arrays[META] = np.array(json.dumps(meta))
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    io.write_bytes(path, buf.getvalue())
    return Path(path)


# ---------------------------------------------------------------- what the run builds

@dataclass(frozen=True)
class ExpectedState:
    """What a resuming run will build, to check a checkpoint against.

    Attributes:
        untrained: ``side/key -> (shape, dtype)`` of both sides before any step (a
            checkpoint after 0 epochs: no momentum buffers yet).
        trained: the same after one or more steps (what every ``--save-every``
            checkpoint holds: momentum buffers appear with the first step).
        generators: the scratch side's generators, ``name -> bit generator class``.
        epochs: the run's planned epochs (a checkpoint may have at most that many).
    """

    untrained: dict
    trained: dict
    generators: dict
    epochs: int

    def arrays(self, epoch: int) -> dict:
        return self.trained if epoch > 0 else self.untrained


def _layout(sides) -> dict:
    return {f"{side.name}/{key}": (tuple(np.shape(v)), np.asarray(v).dtype)
            for side in sides for key, v in side.state().items()}


def expected_state(net, recipe, dtype, seed: int) -> ExpectedState:
    """Build both sides as the run will (``networks.make_sides``: same recipe, dtype,
    seed) and take one step on a 2-image batch of zeros, to read the arrays the run
    will hold before and after training starts. Milliseconds to a second, against the
    minutes of parity, envelope and data loading that a bad checkpoint must not cost;
    the real run builds its own sides afterwards."""
    from nnparity.training.networks import make_sides

    scratch, ref = make_sides(net, recipe, dtype, seed)
    untrained = _layout((scratch, ref))
    x = np.zeros((2, 784) if net.flat else (2, 1, 28, 28), dtype=dtype)
    y = np.zeros(2, dtype=np.int64)
    with np.errstate(all="ignore"):
        scratch.step(x, y)
        ref.step(x, y, draws=scratch.draws())
    generators = {name: type(gen.bit_generator) for name, gen in _generators(scratch.model)}
    return ExpectedState(untrained, _layout((scratch, ref)), generators, recipe.epochs)


# ---------------------------------------------------------------- reading, validated

def _short(value, limit: int = 40) -> str:
    """A value as it goes into a one-line message: repr, newlines escaped, clipped."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _dtype_name(dt: np.dtype) -> str:
    if dt.byteorder == ">" or (dt.byteorder == "=" and not dt.isnative):
        return f"{dt.name} (big-endian)"
    return dt.name


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _open_zip(path: Path) -> zipfile.ZipFile:
    """The checkpoint as a zip archive, or a one-line refusal saying what it is instead."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    if head.startswith(npy.MAGIC_PREFIX):
        raise CheckpointError(f"{path}: a single .npy array, not an nn-parity checkpoint "
                              f"(an .npz written by nnparity run --save-every)")
    if head[:1] == b"\x80":
        raise CheckpointError(f"{path}: a Python pickle, not an nn-parity checkpoint; nnparity never loads pickles")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: corrupt or not an nn-parity checkpoint "
                              f"(not a readable zip archive: {type(e).__name__})") from None


def _members(path: Path, zf: zipfile.ZipFile) -> dict:
    """``key -> ZipInfo`` of the archive's ``key.npy`` members; anything else is refused."""
    members = {}
    for info in zf.infolist():
        name = info.filename
        if not name.endswith(".npy") or info.is_dir():
            raise CheckpointError(f"{path}: unexpected member {_short(name)} (a checkpoint holds .npy arrays only)")
        key = name[:-len(".npy")]
        if key in members:
            raise CheckpointError(f"{path}: member {_short(name)} appears twice")
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{path}: member {_short(name)} is encrypted")
        members[key] = info
    return members


class _Member:
    """One ``.npy`` member: its header read and checked against its zip entry's declared
    size on construction; the data is read only by ``read()``."""

    def __init__(self, path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo):
        self.zf, self.info = zf, info
        self.where = f"{path}: member {_short(info.filename)}"
        try:
            with zf.open(info) as f:
                version = npy.read_magic(f)
                if version == (1, 0):
                    self.shape, self.fortran, self.dtype = npy.read_array_header_1_0(f)
                elif version == (2, 0):
                    self.shape, self.fortran, self.dtype = npy.read_array_header_2_0(f)
                else:
                    raise ValueError(f"npy format version {version}")
                header = f.tell()
        except (ValueError, SyntaxError, TypeError, zipfile.BadZipFile, zlib.error, OSError, EOFError,
                NotImplementedError, RuntimeError):
            raise CheckpointError(f"{self.where} is not a readable .npy array (bad header)") from None
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        self.needed = header + self.nbytes

    def check_size(self) -> None:
        """The zip entry's declared (uncompressed) size must be exactly header + array:
        zipfile never inflates a member past its declared size, so this bounds what
        reading it can produce, whatever its compression ratio."""
        size = self.info.file_size
        if size > self.needed:
            raise CheckpointError(f"{self.where} declares {size} bytes, more than the {self.needed} "
                                  f"its array needs: refused unread (forged or padded)")
        if size < self.needed:
            raise CheckpointError(f"{self.where} holds {size} bytes, fewer than the {self.needed} "
                                  f"its array needs (truncated)")

    def read(self) -> np.ndarray:
        """The array (its header was checked in ``__init__``); to the member's end, where
        zipfile checks the CRC."""
        try:
            with self.zf.open(self.info) as f:
                a = npy.read_array(f, allow_pickle=False)
                f.read()
        except (ValueError, zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError) as e:
            what = "CRC mismatch" if "CRC" in str(e) else "unreadable data"
            raise CheckpointError(f"{self.where} is corrupt ({what})") from None
        return a


def _check_identity(path: Path, got, want: dict) -> None:
    """One line naming every identity field that differs, and how to match it."""
    if not isinstance(got, dict) or not isinstance(got.get("recipe"), dict):
        raise CheckpointError(f"{path}: checkpoint metadata has no valid 'identity' (network, recipe, dtype, seed)")
    if got.get("net") != want["net"]:
        raise CheckpointError(f"{path}: checkpoint was made for {_short(got.get('net'))}; this run is "
                              f"{want['net']} (resume from a checkpoint of {want['net']})")
    fields = [k for k in want if k not in ("net", "recipe")]
    pairs = [(k, got.get(k), want[k]) for k in fields if got.get(k) != want[k]]
    for k in sorted(set(got) - set(want)):
        pairs.append((k, got[k], None))
    g_recipe, w_recipe = got["recipe"], want["recipe"]
    for k in list(w_recipe) + sorted(set(g_recipe) - set(w_recipe)):
        if g_recipe.get(k) != w_recipe.get(k):
            pairs.append((k, g_recipe.get(k), w_recipe.get(k)))
    if not pairs:
        return
    more = f" (+{len(pairs) - 3} more)" if len(pairs) > 3 else ""
    made = ", ".join(f"{k} {_short(g)}" for k, g, _ in pairs[:3]) + more
    asks = ", ".join(f"{k} {_short(w)}" for k, _, w in pairs[:3]) + more
    flags = [f"{FLAGS[k]} {g}" if g is not None else f"no {FLAGS[k]}" for k, g, _ in pairs if k in FLAGS]
    fix = (f"resume with {' '.join(flags)}" if len(flags) == len(pairs)
           else "the recipe differs: start a new run without --resume")
    raise CheckpointError(f"{path}: checkpoint was made with {made}; this run asks for {asks} ({fix})")


def _check_history(path: Path, history, epoch: int) -> None:
    if not isinstance(history, list) or len(history) != epoch:
        n = len(history) if isinstance(history, list) else _short(history)
        raise CheckpointError(f"{path}: checkpoint metadata 'history' has {n} rows for its {epoch} finished epochs")
    for i, row in enumerate(history, 1):
        bad = None
        if not isinstance(row, dict) or row.get("epoch") != i or not _is_int(row.get("epoch")):
            bad = "epoch"
        else:
            bad = next((k for k in ROW_NUMBERS if not _is_number(row.get(k))), None)
            bad = bad or next((f"{s}.{k}" for s in ("scratch", "torch") for k in SIDE_METRICS
                               if not isinstance(row.get(s), dict) or not _is_number(row[s].get(k))), None)
            bad = bad or next((k for k in ("worst_tensor", "worst_param") if not isinstance(row.get(k), str)), None)
        if bad:
            raise CheckpointError(f"{path}: checkpoint metadata 'history' row {i} has no valid '{bad}'")


def _check_meta(path: Path, meta, identity: dict, expected: ExpectedState) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an nn-parity checkpoint (no '{FORMAT}' header)")
    for k in META_FIELDS:
        if k not in meta:
            raise CheckpointError(f"{path}: checkpoint metadata has no '{k}' (damaged, or not written by "
                                  f"nnparity run --save-every)")
    unknown = sorted(set(meta) - set(META_FIELDS))
    if unknown:
        raise CheckpointError(f"{path}: checkpoint metadata has an unknown field {_short(unknown[0])}")
    _check_identity(path, meta["identity"], identity)
    epoch = meta["epoch"]
    if not _is_int(epoch) or epoch < 0:
        raise CheckpointError(f"{path}: checkpoint metadata 'epoch' is {_short(epoch)}, not a whole number >= 0")
    if epoch > expected.epochs:
        raise CheckpointError(f"{path}: checkpoint has {epoch} finished epochs; this run plans {expected.epochs}: "
                              f"ask for --epochs {epoch} or more")
    _check_history(path, meta["history"], epoch)
    steps = meta["step_count"]
    if not _is_int(steps) or steps < epoch:
        raise CheckpointError(f"{path}: checkpoint metadata 'step_count' is {_short(steps)}, "
                              f"not a whole number >= its {epoch} epochs")
    drift = meta["step_drift"]
    if (not isinstance(drift, list) or len(drift) > steps
            or any(not isinstance(d, list) or len(d) != 2 or d[0] != i or not _is_int(d[0]) or not _is_number(d[1])
                   for i, d in enumerate(drift, 1))):
        raise CheckpointError(f"{path}: checkpoint metadata 'step_drift' is not a list of [step, drift] "
                              f"pairs for steps 1, 2, ... (at most {steps})")
    rng = meta["rng"]
    if not isinstance(rng, dict) or set(rng) != set(expected.generators):
        names = sorted(rng) if isinstance(rng, dict) else _short(rng)
        raise CheckpointError(f"{path}: checkpoint metadata 'rng' holds generators {names}; "
                              f"this run has {sorted(expected.generators)}")
    for name, cls in expected.generators.items():
        try:
            cls().state = rng[name]  # a scratch bit generator checks the state's kind and fields
        except (TypeError, ValueError, KeyError, OverflowError):
            raise CheckpointError(f"{path}: checkpoint metadata 'rng' state of {name!r} is not a valid "
                                  f"{cls.__name__} state") from None


def load(path, expected_identity: dict, expected: ExpectedState) -> tuple[dict, dict]:
    """Read and validate a checkpoint against the run that resumes it (``expected_state``);
    returns (meta, arrays by ``side/key``). Refuses, with one ``CheckpointError`` line, a
    checkpoint that the run could not continue exactly; no array is read before every
    member's declared shape, dtype and size has been checked."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint there (runs write one with --save-every K)")
    with _open_zip(path) as zf:
        members = _members(path, zf)
        if META not in members:
            raise CheckpointError(f"{path}: not an nn-parity checkpoint (no '{FORMAT}' header)")
        meta_member = _Member(path, zf, members.pop(META))
        if meta_member.dtype.kind != "U" or meta_member.shape != () or meta_member.nbytes > MAX_META_BYTES:
            raise CheckpointError(f"{path}: not an nn-parity checkpoint (its metadata is not a JSON string of at "
                                  f"most {MAX_META_BYTES >> 20} MiB)")
        meta_member.check_size()
        try:
            meta = json.loads(str(meta_member.read()))
        except (ValueError, RecursionError):
            raise CheckpointError(f"{path}: not an nn-parity checkpoint (its metadata is not JSON)") from None
        _check_meta(path, meta, expected_identity, expected)

        want = expected.arrays(meta["epoch"])
        missing = [k for k in want if k not in members]
        unexpected = [k for k in members if k not in want]
        if missing or unexpected:
            parts = ([f"no array {_short(missing[0])}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")]
                     if missing else [])
            parts += ([f"unexpected array {_short(unexpected[0])}"
                       + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else "")] if unexpected else [])
            raise CheckpointError(f"{path}: checkpoint arrays do not match {expected_identity['net']} as this run "
                                  f"builds it: {'; '.join(parts)} (was the network changed? start a new run)")
        opened = {}
        for key in want:  # every header, before any array is read
            m = _Member(path, zf, members[key])
            shape, dtype = want[key]
            if m.shape != shape:
                raise CheckpointError(f"{path}: checkpoint array {key} has shape {m.shape}; this run builds {shape}")
            if m.dtype != dtype:
                raise CheckpointError(f"{path}: checkpoint array {key} is {_dtype_name(m.dtype)}; this run builds "
                                      f"{_dtype_name(dtype)} (refused, not cast: a cast changes the weights)")
            m.check_size()
            opened[key] = m
        arrays = {}
        for key, m in opened.items():
            a = arrays[key] = m.read()
            if a.dtype.kind in "fc":
                bad = ~np.isfinite(a)
                if bad.any():
                    first = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(bad)[0]), a.shape))
                    raise CheckpointError(f"{path}: checkpoint array {key} holds {int(bad.sum())} NaN or infinite "
                                          f"values (first at {first}): resume from an earlier checkpoint")
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
