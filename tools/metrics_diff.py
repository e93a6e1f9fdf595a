"""Compare two ``nnparity run`` output folders: metrics.json apart from its timing fields,
and per_batch.npz bit for bit.

    python tools/metrics_diff.py BEFORE/linear10 AFTER/linear10

Ignored in metrics.json, wherever they are: keys ending in ``seconds`` (times), ``command``
(holds the --out path) and ``peak_rss_mib`` (memory). Everything else must be equal:
floats compared exactly (JSON keeps every digit, ``repr``). Prints every difference
(path, before, after) and exits 1 if there is any, 0 if none.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

IGNORED = ("command", "peak_rss_mib")


def ignored(key: str) -> bool:
    return key.endswith("seconds") or key in IGNORED


def differences(a, b, path="") -> list:
    """(path, a, b) of every leaf where ``a`` and ``b`` differ, ignored keys left out."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if ignored(k):
                continue
            if k not in a or k not in b:
                out.append((f"{path}/{k}", a.get(k, "<missing>"), b.get(k, "<missing>")))
            else:
                out += differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [(f"{path} (length)", len(a), len(b))]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if type(a) is type(b) and a == b else [(path, a, b)]


def count_ignored(obj) -> int:
    if isinstance(obj, dict):
        return sum(1 if ignored(k) else count_ignored(v) for k, v in obj.items())
    if isinstance(obj, list):
        return sum(count_ignored(v) for v in obj)
    return 0


def main(argv=None) -> int:
    before, after = (Path(p) for p in (argv or sys.argv[1:]))
    a = json.loads((before / "metrics.json").read_text())
    b = json.loads((after / "metrics.json").read_text())
    diffs = differences(a, b)
    for path, x, y in diffs:
        print(f"metrics.json {path}: {x!r} -> {y!r}")
    print(f"metrics.json: {len(diffs)} differences ({count_ignored(a)} timing/command/memory fields ignored)")
    npz = [before / "per_batch.npz", after / "per_batch.npz"]
    if all(p.is_file() for p in npz):
        with np.load(npz[0], allow_pickle=False) as za, np.load(npz[1], allow_pickle=False) as zb:
            names = sorted(set(za.files) | set(zb.files))
            bad = [n for n in names if n not in za.files or n not in zb.files
                   or za[n].dtype != zb[n].dtype or za[n].tobytes() != zb[n].tobytes()]
        for n in bad:
            print(f"per_batch.npz {n}: differs")
        print(f"per_batch.npz: {len(bad)} of {len(names)} arrays differ (compared byte for byte)")
        diffs += bad
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
