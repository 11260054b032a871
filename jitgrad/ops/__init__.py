"""Primitive ops: declared once in the family modules, collected in the registry."""
from . import elementwise, linalg, reduce, shape  # noqa: F401  (registration order = opcodes)
from .registry import BY_NAME, OPS, OpDef  # noqa: F401
