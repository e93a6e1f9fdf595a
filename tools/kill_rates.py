"""The bug catalogue's kill rates: the test suite's and ``nnparity check``'s, from one kill matrix.

    python tools/kill_rates.py            # every documented network; prints both rates and the bugs
    python tools/kill_rates.py --floors   # and the float32 noise-floor margins of the battery

The suite's rate counts the bugs killed by any floor column of ``nnparity selftest`` (what
``parity_tests/test_selftest.py`` and ``test_bugs.py`` assert): the unit column (the battery on the
bug's layer kind), every network's battery column, every step-parity column. ``nnparity check``'s
counts the bugs killed, on some documented network, by what ``nnparity check NET`` runs: the
documented recipe's step parity and NET's battery section. The two must be equal
(``test_suite_and_nnparity_check_kill_the_same_bugs``).

``--floors`` prints, for every kind with a long-reduction input, the worst margin of the correct
scratch layer in the battery's float32 check (error over ``NOISE_FACTOR`` x torch float32's own
error against torch float64): how the tolerance was set.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--floors", action="store_true", help="also the float32 noise-floor margins")
    args = p.parse_args(argv)

    from nnparity.core.data import load_mnist
    from nnparity.selftest import kill_matrix as selftest
    from nnparity.training.networks import NETWORKS

    t0 = time.perf_counter()
    report = selftest.run_selftest(list(NETWORKS), raw=load_mnist())
    rates = selftest.kill_rates(report)
    n = len(rates["bugs"])
    print(f"bug catalogue: {n} bugs; selftest of {', '.join(report.nets)} ({time.perf_counter() - t0:.0f} s)")
    print(f"suite (nnparity selftest floors: unit battery, battery and step-parity columns): "
          f"{len(rates['suite'])}/{n} killed")
    print(f"nnparity check NET over every documented network (step parity + battery section): "
          f"{len(rates['check'])}/{n} killed")
    parity_only = [b.name for b in report.bugs
                   if any(report.cells[b.name][net].status == "killed" for net in report.nets)]
    print(f"nnparity check NET --no-battery (step parity only, as before the battery section): "
          f"{len(parity_only)}/{n} killed")
    for what in ("only_suite", "only_check"):
        if rates[what]:
            print(f"  killed by the {what.split('_')[1]} only: {', '.join(rates[what])}")
    missed = [b for b in rates["bugs"] if b not in rates["suite"] and b not in rates["check"]]
    if missed:
        print(f"  missed by both: {', '.join(missed)}")
    for bug in report.bugs:
        row = report.cells[bug.name]
        by = [k for k in ("unit", *(f"{net}{s}" for net in report.nets for s in ("", ":battery")))
              if k in row and row[k].status == "killed"]
        print(f"  {bug.name:36s} {', '.join(by)}")
    if args.floors:
        from nnparity.diagnosis import battery, layercases

        print(f"\nfloat32 on long reductions: tolerance {battery.NOISE_FACTOR:g} x torch float32's own error "
              "(worst margin of the correct code per kind; <= 1 passes)")
        for kind, case in layercases.cases().items():
            if case.accumulation is None:
                continue
            r = battery.run_battery(kind, checks=("f32acc",))
            worst = max((c for c in r.comparisons), key=lambda c: c.margin)
            print(f"  {kind:16s} worst margin {worst.margin:.3g} ({worst.name.split('f32acc: ')[-1]}), "
                  f"i.e. {worst.margin * battery.NOISE_FACTOR:.3g} x torch float32's error")
    return 0 if rates["suite"] == rates["check"] else 1


if __name__ == "__main__":
    sys.exit(main())
