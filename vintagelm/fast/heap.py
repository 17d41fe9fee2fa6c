"""Keep freed memory for reuse instead of handing it back to the OS after every array.

A training step allocates the same activations every step (in `baby` ~200 MB in arrays of
1-13 MB each), holds them through the forward pass and frees them in the backward pass.
glibc's malloc hands free memory at the top of its heap back to the OS once there is more
than a threshold of it (twice the largest block freed so far, ~25 MB here), and blocks over
its mmap threshold are mapped fresh and unmapped on free; so every step the kernel gives
out ~50,000 new zeroed pages again, one page fault each. On this machine kind a fault costs
~4 us: ~250 ms of a 1.4 s step went to page faults (measured, baby: 50,502 faults per step;
50 after this).

`reuse_freed_memory()` fixes glibc's two thresholds (mallopt): blocks under 32 MiB (its
largest mmap threshold) come from the heap, and freed memory stays there, to be reused by
the next step, unless more than 1 GiB sits free at its top. Peak memory is unchanged (the
peak is the step's live arrays either way); what stays mapped between steps is memory the
next step needs again. It applies to the whole process (every library in it that uses malloc,
PyTorch included). Elsewhere (macOS, musl) there is no mallopt and nothing changes.
Set VINTAGELM_REUSE_MEMORY=0 to leave malloc as it is.
"""
import ctypes
import functools
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's <malloc.h>
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest: HEAP_MAX_SIZE / 2 on 64-bit
TRIM_THRESHOLD = 1 << 30  # more than a step of the models we train frees at once


@functools.cache
def reuse_freed_memory():
    """Set malloc's thresholds once per process (see the module docstring). Returns whether
    they are set: False without glibc or with VINTAGELM_REUSE_MEMORY=0."""
    return os.environ.get("VINTAGELM_REUSE_MEMORY", "1") != "0" and _set_thresholds()


def _set_thresholds():
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the symbols the process already has: its C library's
    except (OSError, AttributeError):  # a C library without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first, so that setting it fixes it
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
