"""MNIST: a NumPy-only IDX reader with checksums, the dataset lookup, and batching.

Lookup order for the four files: ``--data-dir``, then ``$NNPARITY_DATA_DIR``,
then the copy shipped in the repository (``data/mnist``). When the folder in
use holds none of them and the machine is online,
``torchvision.datasets.MNIST(..., download=True)`` fetches them into it (into
``~/.cache/nnparity/mnist`` when neither was given and there is no shipped copy);
a download that fails removes every folder and file it created.
Every file is checked: magic number, dimensions, length, and the SHA-256 of its
uncompressed content, so a corrupt file or another dataset in the same format is refused with the file named.
Reading streams: the header first, then never more than the size it declares, so a
damaged header or a gzip bomb cannot make it inflate more; only regular files are
opened (a FIFO would block forever).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ENV_VAR = "NNPARITY_DATA_DIR"
NO_DOWNLOAD_VAR = "NNPARITY_NO_DOWNLOAD"  # set to 1 to never try a download
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "data" / "mnist"
CACHE_DIR = Path.home() / ".cache" / "nnparity" / "mnist"

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
# The most an IDX header may declare (MNIST's largest file is 47 MB): a damaged header
# is refused before anything is inflated, instead of reading up to a size it claims.
MAX_IDX_BYTES = 1 << 30
READ_CHUNK = 1 << 20  # bytes decompressed per read

# SHA-256 of the uncompressed files (their MD5s are the widely published ones).
FILES = {
    "train_images": ("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train_labels": ("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "test_images": ("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "test_labels": ("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}


class DataError(Exception):
    """A data file is missing, malformed or not the expected MNIST file."""


@dataclass(frozen=True)
class MNIST:
    """The four arrays, uint8 as stored: images (N, 28, 28), labels (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


def _open_regular(path: Path):
    """Open ``path`` for binary reading, refusing anything but a regular file.

    The open is non-blocking because a plain ``open`` of a FIFO waits for a writer
    forever; ``fstat`` on the opened descriptor (not a ``stat`` before it, which a
    swap of the file could outrun) then refuses FIFOs, devices and directories."""
    nonblocking = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, os.O_RDONLY | nonblocking | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected an IDX file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except OSError as e:  # e.g. a socket (ENXIO)
        raise DataError(f"{path}: cannot be opened ({e.strerror or e}); expected a regular IDX file") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise DataError(f"{path}: is a directory, expected an IDX file")
        if not stat.S_ISREG(mode):
            raise DataError(f"{path}: is {_file_kind(mode)}, not a regular file; "
                            "put the MNIST files themselves in the data folder")
        if nonblocking:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


def _gunzip(f):
    """The decompressed view of an open gzip file (a seam for tests that count inflated bytes)."""
    return gzip.GzipFile(fileobj=f, mode="rb")


def _read_upto(stream, n: int) -> bytes:
    """At most ``n`` bytes of ``stream`` (fewer at its end), read in bounded chunks: memory
    follows what the stream really holds, never a size a damaged header claims."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(READ_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _read_idx(path: Path, expected_magic: int | None) -> tuple[bytes, tuple[int, ...]]:
    """The uncompressed content of an IDX file (raw or gzip) and its dimensions.

    Streams: reads the header first, checks it, then reads exactly the size it declares
    plus one byte to tell "too long". So a gzip bomb, or a bit flip that makes the
    header claim more, never inflates more than the declared size (itself capped at
    ``MAX_IDX_BYTES``); any damage to the gzip stream becomes a ``DataError``."""
    with _open_regular(path) as f:
        compressed = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        try:
            return _read_idx_stream(_gunzip(f) if compressed else f, path, expected_magic)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            if not compressed:
                raise DataError(f"{path}: read error ({e})") from None
            raise DataError(f"{path}: not a readable gzip file ({e}); "
                            "the file is damaged or truncated: copy it again") from None


def _read_idx_stream(stream, path: Path, expected_magic: int | None) -> tuple[bytes, tuple[int, ...]]:
    head = _read_upto(stream, 4)
    if len(head) < 4:
        raise DataError(f"{path}: truncated: {len(head)} bytes, shorter than an IDX header")
    magic = int.from_bytes(head, "big")
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC) or (expected_magic and magic != expected_magic):
        want = expected_magic or f"{IMAGES_MAGIC} (images) or {LABELS_MAGIC} (labels)"
        raise DataError(f"{path}: wrong magic number {magic} (expected {want}); "
                        "this is not an MNIST IDX file of that kind")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    head += _read_upto(stream, header - 4)
    if len(head) < header:
        raise DataError(f"{path}: truncated: {len(head)} bytes, shorter than its {header}-byte header")
    dims = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)
    if expected > MAX_IDX_BYTES:
        raise DataError(f"{path}: its header {dims} declares {expected} bytes, more than the "
                        f"{MAX_IDX_BYTES} this reader accepts (MNIST's largest file is 47 MB); "
                        "the file is damaged or not MNIST")
    raw = head + _read_upto(stream, expected - header + 1)
    if len(raw) < expected:
        raise DataError(f"{path}: truncated: {len(raw)} bytes, but its header {dims} says {expected}")
    if len(raw) > expected:
        raise DataError(f"{path}: too long: more than the {expected} bytes its header {dims} says")
    return raw, dims


def read_idx(path, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) of unsigned bytes into a uint8 array.

    Images (magic 2051) come back as (count, rows, cols), labels (magic 2049) as
    (count,). Raises ``DataError`` naming the file for a wrong magic number, a
    file shorter or longer than its header says, a damaged gzip stream, or a path
    that is not a regular file.
    """
    raw, dims = _read_idx(Path(path), expected_magic)
    return _as_array(raw, dims)


def _as_array(raw: bytes, dims: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.uint8, offset=len(raw) - math.prod(dims)).reshape(dims)


def read_mnist_file(path, key: str, verify: bool = True) -> np.ndarray:
    """One of the four MNIST files (``key`` as in ``FILES``) as an array; with ``verify``,
    refused unless the SHA-256 of its uncompressed content is MNIST's."""
    path = Path(path)
    raw, dims = _read_idx(path, IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC)
    if verify:
        _verify(path, key, raw)
    return _as_array(raw, dims)


def _verify(path: Path, key: str, raw: bytes) -> None:
    digest, expected = hashlib.sha256(raw).hexdigest(), FILES[key][1]
    if digest != expected:
        raise DataError(f"{path}: checksum mismatch: SHA-256 of the uncompressed content is "
                        f"{digest[:16]}..., MNIST's is {expected[:16]}...; the file is corrupt or "
                        "another dataset: replace it with the genuine file")


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name,
                      directory / "MNIST" / "raw" / f"{name}.gz", directory / "MNIST" / "raw" / name):
        if candidate.exists():
            return candidate
    return None


