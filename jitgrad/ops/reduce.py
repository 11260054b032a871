"""Reductions over some dims. ``y`` and ``g`` are broadcast back over the reduced dims;
``n`` is the number of elements reduced into each output, ``k`` the sum of the op's count
over them."""
from .registry import reduction

reduction("sum", "SumBackward0", "1.0")
reduction("sum_dim", "SumBackward1", "1.0")
reduction("mean", "MeanBackward0", "1.0 / n")
reduction("mean_dim", "MeanBackward1", "1.0 / n")
# y / x is the product of the other elements where x != 0
reduction("prod", "ProdBackward0", "y / x")
reduction("prod_dim", "ProdBackward1", "y / x")
reduction("logsumexp", "LogsumexpBackward0", "exp(x - y)")
# the 2-norm's subgradient at 0 is 0, as torch
reduction("norm", "LinalgVectorNormBackward0", "where(y == 0.0, 0.0, x / y)")
# the extremes split the gradient evenly between the elements equal to the result, as
# torch: amax/amin among ties (a nan result matches none: 0 / 0, the gradient is nan, as
# torch's), max()/min() of a whole tensor among ties or, when the result is nan, among nans
_TIED = "where(x == y, 1.0, 0.0)"
_TIED_OR_NAN = "where(y == y, where(x == y, 1.0, 0.0), where(x == x, 0.0, 1.0))"
reduction("max_all", "MaxBackward1", f"{_TIED_OR_NAN} / k", _TIED_OR_NAN)
reduction("min_all", "MinBackward1", f"{_TIED_OR_NAN} / k", _TIED_OR_NAN)
reduction("amax", "AmaxBackward0", f"{_TIED} / k", _TIED)
reduction("amin", "AminBackward0", f"{_TIED} / k", _TIED)
