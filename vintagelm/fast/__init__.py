"""The fast backend: everything that exists only for speed, switched on as a whole by
`backend="fast"` (GPT, AdamW, `vintage train --set backend=fast`). The reference path never
imports this package.

    ops.py        FastOps: the model's op table with faster replacements (start here)
    kernels.py    numba kernels: layer norm, GELU, causal softmax and its backward, AdamW
    modern.py     numba kernels for today's block: RMSNorm, SwiGLU's gate, RoPE, grouped kv heads
    attention.py  attention with its batch split over the lanes
    lanes.py      run work on OpenBLAS's own threads (VINTAGELM_LANES=1 turns it off)
    heap.py       keep freed memory for the next step (VINTAGELM_REUSE_MEMORY=0 turns it off)

It needs numba (`pip install 'vintagelm[fast]'`); lanes need NumPy's bundled OpenBLAS and
fall back to one lane elsewhere.
"""