def _load_dir(directory: Path, verify: bool) -> MNIST:
    arrays, raws = {}, {}
    for key, (name, _) in FILES.items():
        path = _find(directory, name)
        if path is None:
            raise DataError(f"{directory / (name + '.gz')}: file not found "
                            f"(looked for {name}.gz and {name}, also under MNIST/raw/)")
        raw, dims = _read_idx(path, IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC)
        raws[key], arrays[key] = (path, raw), _as_array(raw, dims)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DataError(f"{raws[split + '_labels'][0]}: {len(labels)} labels, but "
                            f"{raws[split + '_images'][0].name} holds {len(images)} images")
        if images.shape[1:] != (28, 28):
            raise DataError(f"{raws[split + '_images'][0]}: images are {images.shape[1:]}, expected 28x28")
    if verify:
        for key, (path, raw) in raws.items():
            _verify(path, key, raw)
    return MNIST(**arrays, source=str(directory))


def _has_any(directory: Path) -> bool:
    return any(_find(directory, name) for name, _ in FILES.values())


def data_source(data_dir=None) -> tuple[str, Path]:
    """The folder to load from, and why: ``--data-dir``, else the environment variable,
    else the shipped copy."""
    if data_dir:
        return "--data-dir", Path(data_dir)
    if os.environ.get(ENV_VAR):
        return f"${ENV_VAR}", Path(os.environ[ENV_VAR])
    return "shipped copy", SHIPPED_DIR


