"""The table of ops a model calls, taken straight from the pairs in this package: the
reference backend. The fast backend (vintagelm/fast/ops.py) is a subclass that replaces some
entries with compiled or threaded versions of the same mathematics.

A model calls every op through this table (`self.ops.linear_forward(...)`), so switching
backends changes which function runs and never what the model's code says.

The gradient rule, for every backward that has parameters: it ADDS its gradient into the
slot it is given (`dw += ...`), and the model zeroes the slots first, inside
`with ops.gradients(grads, zero=True):`. Fan-out (a tied embedding used by the input and the
output head) then needs no special case. (The fast backend zeroes lazily, at a slot's first
write: an op that adds into a slot calls _zero_if_unwritten on it first, a no-op here.)

The modern block's ops (RMSNorm, RoPE, SwiGLU, grouped KV heads, QK-norm) are entries too; the
model calls the norms as (x, w, b, eps) and the MLPs with each layer's weight and bias side by
side, whichever variant its config chose.
"""
from contextlib import contextmanager
from functools import partial

from vintagelm.nn import (attention, attention_tiled, dropout, embedding, linear, loss, mlp, norm, rmsnorm, rope,
                          sdpa, swiglu)

ATTENTION_BLOCK = 64  # query rows per block of "blocked" attention: big enough to keep BLAS efficient


class ReferenceOps:
    name = "reference"

    embedding_forward = staticmethod(embedding.embedding_forward)
    embedding_backward = staticmethod(embedding.embedding_backward)
    linear_forward = staticmethod(linear.linear_forward)
    linear_backward = staticmethod(linear.linear_backward)
    layernorm_forward = staticmethod(norm.layernorm_forward)
    layernorm_backward = staticmethod(norm.layernorm_backward)
    mlp_forward = staticmethod(mlp.mlp_forward)
    mlp_backward = staticmethod(mlp.mlp_backward)
    dropout_forward = staticmethod(dropout.dropout_forward)
    dropout_backward = staticmethod(dropout.dropout_backward)
    cross_entropy_forward = staticmethod(loss.cross_entropy_forward)
    cross_entropy_backward = staticmethod(loss.cross_entropy_backward)
    attention_decode = staticmethod(attention.attention_decode)
    attention_decode_heads = staticmethod(attention.attention_decode_heads)
    rope_forward = staticmethod(rope.rope_forward)
    rope_backward = staticmethod(rope.rope_backward)
    repeat_kv_forward = staticmethod(sdpa.repeat_kv_forward)
    repeat_kv_backward = staticmethod(sdpa.repeat_kv_backward)

    def __init__(self):
        # GPTConfig.attention -> (forward(qkv, n_head, dropout_p, rng), backward(dy, cache))
        self.attention = {
            "naive": (attention.attention_forward, attention.attention_backward),
            "blocked": (partial(attention.attention_forward, chunk=ATTENTION_BLOCK), attention.attention_backward),
            "tiled": (attention_tiled.tiled_attention_forward, attention_tiled.tiled_attention_backward),
        }

    @staticmethod
    def rmsnorm_forward(x, w, b=None, eps=rmsnorm.RMS_EPS):
        """nn/rmsnorm.py's, called as layer norm is; an RMS norm has no bias (b is None)."""
        return rmsnorm.rmsnorm_forward(x, w, eps)

    def rmsnorm_backward(self, dy, cache, dw, db=None):
        self._zero_if_unwritten(dw)
        return rmsnorm.rmsnorm_backward(dy, cache, dw)

    def qk_norm_forward(self, q, k, w_q=None, w_k=None, eps=rmsnorm.RMS_EPS):
        """sdpa.qk_norm_forward through this table's RMSNorm (a head's query or key is one row of
        D), so a backend's faster RMSNorm serves QK-norm too."""
        (q, q_cache), (k, k_cache) = self.rmsnorm_forward(q, w_q, eps=eps), self.rmsnorm_forward(k, w_k, eps=eps)
        return (q, k), sdpa.QKNormCache(q_cache, k_cache)

    def qk_norm_backward(self, dq, dk, cache, dw_q=None, dw_k=None):
        """sdpa.qk_norm_backward through this table's RMSNorm; ADDS into the gain slots."""
        return self.rmsnorm_backward(dq, cache.q, dw_q), self.rmsnorm_backward(dk, cache.k, dw_k)

    @staticmethod
    def swiglu_forward(x, w_gate, b_gate, w_up, b_up, w_down, b_down):
        """nn/swiglu.py's, with each layer's weight and bias side by side (as mlp_forward)."""
        return swiglu.swiglu_forward(x, w_gate, w_up, w_down, b_gate, b_up, b_down)

    def swiglu_backward(self, dy, cache, dw_gate, db_gate, dw_up, db_up, dw_down, db_down):
        for slot in (dw_gate, db_gate, dw_up, db_up, dw_down, db_down):
            self._zero_if_unwritten(slot)
        return swiglu.swiglu_backward(dy, cache, dw_gate, dw_up, dw_down, db_gate, db_up, db_down)

    def norm(self, kind):
        """GPTConfig.norm_type -> (forward(x, w, b, eps), backward(dy, cache, dw, db))."""
        if kind == "rms":
            return self.rmsnorm_forward, self.rmsnorm_backward
        return self.layernorm_forward, self.layernorm_backward

    def _zero_if_unwritten(self, slot):
        """Nothing to do: gradients() zeroed every slot before the backward pass. The fast
        backend's table zeroes a slot at its first write instead, and overrides this."""

    @staticmethod
    def residual_add(x, f):
        """x + f: a residual connection, where the sublayer's output f joins its input x (and,
        in backward, the two gradient paths of a residual join again). f must be a fresh array
        that nothing else holds: the fast backend adds x into it in place."""
        return x + f

    @contextmanager
    def gradients(self, grads, zero):
        """The backward pass adds into `grads` (name -> array) inside this block; zero=True
        clears them first (zero=False keeps them: gradient accumulation)."""
        if zero:
            for g in grads.values():
                g.fill(0.0)
        yield
