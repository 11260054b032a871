"""Linear data-movement primitives. They have no derivative expression: the adjoint of a
strided view is placing the gradient back at the same strides (and the other way round),
the adjoint of a gather is a scatter-add at the same indices (and the other way round)."""
from .registry import CAST, GATHER, PLACE, RESTRIDE, SCATTER, linear

for _name, _grad_fn in (
    ("view", "ViewBackward0"),
    ("slice", "SliceBackward0"),
    ("select", "SelectBackward0"),
    ("t", "TBackward0"),
    ("transpose", "TransposeBackward0"),
    ("permute", "PermuteBackward0"),
    ("expand", "ExpandBackward0"),
    ("squeeze", "SqueezeBackward0"),
    ("squeeze_dim", "SqueezeBackward1"),
    ("unsqueeze", "UnsqueezeBackward0"),
    ("alias", "AliasBackward0"),
):
    linear(_name, _grad_fn, RESTRIDE)

linear("cat", "CatBackward0", PLACE)
linear("stack", "StackBackward0", PLACE)
linear("place", "AsStridedScatterBackward0", PLACE)

linear("index", "IndexBackward0", GATHER)
linear("max_dim", "MaxBackward0", GATHER)
linear("min_dim", "MinBackward0", GATHER)
linear("index_add", "IndexPutBackward0", SCATTER)

linear("to_dtype", "ToCopyBackward0", CAST)
