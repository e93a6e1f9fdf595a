"""Damaged, hostile and odd data files: every one ends in the correct data or in a clean
one-line ``DataError`` naming the file, never in another exception, an unbounded read,
a hang, or folders left behind.

The corpora are seeded samples of single-bit flips and truncations of the shipped gzip
files: the small t10k label file, a re-compressed partial copy of the test images
(so that a flip can also come out harmless on image data), and prefixes of the big files.
"""

import gzip
import os
import threading
import tracemalloc
import zlib
from urllib.error import URLError

import numpy as np
import pytest

from nnparity.core import data
from nnparity.core.data import DataError, read_idx, read_mnist_file

SEED = 12
LABELS = "t10k-labels-idx1-ubyte.gz"


def flipped(blob: bytes, bit: int) -> bytes:
    raw = bytearray(blob)
    raw[bit // 8] ^= 1 << (bit % 8)
    return bytes(raw)


def outcome(path, read, genuine: np.ndarray) -> str:
    """'correct' when ``read(path)`` gives exactly the genuine array, 'error' for a clean
    DataError that names the file on one line; anything else fails the test."""
    try:
        arr = read(path)
    except DataError as e:
        msg = str(e)
        assert str(path) in msg and "\n" not in msg, msg
        return "error"
    np.testing.assert_array_equal(arr, genuine)  # data came back: it must be the genuine data
    return "correct"


@pytest.fixture(scope="module")
def shipped_labels():
    blob = (data.SHIPPED_DIR / LABELS).read_bytes()
    return blob, read_mnist_file(data.SHIPPED_DIR / LABELS, "test_labels")


def test_bit_flips_of_the_shipped_test_labels(tmp_path, shipped_labels):
    blob, genuine = shipped_labels
    bits = np.random.default_rng(SEED).choice(len(blob) * 8, 400, replace=False)
    path = tmp_path / LABELS
    seen = {"correct": 0, "error": 0}
    for bit in bits:
        path.write_bytes(flipped(blob, int(bit)))
        # verify=True: a flip that leaves data must leave MNIST's checksum intact too
        seen[outcome(path, lambda p: read_mnist_file(p, "test_labels"), genuine)] += 1
    assert seen["error"] > 0  # the corpus does reach the damaged-stream paths


def test_flips_in_the_gzip_mtime_xfl_and_os_fields_are_harmless(tmp_path, shipped_labels):
    blob, genuine = shipped_labels
    path = tmp_path / LABELS
    for bit in range(4 * 8, 10 * 8):  # bytes 4-9 of a gzip header: MTIME, XFL, OS (RFC 1952)
        path.write_bytes(flipped(blob, bit))
        assert outcome(path, lambda p: read_mnist_file(p, "test_labels"), genuine) == "correct"


def test_truncations_of_the_shipped_test_labels(tmp_path, shipped_labels):
    blob, _ = shipped_labels
    cuts = {0, 1, 2, 9, 10, len(blob) - 8, len(blob) - 4, len(blob) - 1}
    cuts |= set(np.random.default_rng(SEED).choice(len(blob), 200, replace=False).tolist())
    path = tmp_path / LABELS
    for cut in sorted(cuts):
        path.write_bytes(blob[:cut])
        assert outcome(path, lambda p: read_mnist_file(p, "test_labels"), None) == "error", cut


def test_bit_flips_of_a_partial_copy_of_the_test_images(tmp_path):
    genuine = read_idx(data.SHIPPED_DIR / "t10k-images-idx3-ubyte.gz")[:40]
    raw = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in genuine.shape) + genuine.tobytes()
    blob = gzip.compress(raw, mtime=0)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    bits = np.random.default_rng(SEED).choice(len(blob) * 8, 300, replace=False)
    seen = {"correct": 0, "error": 0}
    for bit in bits:
        path.write_bytes(flipped(blob, int(bit)))
        seen[outcome(path, lambda p: read_idx(p, data.IMAGES_MAGIC), genuine)] += 1
    assert seen["error"] > 0


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                  "t10k-images-idx3-ubyte.gz"])
def test_flipped_and_cut_prefixes_of_the_big_shipped_files(tmp_path, name):
    """A prefix is always incomplete, so every sample must be a clean error; the flips reach
    the deflate decoder's errors on real image and label streams."""
    prefix = (data.SHIPPED_DIR / name).read_bytes()[:16384]
    rng = np.random.default_rng([SEED, len(name)])
    path = tmp_path / name
    samples = [flipped(prefix, int(b)) for b in rng.choice(len(prefix) * 8, 60, replace=False)]
    samples += [prefix[:int(c)] for c in rng.choice(len(prefix), 20, replace=False)]
    for blob in samples:
        path.write_bytes(blob)
        assert outcome(path, read_idx, None) == "error"


# --- gzip bombs: never inflate more than the header declares --------------------------
class CountingReader:
    """Wraps the decompressed stream and counts the bytes the reader takes from it."""

    def __init__(self, stream):
        self.stream, self.taken = stream, 0

    def read(self, n=-1):
        chunk = self.stream.read(n)
        self.taken += len(chunk)
        return chunk


def labels_header(count: int) -> bytes:
    return (2049).to_bytes(4, "big") + count.to_bytes(4, "big")


