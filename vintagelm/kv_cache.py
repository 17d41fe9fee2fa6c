"""KVCache: the keys and values a GPT has computed, kept for decoding one token at a time.

Without it every new token re-runs attention over the whole window (O(T^2) per token); with
it each new token computes only its own query, key and value and attends over the cached
ones (O(T)). generate.py drives it; model.GPT.forward(idx, kv_cache=...) fills it.
"""
import numpy as np


class KVCache:
    """Keys and values of every layer for up to max_len positions, allocated once.

    k, v: (L, B, Hkv, T_max, D), Hkv the model's key/value heads: n_head, or fewer with
    grouped-query attention, whose query heads share them (the cache shrinks by n_head / Hkv).
    Keys are stored as the scores use them (after QK-norm and RoPE, where the model has them).
    The model's cached forward writes the new tokens' keys and values into `layer(i)` at
    [:, :, pos:pos+Tn] and then calls `advance(Tn)` once; positions >= pos hold stale data
    that is never read.
    """

    def __init__(self, n_layer, batch_size, n_kv_head, max_len, head_dim, dtype=np.float32):
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = np.zeros(shape, dtype=dtype)  # (L, B, Hkv, T_max, D)
        self.v = np.zeros(shape, dtype=dtype)  # (L, B, Hkv, T_max, D)
        self.pos = 0  # number of positions filled (the absolute position of the next token)

    @classmethod
    def for_model(cls, model, batch_size=1):
        """A cache that fits `model`: its kv heads, block_size positions, the model's dtype."""
        cfg = model.config
        return cls(cfg.n_layer, batch_size, cfg.kv_heads, cfg.block_size, cfg.head_dim, model.dtype)

    @property
    def max_len(self):
        return self.k.shape[3]

    @property
    def nbytes(self):
        """Bytes the cache holds: 2 (keys and values) * L * B * Hkv * T_max * D * itemsize."""
        return self.k.nbytes + self.v.nbytes

    def layer(self, i):
        """(k, v) views of layer i, each (B, Hkv, T_max, D); writes go straight into the cache."""
        return self.k[i], self.v[i]

    def advance(self, n):
        """Mark n more positions as filled (called by the model after every layer wrote them)."""
        if self.pos + n > self.max_len:
            raise ValueError(f"KV cache overflow: {self.pos} + {n} positions exceed max_len {self.max_len}")
        self.pos += n

    def reset(self):
        """Forget everything; the buffers are reused, not reallocated."""
        self.pos = 0
