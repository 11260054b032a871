"""``jitgrad.autograd``: backward, grad and grad mode, as ``torch.autograd``."""
from . import grad_mode
from .engine import backward_many as backward
from .engine import grad
from .grad_mode import enable_grad, no_grad, set_grad_enabled

__all__ = ["backward", "enable_grad", "grad", "grad_mode", "no_grad", "set_grad_enabled"]
