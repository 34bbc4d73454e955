"""Launch configuration of the CUDA kernels: plain module values, read at every launch, so tests can shrink
them (tiny blocks make multi-block and multi-pass paths run on tiny inputs in the simulator).

On a GPU keep THREADS_PER_BLOCK a multiple of 32 (the warp-shuffle reductions assume whole warps) and at most
MAX_THREADS (the size of the shared-memory reduction buffers, fixed at compile time).
"""
ROW_PARTIALS = 16  # row backward: dweight/dbias partials kept per thread (compile-time); longer rows use global
MAX_THREADS = 1024  # shared-memory reduction buffers hold this many values per array (compile-time constant)
THREADS_PER_BLOCK = 256  # row-wise norms: threads per row; channel norms: threads per block
CHANNEL_TILE = 32  # channels-last channel norms: channels per block (threads along x); the rest go along y
SPLIT_ELEMENTS = 16384  # channel norms: values of one channel (segment) reduced by one block before the merge
MIN_REDUCTION_BLOCKS = 1024  # channel norms: split segments further until a reduction has this many blocks (about
#   8 per H100 SM; a fixed number, not the GPU's, so that results do not depend on the device)
ELEMENTWISE_ITEMS = 8  # channel norms' elementwise kernels: positions per thread (channel values read once for them)
MAX_GRID = 65535  # blocks of a grid-stride kernel (and of a row kernel, rows beyond loop); it also caps grids' y and z
#   dimensions, whose hardware limit is 65535: do not raise it
BACKWARD_ROW_BLOCKS = 264  # row-wise backward: blocks (each owns a dweight/dbias partial row), 2 per H100 SM