def bomb(head: bytes, zeros: int) -> bytes:
    """One gzip member: ``head`` then ``zeros`` zero bytes, compressed about 1000:1."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container
    parts = [c.compress(head)] + [c.compress(bytes(1 << 20)) for _ in range(zeros >> 20)]
    return b"".join(parts + [c.flush()])


def read_counting(path, monkeypatch):
    readers = []

    def counting_gunzip(f):
        readers.append(CountingReader(gzip.GzipFile(fileobj=f, mode="rb")))
        return readers[-1]

    monkeypatch.setattr(data, "_gunzip", counting_gunzip)
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as err:
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return str(err.value), readers[0].taken, peak


BOMB_ZEROS = 64 << 20  # 64 MiB of zeros, about 64 KB compressed


def test_a_gzip_bomb_is_refused_after_reading_only_what_its_header_declares(tmp_path, monkeypatch):
    path = tmp_path / "bomb-labels.gz"
    path.write_bytes(bomb(labels_header(10), BOMB_ZEROS))  # header: 10 labels, 18 bytes
    assert path.stat().st_size < BOMB_ZEROS // 500
    msg, taken, peak = read_counting(path, monkeypatch)
    assert f"{path}: too long" in msg
    assert taken == 18 + 1  # the declared size and one byte to see there is more
    assert peak < 4 << 20, peak  # the library's read-ahead included: nowhere near 64 MiB


def test_a_multi_member_gzip_bomb_is_refused_as_early(tmp_path, monkeypatch):
    path = tmp_path / "bomb-labels.gz"
    member = bomb(b"", 16 << 20)
    path.write_bytes(gzip.compress(labels_header(10) + bytes(10), mtime=0) + member * 4)
    msg, taken, peak = read_counting(path, monkeypatch)
    assert f"{path}: too long" in msg and taken == 19 and peak < 4 << 20, (msg, taken, peak)


def test_a_header_declaring_more_than_the_cap_is_refused_before_inflating(tmp_path, monkeypatch):
    path = tmp_path / "huge-images.gz"
    dims = (0xFFFFFFFF, 28, 28)  # 3.4e12 bytes: the largest image count a header can hold
    head = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(bomb(head, BOMB_ZEROS))
    msg, taken, peak = read_counting(path, monkeypatch)
    assert f"{path}: its header {dims} declares" in msg and "more than the" in msg
    assert taken == len(head) and peak < 4 << 20, (taken, peak)


# --- files that are not regular files -------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_in_the_data_folder_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "train-images-idx3-ubyte.gz"  # the first file the loader opens
    os.mkfifo(fifo)
    result = {}

    def load():
        try:
            data.load_mnist(tmp_path, download=False)
        except Exception as e:  # reported below
            result["error"] = e

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=20)
    if reader.is_alive():  # blocked in open(): give it a writer so the thread can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=5)
        pytest.fail("loading a folder holding a FIFO hung (waiting for a writer)")
    err = result.get("error")
    assert isinstance(err, DataError), repr(err)
    assert str(err) == f"{fifo}: is a FIFO (named pipe), not a regular file; put the MNIST files " \
                       "themselves in the data folder"


def test_a_character_device_is_refused(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero on this platform")
    with pytest.raises(DataError, match=r"^/dev/zero: is a character device, not a regular file"):
        read_idx("/dev/zero")


# --- a failed download leaves nothing behind ------------------------------------------
def tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def offline_like_torchvision(target):
    """What torchvision's MNIST download does offline: create MNIST/raw, maybe leave a
    partial file, then raise its multi-line RuntimeError."""
    raw = target / "MNIST" / "raw"
    os.makedirs(raw, exist_ok=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b partial")
    raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n"
                       "Tried https://ossci-datasets.s3.amazonaws.com/mnist/, got:\n"
                       "<urlopen error [Errno -3] Temporary failure in name resolution>\n")


def check_download_error(err, folder):
    msg = str(err)
    assert "\n" not in msg, msg
    assert f"downloading it into {folder} failed (RuntimeError: Error downloading " \
           "train-images-idx3-ubyte.gz: <urlopen error [Errno -3] Temporary failure in name resolution>)" in msg
    assert "--data-dir" in msg and "$NNPARITY_DATA_DIR" in msg and "NNPARITY_NO_DOWNLOAD=1" in msg


@pytest.mark.parametrize("existing", ["nothing", "the folder", "the folder and MNIST/raw"])
def test_a_failed_download_leaves_no_folders_or_files(tmp_path, monkeypatch, existing):
    monkeypatch.setattr(data, "_torchvision_download", offline_like_torchvision)
    monkeypatch.delenv(data.NO_DOWNLOAD_VAR, raising=False)
    folder = tmp_path / "typo" / "a" / "b" / "c"
    if existing != "nothing":
        folder.mkdir(parents=True)
    if existing == "the folder and MNIST/raw":
        (folder / "MNIST" / "raw").mkdir(parents=True)
        (folder / "MNIST" / "raw" / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    with pytest.raises(DataError) as err:
        data.load_mnist(folder)
    assert tree(tmp_path) == before
    check_download_error(err.value, folder)


def test_a_failed_download_through_torchvision_leaves_nothing(tmp_path, monkeypatch):
    """The same through torchvision's own code, its network fetch failing as offline."""
    import torchvision.datasets.mnist as tv_mnist

    def no_network(url, download_root, filename=None, md5=None, **kw):
        with open(os.path.join(download_root, filename or "partial"), "wb") as f:
            f.write(b"\x1f\x8b partial")
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", no_network)
    monkeypatch.delenv(data.NO_DOWNLOAD_VAR, raising=False)
    folder = tmp_path / "typo" / "a" / "b" / "c"
    with pytest.raises(DataError) as err:
        data.load_mnist(folder)
    assert tree(tmp_path) == []
    check_download_error(err.value, folder)
