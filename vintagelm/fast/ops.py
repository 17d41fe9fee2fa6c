"""The fast backend's op table: nn/ops.py's ReferenceOps with entries replaced by faster
versions of the same mathematics, held equal to the ones they replace by tests/test_fast_kernels.py
(the kernels), tests/test_lanes.py (attention) and tests/test_backends.py (whole training runs).

What is replaced, and why:
  * layer norm, GELU, the attention softmax (float32): compiled kernels (kernels.py), one or
    two passes per row instead of a NumPy pass per sub-expression, split over the lanes; the
    MLP's first bias is added by the GELU kernel, in the same pass;
  * today's block (modern.py; float32 and float64): RMSNorm (QK-norm too, through the table's
    RMSNorm), RoPE and the sum of the grouped kv heads' gradients as one-pass kernels; SwiGLU's
    gate and up projections as one product (their weights side by side) and its gating as one
    kernel pass each way, its weight gradients through the gradient slots below;
  * attention: its batch split over the BLAS threads (attention.py, lanes.py);
  * gradient slots: the reference zeroes every slot and then adds into it. Here the zeroing
    is lazy: a slot not yet written in this backward IS zero, so the first gradient that
    reaches it is written, not added; a linear layer's weight gradient is then computed by
    BLAS straight into the slot (no temporary, no extra pass over it), and zeroing the
    10.7M gradients of `baby` (4 ms a step) is skipped. A slot nothing wrote is zeroed at the
    end of the block, so the rule the model states still holds exactly;
  * residual adds: into the sublayer's fresh output, in place;
  * token embeddings' backward: a sort and segment sums instead of np.add.at;
  * memory: making the op table keeps freed memory in the process (heap.py).
"""
from contextlib import contextmanager
from functools import partial

import numpy as np

from vintagelm.fast import attention, heap, modern
from vintagelm.nn import attention as reference_attention
from vintagelm.nn import norm
from vintagelm.nn.activation import ACTIVATIONS
from vintagelm.nn.mlp import MLPCache
from vintagelm.nn.ops import ATTENTION_BLOCK, ReferenceOps
from vintagelm.nn.rmsnorm import RMS_EPS


