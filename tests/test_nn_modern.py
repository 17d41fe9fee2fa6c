"""The modern nn/ pairs (rmsnorm, rope, silu and swiglu, sdpa with grouped KV heads and QK-norm)
against three independent truths:
  - central finite differences in float64, for every input and parameter of every op;
  - torch autograd on the same function written in torch, run in float64: our forward and every
    gradient within 1e-10 in float64, and within 1e-5 when ours runs in float32 (errors measured
    against the largest reference magnitude of each tensor, as in tests/conftest.py);
  - Hugging Face's own Llama pieces (LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb,
    repeat_kv, LlamaMLP, eager_attention_forward), when transformers is importable.
The textbook sdpa is also checked equal to the model's causal attention op (attention.py).
Run `pytest tests/test_nn_modern.py --parity-report` to see the error of every tensor.
"""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never reach the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vintagelm.gradcheck import numerical_gradient, relative_error  # noqa: E402
from vintagelm.nn.attention import (  # noqa: E402
    attention_backward,
    attention_decode,
    attention_forward,
    merge_heads,
    qkv_heads,
    split_heads,
)
from vintagelm.nn.rmsnorm import rmsnorm_backward, rmsnorm_forward  # noqa: E402
from vintagelm.nn.rope import (  # noqa: E402
    half_split_order,
    half_split_to_interleaved,
    interleaved_to_half_split,
    rope_backward,
    rope_forward,
    rope_tables,
)
from vintagelm.nn.sdpa import (  # noqa: E402
    causal_attend_mask,
    qk_norm_backward,
    qk_norm_forward,
    repeat_kv_backward,
    repeat_kv_forward,
    sdpa_backward,
    sdpa_forward,
)
from vintagelm.nn.swiglu import silu_backward, silu_forward, swiglu_backward, swiglu_forward  # noqa: E402

FD_TOL = 1e-6  # relative error of the analytic gradient against central differences
RTOL = {np.float64: 1e-10, np.float32: 1e-5}  # against torch float64


@pytest.fixture(scope="module")
def llama():
    """transformers' Llama module (its functions and classes), or skip where it is missing."""
    return pytest.importorskip("transformers.models.llama.modeling_llama")


def rand(rng, *shape):
    return rng.standard_normal(shape)


def slot(like):
    """A gradient slot starting at ones, so a backward that assigns instead of adding fails;
    the test subtracts the ones again."""
    return np.ones_like(like)


def finite_differences(f, inputs, dy):
    """For each array of `inputs`: d sum(f(*inputs) * dy) / d that array, by central differences."""
    grads = []
    for i, x in enumerate(inputs):
        def with_input(v, i=i):
            args = list(inputs)
            args[i] = v
            return f(*args)

        grads.append(numerical_gradient(with_input, x, dy))
    return grads


def torch_autograd(f, inputs, dy):
    """f written in torch, run in float64 on the same values -> (y, [d sum(y * dy) / d input])."""
    tensors = [torch.tensor(np.asarray(x, np.float64), requires_grad=True) for x in inputs]
    y = f(*tensors)
    (y * torch.as_tensor(np.asarray(dy, np.float64))).sum().backward()
    return y.detach().numpy(), [t.grad.numpy() for t in tensors]


def check_op(parity, pair, torch_f, inputs, dy, names):
    """The three-way check of one op on one case. `pair(*inputs, dy)` runs our forward and
    backward -> (y, [gradient of each input]); `torch_f(*tensors)` is the same function in
    torch. Ours in float64 against finite differences and against torch; ours in float32 (on
    the inputs rounded to float32) against torch float64 on those same values."""
    _, grads = pair(*inputs, dy)
    numeric = finite_differences(lambda *args: pair(*args, dy)[0], inputs, dy)
    for name, g, n in zip(names, grads, numeric):
        parity.record(f"d{name} vs finite differences", relative_error(g, n), 1.0, rtol=FD_TOL)
    for dtype in (np.float64, np.float32):
        rounded = [x.astype(dtype) for x in inputs]
        y, grads = pair(*rounded, dy.astype(dtype))
        assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
        ref_y, ref_grads = torch_autograd(torch_f, rounded, dy.astype(dtype))
        parity.check(f"y {dtype.__name__}", y, ref_y, rtol=RTOL[dtype])
        for name, g, ref in zip(names, grads, ref_grads):
            parity.check(f"d{name} {dtype.__name__}", g, ref, rtol=RTOL[dtype])
    parity.assert_ok()


