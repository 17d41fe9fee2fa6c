"""The table of ops a model calls, taken straight from the pairs in this package: the
reference backend. The fast backend (vintagelm/fast/ops.py) is a subclass that replaces some
entries with compiled or threaded versions of the same mathematics.

A model calls every op through this table (`self.ops.linear_forward(...)`), so switching
backends changes which function runs and never what the model's code says.

The gradient rule, for every backward that has parameters: it ADDS its gradient into the
slot it is given (`dw += ...`), and the model zeroes the slots first, inside
`with ops.gradients(grads, zero=True):`. Fan-out (a tied embedding used by the input and the
output head) then needs no special case.
"""
from contextlib import contextmanager
from functools import partial

from vintagelm.nn import attention, attention_tiled, dropout, embedding, linear, loss, mlp, norm

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

    def __init__(self):
        # GPTConfig.attention -> (forward(qkv, n_head, dropout_p, rng), backward(dy, cache))
        self.attention = {
            "naive": (attention.attention_forward, attention.attention_backward),
            "blocked": (partial(attention.attention_forward, chunk=ATTENTION_BLOCK), attention.attention_backward),
            "tiled": (attention_tiled.tiled_attention_forward, attention_tiled.tiled_attention_backward),
        }

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
