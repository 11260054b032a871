"""Matrix products. Every form is a batched product ``(B, n, k) @ (B, k, m)`` (1-D and 2-D
operands are viewed with unit dims); the entries here are its vector-Jacobian products.
``linear`` takes its second operand as stored by a linear layer, ``(m, k)``: ``a @ mT(b)``
without a transposed copy of the weight; ``linear_bias`` also adds a bias row ``c``."""
from .registry import MATMUL, OpDef, register

_VJP = ("matmul(g, mT(b))", "matmul(mT(a), g)")
for _name, _grad_fn in (("dot", "DotBackward0"), ("mv", "MvBackward0"),
                        ("mm", "MmBackward0"), ("bmm", "BmmBackward0"),
                        ("matmul", "UnsafeViewBackward0")):
    register(OpDef(_name, _grad_fn, MATMUL, ("a", "b"), _VJP))
register(OpDef("linear", "MmBackward0", MATMUL, ("a", "b"),
               ("matmul(g, b)", "matmul(mT(g), a)"), transposed_b=True))
# with a bias: a third operand ``c`` of ``cols`` values added to every row of the product;
# its declared vjp is per row (``g``), and the kernels sum it over the rows
register(OpDef("linear_bias", "AddmmBackward0", MATMUL, ("a", "b", "c"),
               ("matmul(g, b)", "matmul(mT(g), a)", "g"), transposed_b=True))
