"""Column layout of the tape's flat tables, shared by the recorder and the Numba sweeps.

The tape keeps three tables as flat int64/float64 buffers, one row per entry or node:

* entries (int64): what each recorded op read and wrote,
* entry constants (float64): the op's scalar attributes,
* nodes (int64): where each value lives and whether it needs a gradient.
"""
# entry table
E_OP = 0        # opcode (index into the op registry)
E_OUT = 1       # output node
E_IN0 = 2       # input nodes, -1 when absent (a Python scalar, or a constant not read)
E_IN1 = 3
E_IN2 = 4
E_META = 5      # offset of the op's integer attributes in the meta buffer
E_VER0 = 6      # version of each input node when it was recorded
E_VER1 = 7
E_VER2 = 8
E_FREED = 9     # 1 once a backward without retain_graph went through the entry
E_WIDTH = 10

# entry constants
C0 = 0
C1 = 1
C_WIDTH = 2

# node table
N_OFFSET = 0    # offset of the value (and of its adjoint) in the arena of its dtype
N_SIZE = 1      # number of elements
N_DTYPE = 2     # DTYPE_F32 or DTYPE_F64
N_GRAD = 3      # 1 if the node requires grad
N_ENTRY = 4     # entry that produced it, -1 for leaves and constants
N_VERSION = 5   # bumped by in-place writes to the value
N_REFS = 6      # live tensors that refer to the node
N_WIDTH = 7

DTYPE_F32 = 0
DTYPE_F64 = 1

# errors reported by the sweeps (code, entry)
OK = 0
ERR_FREED = 1
ERR_VERSION = 2
