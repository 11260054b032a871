"""Optimizers: ``SGD``, ``Adam``, ``AdamW`` on the ``Optimizer`` base, torch's API. Each
step updates all the parameters of a group in one Numba kernel call (``_kernels``, imported
on the first step so that ``import jitgrad`` does not load Numba)."""
from . import lr_scheduler
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "lr_scheduler"]
