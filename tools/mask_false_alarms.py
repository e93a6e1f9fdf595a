"""Measure the false-alarm rate of ``nnparity.check_mask_statistics`` on a correct dropout.

    python tools/mask_false_alarms.py [runs]

A correct inverted dropout (torch's p = 0.2, one fresh draw per element) is checked with
``runs`` seeds at alpha = 0.05 and at the default 1e-9; the Chernoff bound says each test
rejects with probability at most alpha. Prints the rejections per test.
"""

import collections
import sys

import numpy as np

from nnparity.training.masks import ALPHA, check_mask_statistics


class Dropout:
    def __init__(self, p, seed):
        self.p, self.training, self.rng = p, True, np.random.default_rng(seed)

    def forward(self, x):
        self.mask = self.rng.random(x.shape) >= self.p
        return x * self.mask / (1 - self.p)

    def backward(self, dy):
        return dy * self.mask / (1 - self.p)


def main(runs: int = 1000) -> None:
    for alpha in (0.05, ALPHA):
        rejected = collections.Counter()
        for s in range(runs):
            r = check_mask_statistics(Dropout(0.2, s), p=0.2, seed=s, input_shape=(16, 8), draws=8, alpha=alpha,
                                      raise_on_failure=False)
            for name, ok, _ in r.tests:
                rejected[name] += not ok
        print(f"alpha {alpha:g}, {runs} runs: " + ", ".join(f"{k} {v}" for k, v in rejected.items()))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
