"""Column layout of the tape's flat tables, shared by the recorder and the Numba sweeps.

The tape keeps three tables as flat int64/float64 buffers, one row per entry or node:

* entries (int64): what each recorded op read and wrote,
* entry constants (float64): the op's scalar attributes,
* nodes (int64): where each value lives and whether it needs a gradient.
"""
# entry table: one row of int64 per entry; the two constants are float64 bit patterns
# in the same row, read through a float64 view of the buffer
E_OP = 0        # opcode (index into the op registry)
E_OUT = 1       # output node
E_IN0 = 2       # input nodes, -1 when absent (a Python scalar, or a constant not read)
E_IN1 = 3
E_IN2 = 4
E_META = 5      # offset of the op's integer attributes in the meta buffer, -1 if none
E_VER0 = 6      # version of each input node when it was recorded
E_VER1 = 7
E_VER2 = 8
E_FREED = 9     # 1 once a backward without retain_graph went through the entry
E_C0 = 10       # float attributes (a scalar operand, clamp bounds, a reduction's count)
E_C1 = 11
E_WIDTH = 12

# node table: one row of int64 per node (versions and live references are kept in
# separate int64 buffers: they change after the row is written)
N_OFFSET = 0    # offset of the value (and of its adjoint) in the arena of its dtype
N_SIZE = 1      # number of elements
N_DTYPE = 2     # DTYPE_F32 or DTYPE_F64
N_GRAD = 3      # 1 if the node requires grad
N_ENTRY = 4     # entry that produced it; -1 for leaves and constants, -2 for a value whose
                # graph was freed before it was registered (a non-leaf of an older generation)
N_WIDTH = 5

DTYPE_F32 = 0
DTYPE_F64 = 1

# compiled tapes: the head of an entry's instruction row (jitgrad/kernels/replay.py), which
# says how the replay runs it
TAG_SCALAR = 0    # one-element elementwise entry
TAG_COPY = 1      # one-element read of another node of the same dtype: out = in0
TAG_GENERAL = 2   # the per-kind steps

H_TAG = 3                # bits 0-1
H_KIND_SHIFT = 2         # bits 2-5
H_F32 = 1 << 6           # output is float32
H_W0 = 1 << 7            # input k wants an adjoint
H_W1 = 1 << 8
H_W2 = 1 << 9
H_CODE_SHIFT = 16        # bits 16-31
H_ROW_SHIFT = 32         # row of ``general``

# errors reported by the sweeps (code, entry)
OK = 0
ERR_FREED = 1
ERR_VERSION = 2

# the sweeps' per-op mask table: bits 0-2 input k's value is read by the derivative, bit 3
# the output's; bits WRITES_SHIFT + k: the reverse step writes input k's whole adjoint
WRITES_SHIFT = 4

# the second-order sweep's per-op table (generated into _hvp.py): bits 0-2 its step reads
# input k's tangent, bit 3 the output's; bits FLOWS_SHIFT + k: input k's tangent flows into
# the output's (the tangent sweep reads it); bit HAS_SECOND_ORDER: the sweep has a step;
# bit KEEPS_PARTIAL: a unary op whose partial is kept from its tangent step for its reverse step
FLOWS_SHIFT = 4
HAS_SECOND_ORDER = 1 << 7
KEEPS_PARTIAL = 1 << 8

# blocked runs of large elementwise entries in the sweeps (``kernels.sweep.accumulate``,
# ``kernels.tangent.tangent_sweep_fused``): SWEEP_BLOCK elements per block, at most
# SWEEP_RUN entries per run; adjoint and tangent buffers reserve SWEEP_SCRATCH columns
# after the arena's for their scratch slots
SWEEP_BLOCK = 4096
SWEEP_RUN = 16
SWEEP_SCRATCH = SWEEP_RUN * SWEEP_BLOCK
