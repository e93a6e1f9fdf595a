"""``dropout.py``: a learner's inverted dropout and CS231n's two slips, through the mask protocol
(your mask handed to ``torch.nn.Dropout``) and ``check_mask_statistics`` (how the masks are drawn).
Parity on your own mask cannot see how you draw it; the statistics can."""

import pytest
import torch

from dropout import Dropout, KeepProbDropout, SharedMaskDropout
from nnparity.training.adapters import ProtocolError   # binds no name "nnparity": that is the fixture


def test_the_correct_dropout_passes_in_training_and_evaluation(nnparity):
    report = nnparity.layer(Dropout(0.3), torch.nn.Dropout(0.3), input_shape=(8, 16), modes=("train", "eval"))
    assert list(report.results) == ["float64 train", "float32 train", "float64 eval", "float32 eval"]
    assert report.reference == "torch.nn.Dropout(p=0.3)"


def test_the_correct_dropout_draws_its_masks_as_it_should(nnparity):
    report = nnparity.masks(Dropout(0.3), p=0.3)
    assert [name for name, ok, _ in report.tests if not ok] == []


def test_one_mask_for_the_whole_batch_is_refused_by_the_mask_protocol(nnparity):
    with pytest.raises(ProtocolError, match=r"SharedMaskDropout.mask has shape \(16,\), the input "
                                                            r"\(8, 16\): .*one mask for the whole batch"):
        nnparity.layer(SharedMaskDropout(0.3), torch.nn.Dropout(0.3), input_shape=(8, 16))


def test_one_mask_for_the_whole_batch_fails_the_independence_across_samples(nnparity):
    with pytest.raises(AssertionError) as e:
        nnparity.masks(SharedMaskDropout(0.3), p=0.3)
    msg = str(e.value)
    assert "FAIL independence across samples" in msg and "one mask shared by the whole batch" in msg
    assert "ok   independence across features" in msg and "ok   scale" in msg


def test_p_read_as_the_keep_probability_fails_parity_with_the_exact_factor(nnparity):
    # torch applies your mask with its own scale 1/(1-p); yours is 1/p: 0.7/0.3 = 7/3 exactly
    with pytest.raises(AssertionError) as e:
        nnparity.layer(KeepProbDropout(0.3), torch.nn.Dropout(0.3), input_shape=(8, 16))
    msg = str(e.value)
    assert msg.startswith("KeepProbDropout float64 out (forward activation)"), msg
    assert "PATTERN: scratch = 7/3 x reference exactly" in msg


def test_p_read_as_the_keep_probability_fails_the_keep_rate_and_the_scale(nnparity):
    with pytest.raises(AssertionError) as e:
        nnparity.masks(KeepProbDropout(0.3), p=0.3)
    msg = str(e.value)
    assert "that is p, not 1-p" in msg and "FAIL scale: kept values are x times 3.33333, not 1/(1-p)" in msg

