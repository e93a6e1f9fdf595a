"""Which catalogued slips does the pattern detector name? (``nnparity/diagnosis/patterns.py`` on ``nnparity/selftest/bugs.py``)

    python tools/pattern_catalogue.py [--nets mlp1000,mlp16,linear10,cnn18k]

For each bug of the catalogue, in float64:

* **unit**: the selftest's unit check of the bug's class (the battery on its layer kind,
  ``nnparity.diagnosis.battery``, through ``layercheck`` as the user API runs it); the pattern of the
  first failing comparison that has one, and how many failing comparisons have one;
* **check**: ``nnparity check NET --steps 1`` with the bug injected, for every network given
  where the bug changes the numbers (recipes adjusted as the selftest does when the bug needs
  it); the pattern of the first divergence.

``expected`` is what a correct name is, from the bug's own description (the truth the tool
is graded against, written by hand below); ``-`` means the slip is no exact pattern of the
list (the detector should say nothing). A row is *right* when every pattern named contains
the expected words (or nothing is named where ``-`` is expected), *silent* when an
expected pattern is not named, *wrong* when a named pattern is not the slip.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXPECTED = {   # bug -> words a correct pattern contains (None: no exact pattern of the list)
    "linear-dW-not-transposed": "transposed",
    "linear-db-averaged": "1/N",
    "ce-grad-wrong-sign": "sign is flipped",
    "ce-missing-1/N": "N = ",
    "ce-grad-factor-2": "scratch = 2 x",
    "ce-softmax-double-counted": None,
    "relu-straight-through": None,
    "sigmoid-at-preactivation": None,
    "sgd-momentum-order": None,           # step 1 is right (buf = g); then m (buf + g) vs m buf + g: no factor
    "sgd-lr-twice": None,                 # a factor lr of the update, not of the parameter compared
    "sgd-wrong-sign": None,               # the update's sign, not the parameter's
    "bn-forward-unbiased-variance": "sqrt((N*H*W-1)/(N*H*W))",  # xhat scaled by sqrt((M-1)/M): grad/weight too
    "bn-backward-missing-mean-term": None,
    "bn-running-var-biased": "(M-1)/M",   # named by the layer's N*H*W = M
    "dropout-no-inverse-scale": "x reference exactly",   # (1 - p) x the reference: an unnamed exact factor
    "maxpool-grad-to-every-element": None,
    "maxpool-grad-to-every-tied-element": None,
    "conv-dW-flipped-kernel": "rotated 180 degrees",
    "conv-dW-swapped-axes": "permuted (1, 0, 2, 3)",
    "conv-grad-assigned": None,           # the second backward's gradient alone: no exact pattern of the list
    "maxpool-nan-routing": None,          # a non-finite value where torch has 0: a non-finite finding, no pattern
    "linear-db-float32-sum": None,        # float32 rounding, not a slip of the math
    "init-fan-without-receptive-field": None,   # init statistics, no tensor pattern
}


def _grade(expected, named: list) -> str:
    if expected is None:
        return "right" if not named else "wrong"
    if not named:
        return "silent"
    words = expected.replace("(M-1)/M", "(N*H*W-1)/(N*H*W)")
    return "right" if all(words in p for p in named) else "wrong"


def unit_row(bug):
    from nnparity.selftest.kill_matrix import unit_check_for

    check = unit_check_for(bug)
    if check is None:
        return None, []
    with bug.applied():
        comps = check("float64")
    failing = [c for c in comps if c.mismatch]
    named = [c for c in failing if c.pattern]
    first = named[0] if named else (failing[0] if failing else None)
    return first, failing


def check_row(bug, net_name):
    from nnparity.diagnosis.check import run_check
    from nnparity.training.networks import get

    net = get(net_name)
    recipe = net.recipe
    if bug.requires is not None and not bug.requires.met(recipe):
        recipe = bug.requires.apply(recipe)
    with bug.applied():
        res = run_check(net_name, steps=1, recipe=recipe)
    if res.trace.ok or res.diagnosis is None:
        return None
    return res.diagnosis.first


def main(argv=None) -> int:
    from nnparity.selftest.bugs import catalogue

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="mlp1000,mlp16,linear10,cnn18k")
    args = ap.parse_args(argv)
    nets = [n for n in args.nets.split(",") if n]
    tally = {"unit": {}, "check": {}}
    print(f"{'bug':<36} {'expected':<22} {'unit check: first failing tensor with a pattern':<60} grade")
    for bug in catalogue():
        exp = EXPECTED.get(bug.name)
        first, failing = unit_row(bug)
        named = [c.pattern for c in failing if c.pattern]
        if first is None:
            unit = "no unit check" if not failing else "-"
            grade = "n/a"
        else:
            unit = f"{first.name}: {first.pattern or 'no pattern'} ({len(named)} of {len(failing)} named)"
            grade = _grade(exp, named)
            tally["unit"][grade] = tally["unit"].get(grade, 0) + 1
        print(f"{bug.name:<36} {str(exp or '-'):<22} {unit[:160]:<60} {grade}")
        for net in nets:
            c = check_row(bug, net)
            if c is None:
                continue
            g = _grade(exp, [c.pattern] if c.pattern else [])
            tally["check"][g] = tally["check"].get(g, 0) + 1
            print(f"{'':<36} {'':<22}   nnparity check {net}: {c.name}: {(c.pattern or 'no pattern')[:110]}  {g}")
    for route, t in tally.items():
        print(f"{route}: " + ", ".join(f"{k} {v}" for k, v in sorted(t.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
