"""Reductions over some dims. ``y`` and ``g`` are broadcast back over the reduced dims;
``n`` is the number of elements reduced into each output."""
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
