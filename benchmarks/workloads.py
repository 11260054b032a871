"""The benchmark workloads, for the pytest-benchmark suite (``test_bench.py``, ``conftest.py``).

They live in :mod:`jitgrad.bench`, which ``python -m jitgrad bench`` and ``compare.py`` run:
every workload is written once there, against the torch API, as functions taking the module
``lib`` (``jitgrad`` or ``torch``), plus one functional version for JAX and HIPS autograd.
This module re-exports what the suite uses. Its ``CASES`` are W1-W4, the cases whose rounds
``test_bench.py`` sets; W5-W7 (``jitgrad.bench.FEATURE_CASES``) run in the table command.
"""
from __future__ import annotations

from jitgrad.bench import (  # noqa: F401 - re-exported for test_bench.py and conftest.py
    ALL_LIBS,
    CORE_CASES,
    DESCRIPTIONS,
    FEATURE_CASES,
    FUNCTIONAL,
    GOALS,
    OPS_PER_RUN,
    TORCH_LIKE,
    Runner,
    first_gradient_source,
    import_lib,
    import_time_source,
    limit_blas_threads,
    make_runner,
    per_op,
    smoke,
)

CASES = CORE_CASES