def load_mnist(data_dir=None, *, verify: bool = True, download: bool = True) -> MNIST:
    """Load MNIST as uint8 arrays.

    A folder that was asked for (``data_dir``, else ``$NNPARITY_DATA_DIR``) is
    authoritative: its files are loaded, and if it holds none of them they are
    downloaded into it (when ``download`` and the machine is online). With
    neither, the shipped copy is used, else a download into ``~/.cache``. A download
    that fails removes every folder and file it created.
    """
    why, directory = data_source(data_dir)
    if directory.exists() and not directory.is_dir():
        raise DataError(f"{directory} ({why}): not a folder; pass --data-dir DIR or set ${ENV_VAR} "
                        "to the folder holding the four MNIST files, not to a file")
    if directory.is_dir() and _has_any(directory):
        return _load_dir(directory, verify)
    target = directory if why != "shipped copy" else CACHE_DIR
    if target != directory and target.is_dir() and _has_any(target):
        return _load_dir(target, verify)
    where = f"{directory} ({why})" + (f" or {target}" if target != directory else "")
    hint = f"pass --data-dir DIR or set ${ENV_VAR} to a folder holding the four MNIST files"
    if not download or os.environ.get(NO_DOWNLOAD_VAR, "") not in ("", "0"):
        raise DataError(f"MNIST not found in {where}; {hint}")
    try:
        _download(target)
    except Exception as e:  # no network, no torchvision, unwritable folder
        raise DataError(f"MNIST not found in {where}, and downloading it into {target} failed "
                        f"({type(e).__name__}: {_one_line(e)}); {hint} "
                        f"(set {NO_DOWNLOAD_VAR}=1 to never try a download)") from None
    return _load_dir(target, verify)


def _one_line(e: Exception) -> str:
    """An exception's message on one line: torchvision's spans several (a header, then
    one "Tried MIRROR, got:" pair per mirror); keep its first and last lines."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else "".join(lines)


def _download(target: Path) -> None:
    """Fetch the four files into ``target/MNIST/raw`` with torchvision. If that fails
    (offline, no torchvision, unwritable folder), remove every folder and file it
    created, so that a mistyped ``--data-dir`` leaves nothing behind."""
    raw_dir = target / "MNIST" / "raw"
    first_new = None  # the topmost folder of raw_dir's chain that does not exist yet
    for folder in (raw_dir, *raw_dir.parents):
        if folder.exists():
            break
        first_new = folder
    before = None if first_new is not None else set(os.listdir(raw_dir))
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
        _torchvision_download(target)
    except BaseException:
        if first_new is not None:
            shutil.rmtree(first_new, ignore_errors=True)
        else:  # raw_dir was already there: remove only what this download put in it
            for name in set(os.listdir(raw_dir)) - before:
                entry = raw_dir / name
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        raise


def _torchvision_download(target: Path) -> None:
    import torchvision  # only needed for the online fallback

    torchvision.datasets.MNIST(str(target), train=True, download=True)
    torchvision.datasets.MNIST(str(target), train=False, download=True)


# --- preprocessing and batches --------------------------------------------------------
def to_inputs(images: np.ndarray, dtype, flat: bool) -> np.ndarray:
    """uint8 (N, 28, 28) -> pixels / 255 as ``dtype``: (N, 784) row-major when ``flat``,
    else (N, 1, 28, 28)."""
    x = images.astype(dtype)
    x /= 255
    return x.reshape(len(images), -1) if flat else x.reshape(len(images), 1, 28, 28)


def subset(n_total: int, size: int | None, seed: int, stream: str) -> np.ndarray | None:
    """Indices of a seeded random subset of ``size`` of ``n_total`` (None = use all)."""
    if size is None or size >= n_total:
        return None
    return np.sort(np.random.default_rng([seed, _stream_id(stream)]).choice(n_total, size, replace=False))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a permutation fixed by (seed, epoch)."""
    return np.random.default_rng([seed, _stream_id("batches"), epoch]).permutation(n)


def batches(order: np.ndarray, batch_size: int):
    """Index arrays of consecutive minibatches; the last one may be smaller."""
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _stream_id(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