# ---- RMSNorm ----------------------------------------------------------------------------------


def torch_rmsnorm(x, w, eps):
    y = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps)
    return y if w is None else y * w


@pytest.mark.parametrize("shape", [(1, 1, 4), (2, 5, 6), (3, 2, 7)])
@pytest.mark.parametrize("eps", [1e-6, 0.5])  # a large eps makes its term of the gradient count
def test_rmsnorm(parity, shape, eps):
    rng = np.random.default_rng(shape[-1])
    x, dy = rand(rng, *shape) * 2 + 0.5, rand(rng, *shape)
    w = 1 + 0.3 * rand(rng, shape[-1])

    def pair(x, w, dy):
        y, cache = rmsnorm_forward(x, w, eps)
        dw = slot(w)
        dx = rmsnorm_backward(dy, cache, dw)
        return y, [dx, dw - 1]

    check_op(parity, pair, lambda x, w: torch_rmsnorm(x, w, eps), [x, w], dy, ["x", "w"])


def test_rmsnorm_without_gain(parity):
    rng = np.random.default_rng(1)
    x, dy = rand(rng, 2, 3, 5), rand(rng, 2, 3, 5)

    def pair(x, dy):
        y, cache = rmsnorm_forward(x, None)
        return y, [rmsnorm_backward(dy, cache)]

    check_op(parity, pair, lambda x: torch_rmsnorm(x, None, 1e-6), [x], dy, ["x"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rmsnorm_matches_llama_rmsnorm(parity, llama, dtype):
    """LlamaRMSNorm normalises in float32 even for float64 inputs, so in both dtypes it is
    within float32 rounding of ours (1e-6 when the rounding is theirs alone, 1e-5 when both)."""
    rng = np.random.default_rng(2)
    C, eps = 10, 1e-5
    x, dy, w = rand(rng, 2, 4, C), rand(rng, 2, 4, C), 1 + 0.3 * rand(rng, C)
    hf = llama.LlamaRMSNorm(C, eps=eps).to(dtype)
    with torch.no_grad():
        hf.weight.copy_(torch.as_tensor(w))
    tx = torch.tensor(x, dtype=dtype, requires_grad=True)
    ref = hf(tx)
    (ref * torch.as_tensor(dy, dtype=dtype)).sum().backward()
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    y, cache = rmsnorm_forward(x.astype(np_dtype), w.astype(np_dtype), eps)
    dw = np.zeros(C, np_dtype)
    dx = rmsnorm_backward(dy.astype(np_dtype), cache, dw)
    rtol = {np.float64: 1e-6, np.float32: 1e-5}[np_dtype]
    parity.check("y", y, ref.detach().numpy(), rtol=rtol)
    parity.check("dx", dx, tx.grad.numpy(), rtol=rtol)
    parity.check("dw", dw, hf.weight.grad.numpy(), rtol=rtol)
    parity.assert_ok()


# ---- RoPE ---------------------------------------------------------------------------------------


def torch_rope(x, positions, theta):
    """HF Llama's formula written out: x * cos + rotate_half(x) * sin, with each angle twice in
    the tables. x (B, H, T, D); positions (T,) or (B, T)."""
    D = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.as_tensor(positions, dtype=torch.float64)[..., None] * inv_freq
    emb = torch.cat([angles, angles], dim=-1)  # (T, D) or (B, T, D)
    if emb.ndim == 3:
        emb = emb[:, None]  # one table for every head
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return x * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()


@pytest.mark.parametrize("B,H,T,D", [(1, 1, 1, 2), (2, 3, 5, 6), (1, 2, 7, 10)])
@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("theta", [10000.0, 50.0])
def test_rope(parity, B, H, T, D, offset, theta):
    rng = np.random.default_rng(D + T)
    x, dy = rand(rng, B, H, T, D), rand(rng, B, H, T, D)
    cos, sin = rope_tables(T, D, theta, offset)
    assert cos.shape == sin.shape == (T, D // 2)

    def pair(x, dy):
        y, cache = rope_forward(x, cos.astype(x.dtype), sin.astype(x.dtype))
        return y, [rope_backward(dy, cache)]

    positions = np.arange(offset, offset + T)
    check_op(parity, pair, lambda x: torch_rope(x, positions, theta), [x], dy, ["x"])


def test_rope_per_row_offsets(parity):
    """An offset per batch row (rows decoding at different lengths): tables (B, 1, T, D/2)."""
    rng = np.random.default_rng(4)
    B, H, T, D = 3, 2, 4, 8
    offsets = np.array([0, 5, 2])
    x, dy = rand(rng, B, H, T, D), rand(rng, B, H, T, D)
    cos, sin = rope_tables(T, D, 10000.0, offsets)
    assert cos.shape == (B, 1, T, D // 2)

    def pair(x, dy):
        y, cache = rope_forward(x, cos.astype(x.dtype), sin.astype(x.dtype))
        return y, [rope_backward(dy, cache)]

    positions = offsets[:, None] + np.arange(T)  # (B, T)
    check_op(parity, pair, lambda x: torch_rope(x, positions, 10000.0), [x], dy, ["x"])


def test_rope_offset_decodes_at_the_right_positions():
    """Rope of a whole sequence, sliced at position t, equals rope of that one token with
    offset t (how a KV cache decodes); a per-row offset gives each row its own slice."""
    rng = np.random.default_rng(5)
    B, H, T, D = 2, 3, 9, 6
    x = rand(rng, B, H, T, D)
    full, _ = rope_forward(x, *rope_tables(T, D))
    for t in range(T):
        one, _ = rope_forward(x[:, :, t : t + 1], *rope_tables(1, D, offset=t))
        np.testing.assert_allclose(one, full[:, :, t : t + 1], rtol=0, atol=1e-14)
    offsets = np.array([2, 6])
    rows, _ = rope_forward(np.stack([x[0, :, 2:5], x[1, :, 6:9]]), *rope_tables(3, D, offset=offsets))
    np.testing.assert_allclose(rows[0], full[0, :, 2:5], rtol=0, atol=1e-14)
    np.testing.assert_allclose(rows[1], full[1, :, 6:9], rtol=0, atol=1e-14)


def test_rope_scores_depend_only_on_distance():
    """The point of RoPE: a query at m and a key at n score q·k as a function of m - n alone,
    and every vector keeps its length."""
    rng = np.random.default_rng(6)
    D = 10
    q, k = rand(rng, 1, 1, 1, D), rand(rng, 1, 1, 1, D)

    def at(x, pos):
        return rope_forward(x, *rope_tables(1, D, offset=pos))[0].reshape(D)

    scores = {(m, n): at(q, m) @ at(k, n) for m in range(12) for n in range(12)}
    for (m, n), s in scores.items():
        assert s == pytest.approx(scores[(m - n, 0)] if m >= n else scores[(0, n - m)], abs=1e-12)
    assert len({round(s, 6) for s in scores.values()}) > 12  # not trivially constant
    assert np.linalg.norm(at(q, 7)) == pytest.approx(np.linalg.norm(q), rel=1e-13)


def test_rope_matches_transformers(parity, llama):
    """LlamaRotaryEmbedding's tables (float32 angles, hence atol 1e-5 at these positions) and
    apply_rotary_pos_emb with our float64 tables, forward and gradients."""
    from transformers import LlamaConfig

    rng = np.random.default_rng(7)
    B, H, Hkv, T, D, theta, offset = 2, 4, 2, 5, 6, 500.0, 11
    config = LlamaConfig(hidden_size=H * D, num_attention_heads=H, num_key_value_heads=Hkv, head_dim=D,
                         rope_theta=theta)
    positions = torch.arange(offset, offset + T)[None].expand(B, T)
    q32 = torch.zeros(B, H, T, D)
    hf_cos, hf_sin = llama.LlamaRotaryEmbedding(config)(q32, positions)  # (B, T, D), each angle twice
    cos, sin = rope_tables(T, D, theta, offset)  # (T, D/2)
    for name, hf_table, ours in [("cos table", hf_cos, cos), ("sin table", hf_sin, sin)]:
        parity.check(name, np.concatenate([ours, ours], axis=-1)[None].repeat(B, 0), hf_table.numpy(), atol=1e-5)

    q, k = rand(rng, B, H, T, D), rand(rng, B, Hkv, T, D)
    dq, dk = rand(rng, B, H, T, D), rand(rng, B, Hkv, T, D)
    tq, tk = (torch.tensor(a, requires_grad=True) for a in (q, k))
    both = torch.as_tensor(np.concatenate([cos, cos], axis=-1))[None].expand(B, T, D)
    both_sin = torch.as_tensor(np.concatenate([sin, sin], axis=-1))[None].expand(B, T, D)
    ref_q, ref_k = llama.apply_rotary_pos_emb(tq, tk, both, both_sin)
    ((ref_q * torch.as_tensor(dq)).sum() + (ref_k * torch.as_tensor(dk)).sum()).backward()
    yq, cache_q = rope_forward(q, cos, sin)
    yk, cache_k = rope_forward(k, cos, sin)
    parity.check("q rotated", yq, ref_q.detach().numpy(), rtol=1e-12)
    parity.check("k rotated", yk, ref_k.detach().numpy(), rtol=1e-12)
    parity.check("dq", rope_backward(dq, cache_q), tq.grad.numpy(), rtol=1e-12)
    parity.check("dk", rope_backward(dk, cache_k), tk.grad.numpy(), rtol=1e-12)
    parity.assert_ok()


def meta_rope(x, positions, theta):
    """The RoPE paper's and Meta's original Llama code, in torch: neighbouring channels
    (2i, 2i + 1) as one complex number, multiplied by e^(i * angle). x (B, H, T, D)."""
    D = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.outer(torch.as_tensor(positions, dtype=torch.float64), inv_freq)  # (T, D/2)
    turn = torch.polar(torch.ones_like(angles), angles)
    as_complex = torch.view_as_complex(x.reshape(*x.shape[:-1], D // 2, 2).contiguous())
    return torch.view_as_real(as_complex * turn).flatten(-2)


def test_interleaved_weights_convert_to_half_split():
    """Projections made for interleaved pairs, converted, rotated our way: each head's channels
    equal Meta's interleaved rotation of the original projections in half-split order, and so
    every score q·k is the same. Without the conversion the scores differ."""
    rng = np.random.default_rng(8)
    B, T, C, H, Hkv, D, theta, offset = 2, 5, 12, 4, 2, 6, 10000.0, 3
    x = rand(rng, B, T, C)
    w_q, w_k, b_q = rand(rng, C, H * D), rand(rng, C, Hkv * D), rand(rng, H * D)
    positions = np.arange(offset, offset + T)
    cos, sin = rope_tables(T, D, theta, offset)

    def meta(w, b, n):  # (B, n, T, D) rotated Meta's way
        return meta_rope(torch.as_tensor(split_heads(x @ w + b, n)), positions, theta).numpy()

    def ours(w, b, n):
        return rope_forward(split_heads(x @ w + b, n), cos, sin)[0]

    zero_k = np.zeros(Hkv * D)
    q_meta, k_meta = meta(w_q, b_q, H), meta(w_k, zero_k, Hkv)
    q_ours = ours(interleaved_to_half_split(w_q, H), interleaved_to_half_split(b_q, H), H)
    k_ours = ours(interleaved_to_half_split(w_k, Hkv), zero_k, Hkv)
    order = half_split_order(D)
    np.testing.assert_allclose(q_ours, q_meta[..., order], rtol=0, atol=1e-12)
    np.testing.assert_allclose(k_ours, k_meta[..., order], rtol=0, atol=1e-12)

    def scores(q, k):  # each query head against its group's kv head
        return q @ np.repeat(k, H // Hkv, axis=1).transpose(0, 1, 3, 2)

    np.testing.assert_allclose(scores(q_ours, k_ours), scores(q_meta, k_meta), rtol=0, atol=1e-11)
    unconverted = scores(ours(w_q, b_q, H), ours(w_k, zero_k, Hkv))
    assert np.abs(unconverted - scores(q_meta, k_meta)).max() > 0.1
    np.testing.assert_array_equal(half_split_to_interleaved(interleaved_to_half_split(w_q, H), H), w_q)
    assert list(half_split_order(6)) == [0, 2, 4, 1, 3, 5]


def test_rope_rejects_odd_head_size():
    with pytest.raises(ValueError, match="even head size"):
        rope_tables(4, 7)


# ---- SiLU and SwiGLU ------------------------------------------------------------------------


def test_silu(parity):
    rng = np.random.default_rng(9)
    x, dy = rand(rng, 3, 4, 7) * 4, rand(rng, 3, 4, 7)

    def pair(x, dy):
        y, cache = silu_forward(x)
        return y, [silu_backward(dy, cache)]

    check_op(parity, pair, F.silu, [x], dy, ["x"])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_silu_far_tails(parity, dtype):
    """No overflow (or 0/0) at huge |x|, and the tiny negative tail keeps its relative precision
    (underflow to 0 is allowed: torch gives 0 there too)."""
    x = np.array([-1000.0, -80.0, -30.0, -5.0, 0.0, 5.0, 30.0, 1000.0], dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y, cache = silu_forward(x)
        dx = silu_backward(np.ones_like(x), cache)
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    ref = F.silu(tx)
    ref.sum().backward()
    rtol = RTOL[dtype] * 10  # entrywise, where the references range over 40 orders of magnitude
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=rtol, atol=0)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol, atol=0)


@pytest.mark.parametrize("C,F_hidden", [(6, 16), (5, 7), (8, 1)])  # hidden width not 4C
@pytest.mark.parametrize("bias", [False, True])
def test_swiglu(parity, C, F_hidden, bias):
    rng = np.random.default_rng(C * F_hidden)
    x, dy = rand(rng, 2, 3, C), rand(rng, 2, 3, C)
    weights = [rand(rng, C, F_hidden), rand(rng, C, F_hidden), rand(rng, F_hidden, C)]
    biases = [rand(rng, F_hidden), rand(rng, F_hidden), rand(rng, C)] if bias else []

    def pair(x, *args):
        params, dy = args[:-1], args[-1]
        y, cache = swiglu_forward(x, *params)
        slots = [slot(p) for p in params]
        dx = swiglu_backward(dy, cache, *slots)
        return y, [dx] + [s - 1 for s in slots]

    def torch_swiglu(x, w_gate, w_up, w_down, b_gate=0, b_up=0, b_down=0):
        return (F.silu(x @ w_gate + b_gate) * (x @ w_up + b_up)) @ w_down + b_down

    names = ["x", "w_gate", "w_up", "w_down"] + (["b_gate", "b_up", "b_down"] if bias else [])
    check_op(parity, pair, torch_swiglu, [x, *weights, *biases], dy, names)


def test_swiglu_matches_llama_mlp(parity, llama):
    """HF's LlamaMLP ((out, in) weights, so ours are their transposes): output and gradients."""
    from transformers import LlamaConfig

    rng = np.random.default_rng(10)
    C, F_hidden = 6, 11
    config = LlamaConfig(hidden_size=C, intermediate_size=F_hidden, num_attention_heads=1, hidden_act="silu")
    mlp = llama.LlamaMLP(config).double()
    x, dy = rand(rng, 2, 5, C), rand(rng, 2, 5, C)
    names = ["gate_proj", "up_proj", "down_proj"]
    with torch.no_grad():
        for name in names:
            getattr(mlp, name).weight.normal_()
    tx = torch.tensor(x, requires_grad=True)
    ref = mlp(tx)
    (ref * torch.as_tensor(dy)).sum().backward()
    weights = [getattr(mlp, name).weight.detach().numpy().T.copy() for name in names]
    y, cache = swiglu_forward(x, *weights)
    slots = [np.zeros_like(w) for w in weights]
    dx = swiglu_backward(dy, cache, *slots)
    parity.check("y", y, ref.detach().numpy(), rtol=1e-12)
    parity.check("dx", dx, tx.grad.numpy(), rtol=1e-12)
    for name, g in zip(names, slots):
        parity.check(f"d{name}", g.T, getattr(mlp, name).weight.grad.numpy(), rtol=1e-12)
    parity.assert_ok()


# ---- scaled dot-product attention, grouped KV heads, QK-norm ------------------------------------


def random_mask(rng, kind, B, H, Tq, Tk):
    """None, causal (queries last), padding (B, 1, 1, Tk), or any (B, H, Tq, Tk) pattern, each
    with at least one key per query."""
    if kind == "none":
        return None
    if kind == "causal":
        return causal_attend_mask(Tq, Tk)
    shape = (B, 1, 1, Tk) if kind == "padding" else (B, H, Tq, Tk)
    mask = rng.random(shape) < 0.6
    mask[..., rng.integers(0, Tk)] = True
    return mask


SDPA_SHAPES = [  # (B, H, Hkv, Tq, Tk, D)
    (1, 1, 1, 1, 1, 2),
    (2, 4, 4, 3, 5, 6),  # multi-head, Tq < Tk
    (2, 4, 2, 5, 3, 6),  # grouped, Tq > Tk
    (1, 6, 1, 4, 4, 5),  # multi-query
    (2, 6, 3, 2, 7, 3),
]
SDPA_CASES = [(*shape, kind) for shape in SDPA_SHAPES for kind in ("none", "causal", "padding", "any")
              if not (kind == "causal" and shape[3] > shape[4])]  # causal queries are the last Tq of Tk


@pytest.mark.parametrize("B,H,Hkv,Tq,Tk,D,mask_kind", SDPA_CASES)
def test_sdpa(parity, B, H, Hkv, Tq, Tk, D, mask_kind):
    rng = np.random.default_rng(B + H + Hkv + Tq + Tk + D)
    q, k, v = rand(rng, B, H, Tq, D), rand(rng, B, Hkv, Tk, D), rand(rng, B, Hkv, Tk, D)
    dy = rand(rng, B, H, Tq, D)
    mask = random_mask(rng, mask_kind, B, H, Tq, Tk)

    def pair(q, k, v, dy):
        y, cache = sdpa_forward(q, k, v, mask)
        return y, list(sdpa_backward(dy, cache))

    def torch_sdpa(q, k, v):
        m = None if mask is None else torch.as_tensor(mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)

    check_op(parity, pair, torch_sdpa, [q, k, v], dy, ["q", "k", "v"])


def test_sdpa_with_given_scale(parity):
    rng = np.random.default_rng(11)
    q, k, v, dy = rand(rng, 1, 2, 3, 4), rand(rng, 1, 2, 6, 4), rand(rng, 1, 2, 6, 4), rand(rng, 1, 2, 3, 4)

    def pair(q, k, v, dy):
        y, cache = sdpa_forward(q, k, v, scale=0.9)
        return y, list(sdpa_backward(dy, cache))

    check_op(parity, pair, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.9),
             [q, k, v], dy, ["q", "k", "v"])


def test_causal_attend_mask():
    # 2 queries at positions 2 and 3 of 4: the first sees keys 0..2, the last all four
    np.testing.assert_array_equal(causal_attend_mask(2, 4), [[1, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(causal_attend_mask(3, 3), np.tril(np.ones((3, 3), bool)))
    with pytest.raises(ValueError, match="last positions"):
        causal_attend_mask(4, 2)


@pytest.mark.parametrize("B,T,C,H", [(1, 1, 4, 1), (2, 7, 12, 3), (3, 5, 10, 2)])
def test_sdpa_causal_equals_model_attention(B, T, C, H):
    """attention.py's causal op on a packed qkv is sdpa with the causal mask: output and the
    gradient of qkv, to rounding."""
    rng = np.random.default_rng(T * C)
    qkv, dy = rand(rng, B, T, 3 * C), rand(rng, B, T, C)
    y_model, cache_model = attention_forward(qkv, H)
    q, k, v = qkv_heads(qkv, H)  # (B, H, T, D) each
    y, cache = sdpa_forward(q, k, v, causal_attend_mask(T, T))
    np.testing.assert_allclose(merge_heads(y), y_model, rtol=0, atol=1e-13)
    dq, dk, dv = sdpa_backward(split_heads(dy, H), cache)
    dqkv = np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)
    np.testing.assert_allclose(dqkv, attention_backward(dy, cache_model), rtol=0, atol=1e-12)


def test_sdpa_last_queries_equal_cached_decode():
    """Tn new queries after `pos` cached tokens, with the causal mask for the last Tn of
    pos + Tn positions, equal attention.py's KV-cache decode."""
    rng = np.random.default_rng(12)
    B, C, H, pos, Tn, T_max = 2, 12, 3, 4, 3, 10
    D = C // H
    past = rand(rng, B, pos, 3 * C)  # the cached tokens' qkv
    new = rand(rng, B, Tn, 3 * C)
    k_cache, v_cache = np.zeros((B, H, T_max, D)), np.zeros((B, H, T_max, D))
    attention_decode(past, H, k_cache, v_cache, 0)
    y_decode = attention_decode(new, H, k_cache, v_cache, pos)
    _, k_past, v_past = qkv_heads(past, H)
    q, k_new, v_new = qkv_heads(new, H)
    k, v = np.concatenate([k_past, k_new], axis=2), np.concatenate([v_past, v_new], axis=2)
    y, _ = sdpa_forward(q, k, v, causal_attend_mask(Tn, pos + Tn))
    np.testing.assert_allclose(merge_heads(y), y_decode, rtol=0, atol=1e-13)


@pytest.mark.parametrize("n_rep", [1, 2, 3])
def test_repeat_kv(parity, llama, n_rep):
    rng = np.random.default_rng(n_rep)
    x, dy = rand(rng, 2, 2, 3, 4), rand(rng, 2, 2 * n_rep, 3, 4)
    y, cache = repeat_kv_forward(x, n_rep)
    np.testing.assert_array_equal(y, llama.repeat_kv(torch.as_tensor(x), n_rep).numpy())
    dx = repeat_kv_backward(dy, cache)
    assert relative_error(dx, numerical_gradient(lambda v: repeat_kv_forward(v, n_rep)[0], x, dy)) < FD_TOL


def test_sdpa_rejects_what_it_cannot_compute():
    q, kv = np.zeros((1, 4, 2, 3)), np.zeros((1, 3, 2, 3))
    with pytest.raises(ValueError, match="do not divide"):
        sdpa_forward(q, kv, kv)
    kv = np.zeros((1, 2, 2, 3))
    with pytest.raises(TypeError, match="boolean"):
        sdpa_forward(q, kv, kv, np.zeros((2, 2)))  # an additive mask of zeros
    with pytest.raises(ValueError, match="all False"):
        sdpa_forward(q, kv, kv, np.array([[True, False], [False, False]]))


@pytest.mark.parametrize("gains", [True, False])
def test_qk_norm_then_sdpa(parity, gains):
    """QK-norm and grouped attention together, against torch: every input and both gains."""
    rng = np.random.default_rng(13)
    B, H, Hkv, Tq, Tk, D, eps = 2, 4, 2, 3, 5, 6, 1e-6
    q, k, v = rand(rng, B, H, Tq, D) * 3, rand(rng, B, Hkv, Tk, D) * 3, rand(rng, B, Hkv, Tk, D)
    dy = rand(rng, B, H, Tq, D)
    w_gains = [1 + 0.3 * rand(rng, D), 1 + 0.3 * rand(rng, D)] if gains else []
    mask = causal_attend_mask(Tq, Tk)

    def pair(q, k, v, *args):
        w, dy = args[:-1], args[-1]
        (qn, kn), norm_cache = qk_norm_forward(q, k, *w, eps=eps)
        y, cache = sdpa_forward(qn, kn, v, mask)
        dqn, dkn, dv = sdpa_backward(dy, cache)
        slots = [slot(g) for g in w]
        dq, dk = qk_norm_backward(dqn, dkn, norm_cache, *slots)
        return y, [dq, dk, dv] + [s - 1 for s in slots]

    def torch_f(q, k, v, w_q=None, w_k=None):
        qn, kn = torch_rmsnorm(q, w_q, eps), torch_rmsnorm(k, w_k, eps)
        return F.scaled_dot_product_attention(qn, kn, v, attn_mask=torch.as_tensor(mask), enable_gqa=True)

    names = ["q", "k", "v"] + (["w_q", "w_k"] if gains else [])
    check_op(parity, pair, torch_f, [q, k, v, *w_gains], dy, names)


def test_qk_norm_commutes_with_rope_only_without_gain():
    rng = np.random.default_rng(14)
    x, w = rand(rng, 1, 2, 5, 8), 1 + 0.5 * rand(rng, 8)
    cos, sin = rope_tables(5, 8, offset=2)

    def norm_then_rope(gain):
        return rope_forward(rmsnorm_forward(x, gain)[0], cos, sin)[0]

    def rope_then_norm(gain):
        return rmsnorm_forward(rope_forward(x, cos, sin)[0], gain)[0]

    np.testing.assert_allclose(norm_then_rope(None), rope_then_norm(None), rtol=0, atol=1e-14)
    assert np.abs(norm_then_rope(w) - rope_then_norm(w)).max() > 0.01


def test_llama_attention_core_matches_transformers(parity, llama):
    """QK-norm (Qwen3-style, per head), RoPE at an offset, grouped heads and a causal mask for
    the last Tq queries, composed from our pairs, against transformers' apply_rotary_pos_emb
    and eager_attention_forward (an additive mask, repeat_kv): the output and the gradients of
    q, k, v and both gains. HF's eager attention takes its softmax in float32 whatever the
    dtype, so the two agree to float32 rounding (1e-6) even in float64; the norm is written in
    torch, since LlamaRMSNorm rounds to float32 as well (test_rmsnorm_matches_llama_rmsnorm)."""
    rng = np.random.default_rng(15)
    B, H, Hkv, Tq, Tk, D, eps, theta = 2, 6, 2, 3, 7, 8, 1e-6, 10000.0
    q, k, v = rand(rng, B, H, Tq, D), rand(rng, B, Hkv, Tk, D), rand(rng, B, Hkv, Tk, D)
    w_q, w_k, dy = 1 + 0.3 * rand(rng, D), 1 + 0.3 * rand(rng, D), rand(rng, B, H, Tq, D)
    mask = causal_attend_mask(Tq, Tk)

    # ours: norm, then rope (queries at positions Tk - Tq .., keys at 0 ..), then sdpa; back in reverse
    (qn, kn), norm_cache = qk_norm_forward(q, k, w_q, w_k, eps)
    q_rot, q_rope = rope_forward(qn, *rope_tables(Tq, D, theta, offset=Tk - Tq))
    k_rot, k_rope = rope_forward(kn, *rope_tables(Tk, D, theta))
    y, cache = sdpa_forward(q_rot, k_rot, v, mask)
    dq_rot, dk_rot, dv = sdpa_backward(dy, cache)
    dw_q, dw_k = np.zeros(D), np.zeros(D)
    dq, dk = qk_norm_backward(rope_backward(dq_rot, q_rope), rope_backward(dk_rot, k_rope), norm_cache, dw_q, dw_k)

    tq, tk, tv, tw_q, tw_k = (torch.tensor(a, requires_grad=True) for a in (q, k, v, w_q, w_k))

    def tables(T, offset):  # HF's (1, T, D) layout, each angle twice; from our float64 angles
        cos, sin = rope_tables(T, D, theta, offset)
        return (torch.as_tensor(np.concatenate([t, t], axis=-1))[None] for t in (cos, sin))

    # q and k sit at different positions, so each gets its own call (the second output unused)
    qn_ref, kn_ref = torch_rmsnorm(tq, tw_q, eps), torch_rmsnorm(tk, tw_k, eps)
    ref_q, _ = llama.apply_rotary_pos_emb(qn_ref, qn_ref, *tables(Tq, Tk - Tq))
    ref_k, _ = llama.apply_rotary_pos_emb(kn_ref, kn_ref, *tables(Tk, 0))
    additive = torch.as_tensor(np.where(mask, 0.0, -np.inf))[None, None]
    module = SimpleNamespace(num_key_value_groups=H // Hkv, training=False)
    ref, _ = llama.eager_attention_forward(module, ref_q, ref_k, tv, additive, scaling=D**-0.5)
    (ref * torch.as_tensor(dy).transpose(1, 2)).sum().backward()  # HF returns (B, Tq, H, D)
    parity.check("y", y, ref.detach().transpose(1, 2).numpy(), rtol=1e-6)
    for name, ours, theirs in [("dq", dq, tq.grad), ("dk", dk, tk.grad), ("dv", dv, tv.grad),
                               ("dw_q", dw_q, tw_q.grad), ("dw_k", dw_k, tw_k.grad)]:
        parity.check(name, ours, theirs.numpy(), rtol=1e-6)
    parity.assert_ok()
