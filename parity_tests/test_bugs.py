"""The bug catalogue's patches are small hooks: each slip overrides one short helper of a
scratch layer (the few lines it changes), never a copy of a whole forward/backward/step, so
a refactor of a layer is tested as it stands; and every slip still changes the numbers."""

import ast
import inspect
import textwrap

import pytest

from nnparity.selftest import bugs

from nnparity.selftest import kill_matrix as selftest

WHOLE_METHODS = ("forward", "backward", "step", "__call__")
MAX_LINES = 6  # statements of a helper or of a patch, its docstring and comments left out


def _code_lines(fn) -> int:
    """Lines of ``fn``'s body holding code: no docstring, no comment-only or blank lines."""
    src = textwrap.dedent(inspect.getsource(fn))
    node = ast.parse(src).body[0]
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    lines = src.splitlines()
    code = set()
    for stmt in body:
        for sub in ast.walk(stmt):
            if hasattr(sub, "lineno"):
                code.update(range(sub.lineno, sub.end_lineno + 1))
    return sum(1 for i in code if lines[i - 1].strip() and not lines[i - 1].strip().startswith("#"))


def _targets(bug):
    """(target, patch) for the slip and for its ``also`` patches."""
    return [(bug.target, bug.patch), *bug.also]


@pytest.mark.parametrize("bug", bugs.catalogue(), ids=lambda b: b.name)
def test_slip_overrides_a_short_helper_not_a_whole_method(bug):
    owner, attr = bug.resolve()
    assert isinstance(owner, type) or (owner.__name__.startswith("scratch.") and bug.kinds), \
        f"{bug.name}: the target {bug.target} is neither a method of a scratch class nor a scratch function with kinds"
    assert attr not in WHOLE_METHODS, (f"{bug.name}: patches the whole {attr} of {owner.__name__}; factor the "
                                       f"slip's lines into a helper of the layer and patch that")
    correct = getattr(owner, attr)
    assert correct.__doc__, f"{bug.target}: a helper a slip overrides says in one line what it computes"
    assert _code_lines(correct) <= MAX_LINES, f"{bug.target} is {_code_lines(correct)} lines: not a small helper"
    for target, patch in _targets(bug):
        original = getattr(*bug.resolve(target))
        replacement = patch(original)
        assert inspect.signature(replacement) == inspect.signature(original), (bug.name, target)
        n = _code_lines(replacement)
        assert n <= MAX_LINES, f"{bug.name}: its patch of {target} is {n} lines, a copy rather than a slip"


@pytest.mark.parametrize("bug", [b for b in bugs.catalogue() if b.also], ids=lambda b: b.name)
def test_an_also_patch_wraps_the_correct_method_rather_than_copying_it(bug):
    for target, patch in bug.also:
        replacement = patch(getattr(*bug.resolve(target)))
        assert "original" in replacement.__code__.co_freevars, f"{bug.name}: {target} must call the original"


def test_the_measure_sees_a_whole_method():
    """The line count is no formality: a whole backward is over the limit, as the old copies were."""
    from scratch.conv import Conv2d
    from scratch.norm import BatchNorm2d
    from scratch.pool import MaxPool2d

    assert all(_code_lines(f) > MAX_LINES for f in (BatchNorm2d.forward, BatchNorm2d.backward,
                                                    MaxPool2d.backward, Conv2d.backward))


@pytest.mark.parametrize("bug", bugs.catalogue(), ids=lambda b: b.name)
def test_slip_reaches_the_numbers_through_its_hook(bug):
    """The unit check (the battery on the bug's kind) calls the helper: the hook is on the layer's
    path, here in the unit check's first documented configuration that reaches it (momentum is
    documented for some networks only), where every check of the battery but the float32 reduction runs. That the slip, once in, fails a comparison against torch with margin
    >= 10 (it still changes the numbers) is the selftest's floor (``test_selftest.py``, which runs
    the whole unit column, every network's step parity and battery)."""
    from nnparity.diagnosis import battery, layercases

    kinds = selftest.bug_kinds(bug)
    assert kinds, f"{bug.name}: no kind of the layer-case table holds {bug.target}"
    reports = []
    with bug.counted() as calls, battery.one_thread():
        documented = [(k, e) for k in kinds for e in battery.configurations(k) if e[2]]
        for kind, entry in documented:   # until one reaches the helper
            reports.append(battery.run_case(layercases.get_case(kind), [entry]))
            if calls:
                break
    assert calls, f"{bug.name}: the unit check never calls {bug.target}"
    assert all(r.ok for r in reports), [r.message() for r in reports]
