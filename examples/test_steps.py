"""``steps_mlp.py``: a learner's network checked a training step at a time with the
``nnparity`` fixture (``nnparity.steps`` = ``nnparity.check_steps``). The correct network
passes every comparison of every step; the wrong one is diagnosed as ``nnparity check``
diagnoses the documented networks: the middle Dense's backward is the CULPRIT, wrong on
its own, and the stages after it passed its error on (inherited)."""

import pytest
import torch

from steps_mlp import batches, build, sgd, softmax_cross_entropy, torch_mirror


def steps(nnparity, net, **kwargs):
    return nnparity.steps(net, softmax_cross_entropy, sgd(0.1), torch_mirror(), torch.nn.CrossEntropyLoss(),
                          lambda p: torch.optim.SGD(p, lr=0.1), batches(), **kwargs)


def test_the_correct_network_passes_every_layer_of_every_step(nnparity):
    trace = steps(nnparity, build())
    assert trace.ok and len(trace.steps) == 3
    names = [c.name for c in trace.steps[0]]
    # every layer's output and upstream gradient, under the mirror's names, besides the whole network's
    assert names[:6] == ["out/fc1", "out/act1", "out/fc2", "out/act2", "out/fc3", "loss"]
    assert {"dout/fc1", "dout/act1", "grad/fc2.weight", "param/fc2.bias"} <= set(names)
    assert "fc2: W stored (in, out) (16, 16), torch's weight is (out, in) (16, 16): compared as weight.T" \
        in trace.warnings[-1]


def test_the_wrong_layer_is_the_culprit_and_the_stages_after_it_inherited(nnparity):
    with pytest.raises(AssertionError) as e:
        steps(nnparity, build(wrong=True))
    msg = str(e.value)
    assert msg.startswith("Network float64 step 1: dout/act1 (upstream gradient): max abs"), msg
    assert "fc2 backward             DenseWrongInputGradient.backward" in msg
    assert "OFF (dout/act1)  <- suspect, CULPRIT" in msg
    assert "VERDICT: fc2 backward (DenseWrongInputGradient.backward) is wrong on its own" in msg


def test_the_report_holds_the_same_analysis(nnparity):
    trace = steps(nnparity, build(wrong=True), raise_on_failure=False)
    d = trace.diagnosis
    assert (d.step, d.first.name, d.kind, d.culprit.label) == (1, "dout/act1", "own", "fc2 backward")
    assert d.inherited == ["act1 backward", "fc1 backward", "optimizer update"]
    assert [s.label for s in d.stages if s.off] == ["fc2 backward"]   # everything else is right alone
