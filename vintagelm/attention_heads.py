"""The attention sublayer's heads: everything between c_attn and c_proj, for every switch.

c_attn projects each position to q (H heads), k and v (Hkv heads each; Hkv = H but for
grouped-query attention), side by side along the channels. Then, in order:
    QK-norm      (qk_norm)             RMSNorm of each head's q and k over D, gains (D,) shared by the heads
    RoPE         (pos="rope")          q and k rotated by their positions start .. start + T - 1
    grouped KV   (n_kv_head < n_head)  each kv head copied out to its group of H / Hkv query heads
and the result, packed back into the (B, T, 3C) layout, goes to the causal attention op the
config chose (naive, blocked or tiled; the fast backend's versions too), so every attention
variant serves every switch. Backward reads the same steps in reverse: the attention op's
dqkv is unpacked, the copies' gradients summed into their kv heads (repeat_kv_backward), the
rotations undone (rope_backward), the norms differentiated (qk_norm_backward), and the result
packed into c_attn's output layout.

With none of the three switches on (GPT-2), c_attn's output goes to the attention op as it
is: the same calls, the same numbers as before the switches existed.

Decoding with a KV cache stores the keys after QK-norm and RoPE (a cached key never moves
again) and only the Hkv heads: the grouped decode (nn/attention.py) shares them in place.
Every op is called through the backend's op table (nn/ops.py).
"""
from typing import NamedTuple

from vintagelm.nn.attention import grouped_heads, pack_heads, qkv_heads
from vintagelm.nn.rope import rope_tables


class HeadsCache(NamedTuple):
    attn: tuple  # the causal attention op's cache (over the packed (B, T, 3C) q, k, v)
    norm: tuple | None  # QKNormCache, or None without QK-norm
    rope: tuple | None  # RopeCache (the tables of these positions), or None without RoPE
    repeat: tuple  # RepeatKVCache: how k and v were copied out to H heads


class AttentionHeads:
    """The heads of one model (every layer alike); the layers' QK-norm gains are passed in."""

    def __init__(self, config, ops, dtype):
        self.ops, self.dropout = ops, config.dropout
        self.n_head, self.n_kv_head = config.n_head, config.kv_heads
        self.attention_forward, self.attention_backward = ops.attention[config.attention]
        self.qk_norm_eps = config.norm_eps if config.qk_norm else None
        self.rope = None  # cos, sin (block_size, D / 2): every position a sequence can have
        if config.pos == "rope":
            self.rope = rope_tables(config.block_size, config.head_dim, config.rope_theta, dtype=dtype)
        self.reshapes = config.qk_norm or self.rope is not None or self.n_kv_head != self.n_head

    def forward(self, qkv, gains, rng, kv=None):
        """qkv (B, T, (H + 2 Hkv) D), c_attn's output, and the QK-norm gains (w_q, w_k), each
        (D,) or None -> y (B, T, H D), c_proj's input, and the cache. rng None: no dropout.
        kv = (k_cache, v_cache, pos) decodes positions pos.. against a KV cache (no cache kept)."""
        ops = self.ops
        if not self.reshapes:
            if kv is None:
                return self.attention_forward(qkv, self.n_head, self.dropout, rng)
            return ops.attention_decode(qkv, self.n_head, *kv), None
        q, k, v = grouped_heads(qkv, self.n_head, self.n_kv_head)  # (B, H or Hkv, T, D) views
        norm = rope = None
        if self.qk_norm_eps is not None:
            (q, k), norm = ops.qk_norm_forward(q, k, *gains, eps=self.qk_norm_eps)
        if self.rope is not None:
            start, T = (0 if kv is None else kv[2]), qkv.shape[1]
            q, rope = ops.rope_forward(q, *(table[start : start + T] for table in self.rope))
            k, _ = ops.rope_forward(k, *rope)
        if kv is not None:
            return ops.attention_decode_heads(q, k, v, *kv), None
        k, repeat = ops.repeat_kv_forward(k, self.n_head // self.n_kv_head)  # (B, H, T, D)
        v, _ = ops.repeat_kv_forward(v, self.n_head // self.n_kv_head)
        y, attn = self.attention_forward(pack_heads(q, k, v), self.n_head, self.dropout, rng)
        return y, HeadsCache(attn, norm, rope, repeat)

    def backward(self, dy, cache, gain_grads):
        """dy (B, T, H D) -> the gradient of c_attn's output (B, T, (H + 2 Hkv) D); ADDS into
        the QK-norm gains' slots (dw_q, dw_k) when there are gains."""
        ops = self.ops
        if not self.reshapes:
            return self.attention_backward(dy, cache)
        dq, dk, dv = qkv_heads(self.attention_backward(dy, cache.attn), self.n_head)  # (B, H, T, D) views
        dk = ops.repeat_kv_backward(dk, cache.repeat)  # (B, Hkv, T, D)
        dv = ops.repeat_kv_backward(dv, cache.repeat)
        if cache.rope is not None:
            dq, dk = ops.rope_backward(dq, cache.rope), ops.rope_backward(dk, cache.rope)
        if cache.norm is not None:
            dq, dk = ops.qk_norm_backward(dq, dk, cache.norm, *gain_grads)
        return pack_heads(dq, dk, dv)
