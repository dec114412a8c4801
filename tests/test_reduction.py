"""Option resolution: reductions, PyTorch's legacy arguments and warnings."""

import warnings

import pytest
import torch
from torch.nn import _reduction as torch_reduction_module

from jaxkl import _reduction


@pytest.mark.parametrize("size_average", [None, True, False])
@pytest.mark.parametrize("reduce", [None, True, False])
def test_legacy_mapping_matches_torch(size_average, reduce):
  with warnings.catch_warnings(record=True) as ours:
    warnings.simplefilter("always")
    got = _reduction.legacy_reduction(size_average, reduce, stacklevel=1)
  with warnings.catch_warnings(record=True) as theirs:
    warnings.simplefilter("always")
    expected = torch_reduction_module.legacy_get_string(size_average, reduce)
  assert got == expected
  assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]


def test_warning_texts_are_torchs():
  x = torch.zeros(2, 3)
  with pytest.warns(UserWarning) as record:
    torch.nn.functional.kl_div(x, x.exp(), reduction="mean")
  assert str(record[0].message) == _reduction.MEAN_WARNING
  with pytest.warns(UserWarning) as record:
    torch.nn.functional.kl_div(x, x.exp(), reduction="elementwise_mean")
  assert str(record[0].message) == _reduction.ELEMENTWISE_MEAN_WARNING


@pytest.mark.parametrize(
  "args, expected",
  [
    ((None, None, "none"), ("none", False)),
    ((None, None, "sum"), ("sum", False)),
    ((None, None, "batchmean"), ("sum", True)),
    ((None, False, "batchmean"), ("none", True)),  # torch's quirk
    ((True, None, "batchmean"), ("mean", True)),  # torch's quirk
    ((False, True, "no-such"), ("sum", False)),  # not validated
  ],
)
def test_torch_reduction_resolution(args, expected):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    assert _reduction.torch_reduction(*args, stacklevel=1) == expected


@pytest.mark.parametrize("bad", ["avg", "Mean", "", None, 3])
def test_invalid_reduction_message(bad):
  with pytest.raises(ValueError, match="`reduction` must be one of") as info:
    _reduction.torch_reduction(None, None, bad, stacklevel=1)
  assert repr(bad) in str(info.value)
  assert "'batchmean'" in str(info.value)