class FastOps(ReferenceOps):
    name = "fast"

    def __init__(self, dtype):
        super().__init__()
        heap.reuse_freed_memory()  # every step frees and reallocates the same arrays (heap.py)
        self._unwritten = set()  # _address of the slots that are zero but not yet written
        self._slots = None  # (the grads dict, {_address: slot}) of the model
        kernels = reference_attention  # causal_softmax, softmax_backward
        self._layernorm_backward = norm.layernorm_backward
        self._activations = dict(ACTIVATIONS)  # name -> (forward, backward)
        self._bias_gelu = None  # the compiled GELU that adds the bias before it, in float32
        if np.dtype(dtype) == np.float32:  # the compiled kernels are float32 only
            from vintagelm.fast import kernels

            self._activations["gelu"] = (kernels.gelu_forward, kernels.gelu_backward)
            self._bias_gelu = kernels.bias_gelu_forward
            self.layernorm_forward = kernels.layernorm_forward  # (backward below: it also minds the slots)
            self._layernorm_backward = kernels.layernorm_backward
        forward, backward = partial(attention.attention_forward, kernels=kernels), partial(
            attention.attention_backward, kernels=kernels)
        self.attention = {
            **self.attention,
            "naive": (forward, backward),
            "blocked": (partial(forward, chunk=ATTENTION_BLOCK), backward),
        }

    # ---------------------------------------------------------------- gradient slots
    @contextmanager
    def gradients(self, grads, zero):
        if zero:
            if self._slots is None or self._slots[0] is not grads:
                self._slots = (grads, {_address(g): g for g in grads.values()})  # made once per model
            self._unwritten = set(self._slots[1])
        try:
            yield
        finally:
            for address in self._unwritten:
                self._slots[1][address].fill(0.0)
            self._unwritten = set()

    def _first_write(self, slot):
        """Whether `slot` is still unwritten (so, zero) in this backward; it counts as written
        from now on."""
        address = _address(slot)
        if address in self._unwritten:
            self._unwritten.discard(address)
            return True
        return False

    def _zero_if_unwritten(self, slot):
        if slot is not None and self._first_write(slot):
            slot.fill(0.0)

    def _add_into(self, slot, value):
        """slot += value, or slot = value at the slot's first write."""
        if self._first_write(slot):
            slot[...] = value
        else:
            slot += value

    def _weight_grad(self, x2, dy2, dw):
        """dw (IN, OUT) += x2ᵀ dy2 for x2 (N, IN), dy2 (N, OUT) (either may be a strided view
        that BLAS reads as it is); at the slot's first write BLAS writes the product into it."""
        if not self._first_write(dw):
            dw += x2.T @ dy2
        elif dw.flags.c_contiguous:
            np.matmul(x2.T, dy2, out=dw)
        else:  # the output head's (C, V) view of wte (V, C): write the transposed product into wte
            np.matmul(dy2.T, x2, out=dw.T)

    def _bias_grad(self, dy2, db):
        """db (OUT,) += the column sums of dy2 (N, OUT), as a matrix-vector product: BLAS
        streams dy once, on every thread."""
        ones = np.ones(dy2.shape[0], dtype=dy2.dtype)
        if self._first_write(db):
            np.matmul(ones, dy2, out=db)
        else:
            db += ones @ dy2

    # ---------------------------------------------------------------- ops
    def linear_backward(self, dy, cache, dw, db=None):
        x, w = cache
        x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])  # (N, IN), (N, OUT)
        self._weight_grad(x2, dy2, dw)
        if db is not None:
            self._bias_grad(dy2, db)
        return (dy2 @ w.T).reshape(x.shape)

    @staticmethod
    def residual_add(x, f):
        """x + f written into f, which the sublayer just wrote (still in cache), instead of a
        fresh array (cProfile of `baby`: ~7 ms a step more out of place)."""
        f += x
        return f

    def layernorm_backward(self, dy, cache, dw, db=None):
        self._zero_if_unwritten(dw)
        self._zero_if_unwritten(db)
        return self._layernorm_backward(dy, cache, dw, db)

    def mlp_forward(self, x, w_fc, b_fc, w_proj, b_proj, activation="gelu"):
        """nn.mlp.mlp_forward; with the compiled GELU, c_fc's bias is added by the GELU kernel
        in its own pass over the (B, T, 4C) array instead of a pass of its own."""
        fuse = self._bias_gelu is not None and activation == "gelu" and b_fc is not None
        h, fc = self.linear_forward(x, w_fc, None if fuse else b_fc)  # (..., 4C)
        g, act = self._bias_gelu(h, b_fc) if fuse else self._activations[activation][0](h)
        y, proj = self.linear_forward(g, w_proj, b_proj)  # (..., C)
        return y, MLPCache(fc, act, proj, activation)

    def mlp_backward(self, dy, cache, dw_fc, db_fc, dw_proj, db_proj):
        """nn.mlp.mlp_backward through this table's linear_backward (c_fc's bias gradient is the
        sum of dh whether its bias was added by the linear layer or by the GELU kernel)."""
        dg = self.linear_backward(dy, cache.proj, dw_proj, db_proj)  # (..., 4C)
        dh = self._activations[cache.activation][1](dg, cache.act)
        return self.linear_backward(dh, cache.fc, dw_fc, db_fc)  # (..., C)

    def embedding_backward(self, dx, cache, dwte, dwpe=None):
        """Same sums as nn.embedding.embedding_backward. Sorting the positions by id turns the
        scatter-add into contiguous segment sums (np.add.reduceat), one per distinct id."""
        idx, start = cache
        C = dx.shape[-1]
        ids = idx.reshape(-1)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])  # first row of each id
        self._zero_if_unwritten(dwte)
        dwte[sorted_ids[starts]] += np.add.reduceat(dx.reshape(-1, C)[order], starts, axis=0)
        if dwpe is not None:
            self._zero_if_unwritten(dwpe)
            dwpe[start : start + idx.shape[1]] += dx.sum(axis=0)


    # ---------------------------------------------------------------- today's block (modern.py)
    def rmsnorm_forward(self, x, w, b=None, eps=RMS_EPS):
        if w is None:  # no gain (a bare QK-norm): the reference
            return super().rmsnorm_forward(x, w, b, eps)
        return modern.rmsnorm_forward(x, w, eps)

    def rmsnorm_backward(self, dy, cache, dw, db=None):
        if cache.w is None:
            return super().rmsnorm_backward(dy, cache, dw, db)
        dx, dw_rows = modern.rmsnorm_backward(dy, cache)
        self._add_into(dw, dw_rows)
        return dx

    def rope_forward(self, x, cos, sin):
        if cos.ndim != 2:  # a start per batch row (decoding rows of different lengths): the reference
            return super().rope_forward(x, cos, sin)
        return modern.rope_forward(x, cos, sin)

    def rope_backward(self, dy, cache):
        if cache.cos.ndim != 2:
            return super().rope_backward(dy, cache)
        return modern.rope_backward(dy, cache)

    repeat_kv_backward = staticmethod(modern.repeat_kv_backward)

    def swiglu_forward(self, x, w_gate, b_gate, w_up, b_up, w_down, b_down):
        """nn.swiglu.swiglu_forward with the gate and up projections as one product, their
        weights side by side (measured: ~3% faster than two products, the copy included), and
        the gating in one kernel pass."""
        au, _ = self.linear_forward(x, _side_by_side(w_gate, w_up), _side_by_side(b_gate, b_up))  # (..., 2F)
        y, down = self.linear_forward(modern.swiglu_gate(au), w_down, b_down)  # (..., C)
        return y, modern.SwiGLUCache(x, au, w_gate, w_up, down)

    def swiglu_backward(self, dy, cache, dw_gate, db_gate, dw_up, db_up, dw_down, db_down):
        """nn.swiglu.swiglu_backward: da and du are written in the place of a and u, and dx
        is one product with the side-by-side weights."""
        dh = self.linear_backward(dy, cache.down, dw_down, db_down)  # (..., F)
        F = dh.shape[-1]
        x2 = cache.x.reshape(-1, cache.x.shape[-1])  # (N, C)
        dau = modern.swiglu_gate_backward(dh, cache.au).reshape(-1, 2 * F)  # (N, 2F) [da | du]
        for half, dw, db in ((slice(None, F), dw_gate, db_gate), (slice(F, None), dw_up, db_up)):
            self._weight_grad(x2, dau[:, half], dw)
            if db is not None:
                self._bias_grad(dau[:, half], db)
        return (dau @ _side_by_side(cache.w_gate, cache.w_up).T).reshape(cache.x.shape)


def _side_by_side(a, b):
    """[a | b] along the last axis: the gate's and the up projection's weights (C, F) each ->
    (C, 2F), or their biases (F,) -> (2F,); None when neither has one (a missing one of the
    two counts as zeros)."""
    if a is None and b is None:
        return None
    a, b = (np.zeros_like(b) if a is None else a), (np.zeros_like(a) if b is None else b)
    return np.concatenate([a, b], axis=-1)


def _address(a):
    """(first byte, size) of an array: the same for a slot and its transposed view."""
    return a.__array_interface__["data"][0], a.size
