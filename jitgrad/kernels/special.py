"""Array forwards for the ops NumPy has no ufunc for (``erf``), computed as the kernels and
the 0-d path compute them (libm in float64, rounded to the array's type), so that an eager
value, a compiled replay's and a scalar's agree to the bit."""
import math

from .jit import kernel


@kernel
def erf_array(x, out):
    """``out[i] = erf(x[i])`` for 1-d arrays of one length."""
    for i in range(x.shape[0]):
        out[i] = math.erf(float(x[i]))
