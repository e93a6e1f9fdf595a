"""``steps_dropout.py``: a learner's network with inverted dropout, checked a training step at a time
with the ``nnparity`` fixture. The mirror's ``torch.nn.Dropout`` applies the learner's mask of each
step, so the correct network passes every comparison of every step; each wrong backward is the
CULPRIT, and the stages after it inherited its error."""

import pytest
import torch

from steps_dropout import P, batches, build, sgd, softmax_cross_entropy, torch_mirror


def steps(nnparity, net, mirror=None, **kwargs):
    return nnparity.steps(net, softmax_cross_entropy, sgd(0.1), mirror or torch_mirror(), torch.nn.CrossEntropyLoss(),
                          lambda p: torch.optim.SGD(p, lr=0.1), batches(n=4), **kwargs)


def test_the_correct_network_passes_every_step_on_its_own_masks(nnparity):
    mirror = torch_mirror()
    trace = steps(nnparity, build(), mirror)
    assert trace.ok and len(trace.steps) == 4
    assert [c.name for c in trace.steps[0]][:4] == ["out/fc1", "out/act1", "out/drop", "out/fc2"]
    assert "torch.nn.Dropout applied your layers' masks (the mask protocol): drop" in trace.warnings
    assert type(mirror.drop) is torch.nn.Dropout   # the mirror gets its own module back


def test_torch_applies_the_learners_very_mask(nnparity):
    # a mirror dropping with p = 0.5 on the learner's mask: out/drop differs by exactly the ratio of
    # the scales, (1/(1-0.3)) / (1/(1-0.5)) = 5/7, at every element (a mask of torch's own would not)
    from collections import OrderedDict

    from torch import nn

    mirror = nn.Sequential(OrderedDict(fc1=nn.Linear(12, 16), act1=nn.ReLU(), drop=nn.Dropout(0.5),
                                       fc2=nn.Linear(16, 5)))
    with pytest.raises(AssertionError) as e:
        steps(nnparity, build(), mirror)
    first = str(e.value).splitlines()[0]
    assert first.startswith("Network float64 step 1: out/drop (forward activation)"), first
    assert "PATTERN: scratch = 5/7 x reference exactly" in first, first


@pytest.mark.parametrize("slip,cls,pattern", [
    ("scale", "DropoutForgetsTheScale", "PATTERN: scratch = 7/10 x reference exactly"),
    ("fresh mask", "DropoutFreshMaskInBackward", None),
])
def test_a_wrong_dropout_backward_is_the_culprit(nnparity, slip, cls, pattern):
    with pytest.raises(AssertionError) as e:
        steps(nnparity, build(wrong=slip))
    msg = str(e.value)
    assert msg.startswith("Network float64 step 1: dout/act1 (upstream gradient)"), msg
    assert (pattern in msg) if pattern else "PATTERN" not in msg.splitlines()[0]
    assert f"drop forward             {cls}.forward" in msg   # right alone: torch applied the same mask
    assert f"VERDICT: drop backward ({cls}.backward) is wrong on its own" in msg
    d = steps(nnparity, build(wrong=slip), raise_on_failure=False).diagnosis
    assert (d.kind, d.culprit.label) == ("own", "drop backward")
    assert d.inherited == ["act1 backward", "fc1 backward", "optimizer update"]


def test_in_eval_mode_dropout_is_the_identity_on_both_sides(nnparity):
    trace = steps(nnparity, build(wrong="scale"), mode="eval")   # the slip is in the training backward only
    assert trace.ok and not any("mask protocol" in w for w in trace.warnings)
