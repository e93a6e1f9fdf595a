"""The MNIST loader: real files load and verify; every bad input gets a clear error
naming the file and the problem."""

import gzip
import re
import shutil

import numpy as np
import pytest

from nnparity.core import data
from nnparity.core.data import DataError, load_mnist, read_idx


def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_set(folder, n_train=6, n_test=4, n_train_labels=None, compress=True):
    """A tiny dataset in MNIST's format and file names (not MNIST: checksums differ)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n_train, 28, 28)), 2051),
        "train-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, n_train_labels or n_train), 2049),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n_test, 28, 28)), 2051),
        "t10k-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, n_test), 2049),
    }
    for name, raw in files.items():
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return folder


def test_shipped_mnist_loads_and_verifies(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == np.uint8
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_labels.shape == (60000,) and mnist.test_labels.shape == (10000,)
    assert mnist.train_labels[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]  # MNIST's well-known first labels
    assert set(np.unique(mnist.test_labels)) == set(range(10))


@pytest.mark.parametrize("compress", [True, False])
def test_reads_gzip_and_raw(tmp_path, compress):
    write_set(tmp_path, compress=compress)
    ds = load_mnist(tmp_path, verify=False, download=False)
    assert ds.train_images.shape == (6, 28, 28) and ds.test_labels.shape == (4,)


def test_missing_file(tmp_path):
    write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: file not found"):
        load_mnist(tmp_path, download=False)


def test_wrong_magic_number(tmp_path):
    write_set(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[0:4] = (2049).to_bytes(4, "big")  # a labels magic on the images file
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: wrong magic number 2049 \(expected 2051\)"):
        load_mnist(tmp_path, download=False)


def test_garbage_magic_number(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"\x00\x00\x01\x00" + bytes(20))
    with pytest.raises(DataError, match="wrong magic number 256"):
        read_idx(path)


@pytest.mark.parametrize("cut", [3, 10, 100])
def test_truncated_file(tmp_path, cut):
    write_set(tmp_path, compress=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-cut] if cut == 100 else path.read_bytes()[:cut])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: truncated"):
        load_mnist(tmp_path, download=False)


def test_truncated_gzip(tmp_path):
    write_set(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: .*(truncated|damaged)"):
        load_mnist(tmp_path, download=False)


def test_image_label_count_mismatch(tmp_path):
    write_set(tmp_path, n_train=6, n_train_labels=5)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: 5 labels, but train-images-idx3-ubyte\.gz "
                                        r"holds 6 images"):
        load_mnist(tmp_path, download=False)


def test_checksum_mismatch_on_a_corrupted_genuine_file(tmp_path):
    for f in data.SHIPPED_DIR.glob("*.gz"):
        shutil.copy(f, tmp_path / f.name)
    raw = bytearray(gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one label changed: structure intact, content not MNIST
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: checksum mismatch"):
        load_mnist(tmp_path, download=False)


def test_other_dataset_in_the_same_format_is_refused(tmp_path):
    write_set(tmp_path)  # valid IDX, right names, wrong content (as Fashion-MNIST would be)
    with pytest.raises(DataError, match="checksum mismatch.*another dataset"):
        load_mnist(tmp_path, download=False)


def test_lookup_order_data_dir_then_env_then_shipped(tmp_path, monkeypatch):
    a, b = write_set(tmp_path / "a", n_train=3), write_set(tmp_path / "b", n_train=5)
    monkeypatch.setenv(data.ENV_VAR, str(b))
    assert len(load_mnist(a, verify=False, download=False).train_labels) == 3
    assert len(load_mnist(None, verify=False, download=False).train_labels) == 5
    monkeypatch.delenv(data.ENV_VAR)
    assert data.data_source(None) == ("shipped copy", data.SHIPPED_DIR)


def test_empty_folder_without_download_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"MNIST not found in .* \(--data-dir\); pass --data-dir DIR or set "
                                        r"\$NNPARITY_DATA_DIR"):
        load_mnist(tmp_path, download=False)


def test_a_file_given_as_the_data_folder_is_refused_without_a_download(tmp_path, monkeypatch):
    def must_not_download(target):
        raise AssertionError(f"tried to download into {target}")

    monkeypatch.setattr(data, "_download", must_not_download)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"x")
    with pytest.raises(DataError, match=rf"^{path} \(--data-dir\): not a folder; pass --data-dir DIR"):
        load_mnist(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    def offline(target):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data, "_download", offline)
    with pytest.raises(DataError, match=r"downloading it into .* failed \(OSError: network is unreachable\)"):
        load_mnist(tmp_path / "empty")


def test_batches_are_fixed_by_seed_and_epoch():
    a, b = data.epoch_order(100, 0, 1), data.epoch_order(100, 0, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, data.epoch_order(100, 0, 2))
    assert not np.array_equal(a, data.epoch_order(100, 1, 1))
    sizes = [len(i) for i in data.batches(a, 32)]
    assert sizes == [32, 32, 32, 4]
