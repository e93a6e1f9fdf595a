"""SGD, plain and with momentum, against torch.optim.SGD over several steps."""

import numpy as np
import pytest
import torch

from nnparity.core.parity import assert_close
from scratch import SGD, Parameter


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_matches_torch(dtype, momentum):
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal((3, 4)).astype(dtype)
    p = Parameter(w0.copy())
    pt = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt, opt_t = SGD([("w", p)], lr=0.1, momentum=momentum), torch.optim.SGD([pt], lr=0.1, momentum=momentum)
    for step in range(1, 6):
        g = rng.standard_normal((3, 4)).astype(dtype)
        p.grad[...] = g
        pt.grad = torch.from_numpy(g.copy())
        opt.step()
        opt_t.step()
        assert_close("param/w", p.data, pt.detach().numpy(), step=step)
        if momentum:
            assert_close("state/w.momentum_buffer", opt.state_dict()["w.momentum_buffer"],
                         opt_t.state[pt]["momentum_buffer"].numpy(), step=step)


def test_sgd_keeps_dtype():
    p = Parameter(np.ones(3, np.float32))
    p.grad[...] = 1
    SGD([("w", p)], lr=0.001).step()
    assert p.data.dtype == np.float32


@pytest.mark.parametrize("lr,momentum", [(0, 0), (-1, 0), (0.1, -0.5)])
def test_sgd_rejects_bad_hyperparameters(lr, momentum):
    with pytest.raises(ValueError):
        SGD([("w", Parameter(np.ones(2)))], lr=lr, momentum=momentum)
