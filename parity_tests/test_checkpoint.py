"""A corpus of bad checkpoints, each made from a real small one: every one is refused
with a single line naming the problem (exit status 2), before the run loads data,
checks parity or measures the drift envelope, and the forged-size ones without
inflating or allocating what their headers or zip entries declare."""

from __future__ import annotations

import io
import json
import pickle
import struct
import tracemalloc
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy

import nnparity.core.data
import nnparity.training.drift
import nnparity.cli.run
from nnparity.training import checkpoint
from nnparity.training.checkpoint import CheckpointError
from nnparity.cli.main import main
from nnparity.training.networks import get
from nnparity.training.train import Training

NET = "mlp16"
TINY = ["--train-size", "200", "--test-size", "100", "--no-progress", "--epochs", "2"]
BOMB_BYTES = 1 << 30  # what the zip bomb inflates to (it is ~1 MB on disk)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A real checkpoint: mlp16, float64, 2 epochs on 200 images."""
    out = tmp_path_factory.mktemp("base")
    assert main(["run", NET, "--out", str(out), *TINY, "--save-every", "1", "--parity-steps", "0",
                 "--envelope-steps", "0"]) == 0
    return out / NET / checkpoint.FILE_NAME


def read(path):
    """(meta, arrays) of a trusted checkpoint, without validation."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(str(arrays.pop("meta"))), arrays


def write(path, meta, arrays, **extra):
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays, **extra)
    return path


def mutated(meta_change=None, arrays_change=None):
    """A builder: the base checkpoint with its metadata and/or arrays changed in place."""
    def build(base, tmp):
        meta, arrays = read(base)
        if meta_change:
            meta_change(meta)
        if arrays_change:
            arrays_change(arrays)
        return write(tmp / "checkpoint.npz", meta, arrays)
    return build


def npy_bytes(array=None, *, descr="<f8", shape=None, data=b"") -> bytes:
    """An .npy file: of ``array``, or a bare header declaring ``shape`` followed by ``data``."""
    buf = io.BytesIO()
    if array is not None:
        npy.write_array(buf, array, allow_pickle=False)
    else:
        npy.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
        buf.write(data)
    return buf.getvalue()


def write_zip(path, members):
    """A zip archive written by hand, so that an entry may be what zipfile would never
    write: ``members`` is [(name, method, stored bytes, crc32, declared size)]."""
    out, central = bytearray(), bytearray()
    for name, method, payload, crc, size in members:
        fname = name.encode()
        offset = len(out)
        out += struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, method, 0, 0x21, crc, len(payload), size,
                           len(fname), 0) + fname + payload
        central += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, method, 0, 0x21, crc, len(payload),
                               size, len(fname), 0, 0, 0, 0, 0o644 << 16, offset) + fname
    out += central + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                                 len(out), 0)
    Path(path).write_bytes(bytes(out))
    return path


def stored(name, data: bytes):
    return (name, zipfile.ZIP_STORED, data, zlib.crc32(data), len(data))


def deflated_zeros(name, head: bytes, n_zeros: int):
    """``head`` then ``n_zeros`` zero bytes, deflated (1 KB per MiB of zeros): a zip bomb.
    Built from one compressed MiB repeated (a full flush makes each copy independent)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    mib = b"\0" * (1 << 20)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    seg = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    assert n_zeros % len(mib) == 0
    crc = zlib.crc32(head)
    for _ in range(n_zeros // len(mib)):
        crc = zlib.crc32(mib, crc)
    payload = first + seg * (n_zeros // len(mib)) + c.flush(zlib.Z_FINISH)
    return name, zipfile.ZIP_DEFLATED, payload, crc, len(head) + n_zeros


def rezipped(replace: dict, add=()):
    """A builder: the base checkpoint's zip entries, some replaced by hand-made ones."""
    def build(base, tmp):
        with zipfile.ZipFile(base) as zf:
            entries = [replace[i.filename](zf.read(i.filename)) if i.filename in replace
                       else stored(i.filename, zf.read(i.filename)) for i in zf.infolist()]
        return write_zip(tmp / "checkpoint.npz", entries + [a() for a in add])
    return build


def other_network(identity_too: bool):
    """A builder: linear10's arrays (untrained), under the base's metadata or its own."""
    def build(base, tmp):
        net = get("linear10")
        t = Training(net, net.recipe, None, "float64", 0)
        if identity_too:
            ident = {"net": "linear10", "dtype": "float64", "seed": 0,
                     "recipe": {k: v for k, v in net.recipe.as_dict().items() if k != "epochs"}}
            return checkpoint.save(tmp / "checkpoint.npz", t, ident)
        meta, _ = read(base)
        arrays = {f"{s.name}/{k}": np.array(v) for s in t.sides for k, v in s.state().items()}
        return write(tmp / "checkpoint.npz", meta, arrays)
    return build


def as_is(base, tmp):
    return base


def raw_file(content):
    def build(base, tmp):
        p = tmp / "checkpoint.npz"
        p.write_bytes(content(base) if callable(content) else content)
        return p
    return build


def set_item(key, value):
    return lambda d: d.__setitem__(key, value)


def delete(key):
    return lambda d: d.pop(key)


def set_element(key, index, value):
    def change(arrays):
        arrays[key] = arrays[key].copy()
        arrays[key][index] = value
    return change


@dataclass
class Case:
    name: str
    build: object          # (base checkpoint, tmp dir) -> path of the bad checkpoint
    expected: str          # in the one-line message
    args: tuple = ()       # extra run options (the run that resumes)


W1 = "scratch/param/fc1.weight"
CASES = [
    # the tester's bullets (issue 12, section 3)
    Case("wrong-shape", mutated(arrays_change=lambda a: a.__setitem__(W1, np.zeros((32, 784)))),
         f"checkpoint array {W1} has shape (32, 784); this run builds (16, 784)"),
    Case("another-networks-arrays", other_network(identity_too=False),
         "checkpoint arrays do not match mlp16 as this run builds it"),
    Case("no-identity", mutated(delete("identity")), "metadata has no 'identity'"),
    Case("no-rng", mutated(delete("rng")), "metadata has no 'rng'"),
    Case("no-step-drift", mutated(delete("step_drift")), "metadata has no 'step_drift'"),
    Case("string-epoch", mutated(set_item("epoch", "2")), "'epoch' is '2', not a whole number >= 0"),
    Case("negative-epoch", mutated(set_item("epoch", -1)), "'epoch' is -1, not a whole number >= 0"),
    Case("npy-renamed-npz", raw_file(lambda base: npy_bytes(np.zeros((16, 784)))),
         "a single .npy array, not an nn-parity checkpoint"),
    Case("huge-npy-header", rezipped({f"{W1}.npy": lambda _: stored(f"{W1}.npy", npy_bytes(shape=(10 ** 11,)))}),
         f"checkpoint array {W1} has shape (100000000000,); this run builds (16, 784)"),
    Case("zip-bomb", rezipped({f"{W1}.npy": lambda _: deflated_zeros(
        f"{W1}.npy", npy_bytes(shape=(BOMB_BYTES // 8,)), BOMB_BYTES)}),
         f"checkpoint array {W1} has shape ({BOMB_BYTES // 8},); this run builds (16, 784)"),
    Case("float32-in-float64", mutated(arrays_change=lambda a: a.update(
        {k: v.astype(np.float32) for k, v in a.items()})),
         "is float32; this run builds float64 (refused, not cast"),
    Case("nan-weight", mutated(arrays_change=set_element("torch/param/fc2.weight", (3, 4), np.nan)),
         "checkpoint array torch/param/fc2.weight holds 1 NaN or infinite values (first at (3, 4))"),
    Case("more-epochs-than-planned", as_is,
         "checkpoint has 2 finished epochs; this run plans 1: ask for --epochs 2 or more", ("--epochs", "1")),
    # more of the same kinds
    Case("lr-differs", as_is, "checkpoint was made with lr 1.0; this run asks for lr 0.2 (resume with --lr 1.0)",
         ("--lr", "0.2")),
    Case("seed-differs", as_is, "checkpoint was made with seed 0; this run asks for seed 5 (resume with --seed 0)",
         ("--seed", "5")),
    Case("dtype-differs", as_is, "checkpoint was made with dtype 'float64'; this run asks for dtype 'float32'",
         ("--dtype", "float32")),
    Case("train-size-differs", as_is, "checkpoint was made with train_size 200; this run asks for train_size 100 "
         "(resume with --train-size 200)", ("--train-size", "100")),
    Case("made-on-all-images", mutated(lambda m: m["identity"]["recipe"].__setitem__("train_size", None)),
         "checkpoint was made with train_size None; this run asks for train_size 200 (resume with no --train-size)"),
    Case("another-networks-checkpoint", other_network(identity_too=True),
         "checkpoint was made for 'linear10'; this run is mlp16"),
    Case("recipe-changed", mutated(lambda m: m["identity"]["recipe"].__setitem__("momentum", 0.9)),
         "checkpoint was made with momentum 0.9; this run asks for momentum 0.0 (the recipe differs"),
    Case("inf-weight", mutated(arrays_change=set_element("scratch/param/fc3.bias", (7,), -np.inf)),
         "checkpoint array scratch/param/fc3.bias holds 1 NaN or infinite values (first at (7,))"),
    Case("big-endian", mutated(arrays_change=lambda a: a.update({k: v.astype(">f8") for k, v in a.items()})),
         "is float64 (big-endian); this run builds float64"),
    Case("object-array", lambda base, tmp: write(tmp / "checkpoint.npz", read(base)[0], {
        **read(base)[1], "scratch/param/fc1.bias": np.array([object()] * 16, dtype=object)}),
         "checkpoint array scratch/param/fc1.bias is object; this run builds float64"),
    Case("missing-array", mutated(arrays_change=delete("torch/param/fc3.bias")), "no array 'torch/param/fc3.bias'"),
    Case("extra-array", mutated(arrays_change=lambda a: a.__setitem__("scratch/param/fc4.weight", np.zeros(3))),
         "unexpected array 'scratch/param/fc4.weight'"),
    Case("unexpected-member", rezipped({}, add=[lambda: stored("notes.txt", b"hello")]),
         "unexpected member 'notes.txt'"),
    Case("padded-member", rezipped({f"{W1}.npy": lambda data: stored(f"{W1}.npy", data + b"\0" * 4096)}),
         "declares 104576 bytes, more than the 100480 its array needs"),
    Case("padded-zip-bomb", rezipped({f"{W1}.npy": lambda data: deflated_zeros(f"{W1}.npy", data, BOMB_BYTES)}),
         f"declares {100480 + BOMB_BYTES} bytes, more than the 100480 its array needs"),
    Case("short-member", rezipped({f"{W1}.npy": lambda data: stored(f"{W1}.npy", data[:-8])}),
         "holds 100472 bytes, fewer than the 100480 its array needs"),
    Case("pickle", raw_file(pickle.dumps({"weights": [1.0, 2.0]})), "a Python pickle"),
    Case("not-a-zip", raw_file(b"not a zip at all"), "corrupt or not an nn-parity checkpoint"),
    Case("truncated-zip", raw_file(lambda base: base.read_bytes()[:len(base.read_bytes()) // 2]),
         "corrupt or not an nn-parity checkpoint"),
    Case("no-metadata", lambda base, tmp: np.savez(tmp / "checkpoint.npz", weights=np.ones(3)) or
         tmp / "checkpoint.npz", "not an nn-parity checkpoint (no 'nn-parity checkpoint v1' header)"),
    Case("metadata-not-json", lambda base, tmp: np.savez(tmp / "checkpoint.npz", **read(base)[1],
                                                         meta=np.array("{not json")) or tmp / "checkpoint.npz",
         "its metadata is not JSON"),
    Case("huge-metadata-header", rezipped({"meta.npy": lambda _: stored("meta.npy", npy_bytes(
        descr="<U100000000", shape=()))}), "its metadata is not a JSON string of at most 64 MiB"),
    Case("bool-epoch", mutated(set_item("epoch", True)), "'epoch' is True, not a whole number >= 0"),
    Case("float-epoch", mutated(set_item("epoch", 2.0)), "'epoch' is 2.0, not a whole number >= 0"),
    Case("history-short", mutated(lambda m: m["history"].pop()), "'history' has 1 rows for its 2 finished epochs"),
    Case("history-row-without-metrics", mutated(lambda m: m["history"][1]["torch"].pop("test_accuracy")),
         "'history' row 2 has no valid 'torch.test_accuracy'"),
    Case("unknown-generator", mutated(set_item("rng", {"dropout.rng": {}})),
         "'rng' holds generators ['dropout.rng']; this run has []"),
    Case("step-drift-not-pairs", mutated(set_item("step_drift", [[1, 0.0], [5, 0.0]])),
         "'step_drift' is not a list of [step, drift] pairs"),
    Case("unknown-metadata-field", mutated(set_item("extra", 1)), "unknown field 'extra'"),
]


class _Spied(Exception):
    """Raised by a spy: the run got past the checkpoint to real work."""


@pytest.fixture
def no_work(monkeypatch):
    """Make data loading, step parity and the drift envelope fail loudly if reached."""
    calls = []

    def spy(what):
        def called(*a, **k):
            calls.append(what)
            raise _Spied(what)
        return called

    monkeypatch.setattr(nnparity.core.data, "load_mnist", spy("data loading"))
    monkeypatch.setattr(nnparity.cli.run, "run_check", spy("step parity"))
    monkeypatch.setattr(nnparity.training.drift, "measure_envelope", spy("drift envelope"))
    return calls


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_checkpoint_is_refused_in_one_line_before_any_work(case, base, tmp_path, capsys, no_work):
    bad = case.build(base, tmp_path)
    capsys.readouterr()
    out = tmp_path / "out"
    status = main(["run", NET, "--out", str(out), *TINY, *case.args, "--resume", str(bad)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("nnparity run: error: "), err
    assert case.expected in err, err
    assert "allow_pickle" not in err and "Traceback" not in err
    assert no_work == [] and not out.exists()  # refused before data, parity, envelope or any output


def test_the_good_checkpoint_passes_and_the_spies_see_work(base, tmp_path, no_work):
    """The corpus's control: unchanged, the base checkpoint loads (its arrays as saved),
    and resuming it gets to data loading (so the spies above would catch a late refusal)."""
    net = get(NET)
    recipe = net.recipe.replace(epochs=3, train_size=200, test_size=100)
    ident = {"net": NET, "dtype": "float64", "seed": 0,
             "recipe": {k: v for k, v in recipe.as_dict().items() if k != "epochs"}}
    meta, arrays = checkpoint.load(base, ident, checkpoint.expected_state(net, recipe, "float64", 0))
    saved_meta, saved = read(base)
    assert meta == saved_meta and arrays.keys() == saved.keys()
    assert all(np.array_equal(arrays[k], saved[k]) and arrays[k].dtype == saved[k].dtype for k in saved)
    with pytest.raises(_Spied, match="data loading"):
        main(["run", NET, "--out", str(tmp_path), *TINY, "--epochs", "3", "--resume", str(base)])


@pytest.mark.parametrize("name", ["zip-bomb", "huge-npy-header", "padded-zip-bomb", "huge-metadata-header"])
def test_forged_sizes_are_refused_from_the_header_without_allocating(name, base, tmp_path, monkeypatch):
    """The bombs declare 1 GiB (inflated from ~1 MB), 800 GB or 400 MB; the refusal must
    come from the declared header and zip entry size: under 1 MiB read from the archive,
    under 8 MiB allocated by Python and NumPy while loading (tracemalloc)."""
    case = next(c for c in CASES if c.name == name)
    bad = case.build(base, tmp_path)
    net = get(NET)
    recipe = net.recipe.replace(epochs=2, train_size=200, test_size=100)
    ident = {"net": NET, "dtype": "float64", "seed": 0,
             "recipe": {k: v for k, v in recipe.as_dict().items() if k != "epochs"}}
    expected = checkpoint.expected_state(net, recipe, "float64", 0)
    inflated = []
    real_read = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        data = real_read(self, n)
        inflated.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="refused unread|this run builds|at most 64 MiB"):
            checkpoint.load(bad, ident, expected)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(inflated) < 1 << 20, sum(inflated)
    assert peak < 8 << 20, peak


def test_cli_refuses_the_zip_bomb_in_one_line_with_status_2(base, tmp_path, cli_process):
    """The same through the real command (a process of its own): status 2, one stderr line."""
    bad = next(c for c in CASES if c.name == "zip-bomb").build(base, tmp_path)
    proc = cli_process.run(["run", NET, "--out", str(tmp_path / "o"), *TINY, "--resume", str(bad)])
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == "" and not (tmp_path / "o").exists()


def cnn18k_checkpoint(tmp_path, rng_change=None):
    """A cnn18k checkpoint after 0 epochs, saved by ``checkpoint.save`` from a Training:
    no momentum buffers yet, BatchNorm buffers and dropout generators present."""
    net = get("cnn18k")
    recipe = net.recipe.replace(train_size=48, test_size=32)
    ident = {"net": "cnn18k", "dtype": recipe.dtype, "seed": 0,
             "recipe": {k: v for k, v in recipe.as_dict().items() if k != "epochs"}}
    path = checkpoint.save(tmp_path / "checkpoint.npz", Training(net, recipe, None, recipe.dtype, 0), ident)
    if rng_change:
        meta, arrays = read(path)
        rng_change(meta["rng"])
        write(path, meta, arrays)
    return path, ident, checkpoint.expected_state(net, recipe, recipe.dtype, 0)


def test_cnn18k_checkpoint_before_any_step_loads(tmp_path):
    path, ident, expected = cnn18k_checkpoint(tmp_path)
    meta, arrays = checkpoint.load(path, ident, expected)
    assert meta["epoch"] == 0 and meta["rng"] and "scratch/buffer/bn1.running_var" in arrays
    assert not any("momentum_buffer" in k for k in arrays)


def test_cnn18k_checkpoint_with_a_forged_generator_state_is_refused(tmp_path):
    def forge(rng):
        name = sorted(rng)[0]
        rng[name]["state"] = {"state": "not a number", "inc": 1}
    path, ident, expected = cnn18k_checkpoint(tmp_path, forge)
    with pytest.raises(CheckpointError, match=r"'rng' state of '.+' is not a valid PCG64 state"):
        checkpoint.load(path, ident, expected)
