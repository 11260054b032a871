"""``jitgrad.autograd``: backward, grad and grad mode, as ``torch.autograd``."""
from . import grad_mode
from .engine import backward_many as backward
from .engine import grad
from .grad_mode import enable_grad, no_grad, set_grad_enabled
from . import anomaly_mode, forward_ad, function, functional  # noqa: E402
from .anomaly_mode import detect_anomaly, set_detect_anomaly  # noqa: E402
from .function import Function, FunctionCtx, once_differentiable  # noqa: E402
from .gradcheck import GradcheckError, gradcheck, gradgradcheck  # noqa: E402

__all__ = ["Function", "FunctionCtx", "GradcheckError", "anomaly_mode", "backward",
           "detect_anomaly", "enable_grad", "forward_ad", "function", "functional", "grad",
           "grad_mode",
           "gradcheck", "gradgradcheck", "no_grad", "once_differentiable", "set_detect_anomaly",
           "set_grad_enabled"]
