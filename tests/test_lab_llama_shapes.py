"""The lab on Llama-shaped models (RoPE, grouped kv heads, QK-norm, RMSNorm, SwiGLU): the attention
weights it extracts (trained_gpt.attention_weights, which `vintage lab attention-maps` and
`vintage report` draw) and the KV cache it sizes (`vintage lab kv-cache`).

The independent truth for the weights: q, k and v cut out of c_attn's output by the spec's
layout [q (H D) | k (Hkv D) | v (Hkv D)], QK-norm and RoPE written out here as Hugging Face
writes them (rotate_half), and the probabilities of nn/sdpa.py's textbook attention, which
shares kv head j with query heads j * H / Hkv .. (j + 1) * H / Hkv - 1 itself."""
import dataclasses
import json

import numpy as np
import pytest

from vintagelm import cli
from vintagelm.lab.trained_gpt import attention_weights
from vintagelm.model import GPT, GPTConfig
from vintagelm.nn.sdpa import causal_attend_mask, sdpa_forward

LLAMA = dict(norm_type="rms", pos="rope", activation="swiglu", bias=False, tie_weights=False)
CONFIGS = {
    "gpt2": {},
    "llama gqa qk-norm": dict(LLAMA, n_kv_head=2, qk_norm=True),
    "llama mqa qk-norm": dict(LLAMA, n_kv_head=1, qk_norm=True),
    "llama gqa": dict(LLAMA, n_kv_head=2),
    "post-norm rope mqa qk-norm bias": dict(norm="post", pos="rope", n_kv_head=1, qk_norm=True),
}
T = 12


def tiny_model(switches, dtype):
    """4 query heads of D = 8, weights redrawn large (N(0, 1)) so that attention is far from
    uniform and a step left out shows."""
    config = GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0, **switches)
    model = GPT(config, seed=1, dtype=dtype, backend="reference").eval()
    model.flat_params[:] = np.random.default_rng(2).standard_normal(model.flat_params.size)
    for name, p in model.params.items():  # QK-norm caps each score near |gain|^2 sqrt(D): larger gains let heads focus
        if name.endswith(("q_norm.weight", "k_norm.weight")):
            p *= 3.0
    return model


def rms_heads(x, gain, eps):
    """x (1, heads, T, D) RMS-normalised over D, times the (D,) gain."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * gain


def rope_hf(x, theta):
    """x (1, heads, T, D) rotated as HF Llama's apply_rotary_pos_emb: x cos + rotate_half(x) sin."""
    D = x.shape[-1]
    angles = np.arange(x.shape[2])[:, None] * theta ** (-np.arange(0, D, 2) / D)  # (T, D/2)
    cos, sin = (np.concatenate([f(angles)] * 2, axis=-1) for f in (np.cos, np.sin))  # (T, D)
    rotated_half = np.concatenate([-x[..., D // 2 :], x[..., : D // 2]], axis=-1)
    return x * cos + rotated_half * sin


def spec_probabilities(cfg, params, h, i):
    """Layer i's attention probabilities (H, T, T) from its c_attn input h (1, T, C), by the spec."""
    p = f"h.{i}.attn."
    H, Hkv, D = cfg.n_head, cfg.kv_heads, cfg.head_dim
    qkv = h.astype(np.float64) @ params[p + "c_attn.weight"] + params.get(p + "c_attn.bias", 0.0)

    def heads(first, n):  # channels first .. first + n D -> (1, n, T, D)
        return qkv[0, :, first * D : (first + n) * D].reshape(-1, n, D).transpose(1, 0, 2)[None]

    q, k, v = heads(0, H), heads(H, Hkv), heads(H + Hkv, Hkv)
    if cfg.qk_norm:
        q = rms_heads(q, params[p + "q_norm.weight"], cfg.norm_eps)
        k = rms_heads(k, params[p + "k_norm.weight"], cfg.norm_eps)
    if cfg.pos == "rope":
        q, k = rope_hf(q, cfg.rope_theta), rope_hf(k, cfg.rope_theta)
    _, cache = sdpa_forward(q, k, v, causal_attend_mask(T, T))
    return cache.att[0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_attention_weights_follow_the_model_heads(name, dtype):
    model = tiny_model(CONFIGS[name], dtype)
    ids = np.random.default_rng(3).integers(0, 17, T)
    maps, gap = attention_weights(model, ids)
    model.forward(ids[None], ids[None])  # with targets the forward keeps each block's inputs
    blocks = model._cache["blocks"]
    assert len(maps) == len(blocks) == 2
    assert gap < (1e-12 if dtype == np.float64 else 1e-4)  # weights @ v is what the model fed c_proj (|v| ~ 5)
    for i, (P, block) in enumerate(zip(maps, blocks)):
        assert P.shape == (4, T, T) and P.dtype == np.float64
        np.testing.assert_allclose(P.sum(axis=-1), 1.0, atol=1e-12)
        assert np.all(np.triu(P, k=1) == 0.0)  # nothing from the future
        truth = spec_probabilities(model.config, model.params, block["c_attn"].x, i)
        np.testing.assert_allclose(P, truth, atol=1e-12 if dtype == np.float64 else 1e-5)
        uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]  # what q = 0 or k = 0 gives
        assert np.abs(P - uniform).max() > 0.15  # far from it: a wrong q or k could not match by chance


def test_the_rotation_and_norm_are_not_optional():
    """The truth above must tell a step apart: the same Llama model's weights without RoPE or
    without QK-norm differ from the extracted ones."""
    model = tiny_model(CONFIGS["llama gqa qk-norm"], np.float64)
    ids = np.random.default_rng(3).integers(0, 17, T)
    maps, _ = attention_weights(model, ids)
    model.forward(ids[None], ids[None])
    h = model._cache["blocks"][0]["c_attn"].x
    np.testing.assert_allclose(maps[0], spec_probabilities(model.config, model.params, h, 0), atol=1e-12)
    for switch in (dict(pos="none"), dict(qk_norm=False)):
        wrong = spec_probabilities(dataclasses.replace(model.config, **switch), model.params, h, 0)
        assert np.abs(wrong - maps[0]).max() > 0.05


# ------------------------------------------------------------------------------------ kv-cache
def test_kv_cache_of_grouped_heads(tmp_path, monkeypatch, capsys):
    """--kv-heads 1 (multi-query): the cache holds one kv head of D = 16 per layer, 4x smaller
    than the 4 query heads would need, measured at every length and in the model's own cache."""
    monkeypatch.setenv("VINTAGELM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "kv"
    assert cli.main(["lab", "kv-cache", "--quick", "--kv-heads", "1", "--block-size", "16", "--repeats", "1",
                     "--no-progress", "--out", str(out)]) == 0
    assert "4x smaller" in capsys.readouterr().out
    r = json.loads((out / "results.json").read_text(encoding="utf-8"))
    m, cfg = r["memory"], r["model"]
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_kv_head"], cfg["n_embd"]) == (2, 4, 1, 64)
    per_position = 2 * 2 * 1 * 16 * 4  # k and v, L = 2, Hkv = 1, D = 16, float32
    assert m["nbytes"] == m["formula_bytes"] == [per_position * T for T in m["lengths"]]
    assert all(0 <= a - n < 4096 for a, n in zip(m["allocated_bytes"], m["nbytes"]))  # NumPy allocated that much
    assert m["model_cache_bytes"] == m["model_cache_formula_bytes"] == per_position * 16
    assert r["max_logit_difference"] < 1e-4  # the grouped cached decode gives the full forward's logits


def test_kv_heads_must_divide_the_query_heads(tmp_path, capsys):
    for bad in ("3", "0"):
        assert cli.main(["lab", "kv-cache", "--quick", "--kv-heads", bad, "--no-progress",
                         "--out", str(tmp_path / "kv")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--kv-heads" in err
    assert not (tmp_path / "kv").exists()


# ------------------------------------------------------------------------------ attention-maps
def test_attention_maps_of_a_llama_run(tmp_path, monkeypatch, capsys):
    """`vintage lab attention-maps` on a run trained with every modern switch (4 query heads
    sharing 2 kv heads): one map per query head, each row a distribution over the past, and
    weights @ v equal to what the model fed c_proj."""
    monkeypatch.setenv("VINTAGELM_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "small.txt"
    text.write_text("To be, or not to be, that is the question:\n" * 60, encoding="utf-8")
    switches = ["n_layer=2", "n_embd=32", "n_head=4", "n_kv_head=2", "block_size=32", "pos=rope", "norm_type=rms",
                "activation=swiglu", "qk_norm=true", "bias=false", "tie_weights=false", "sample_tokens=0"]
    assert cli.main(["train", "--data", str(text), "--max-iters", "2", "--no-progress", "--out", str(tmp_path / "run"),
                     *(arg for s in switches for arg in ("--set", s))]) == 0
    out = tmp_path / "maps"
    assert cli.main(["lab", "attention-maps", str(tmp_path / "run"), "--prompt", "To be, or not to be, that is",
                     "--quick", "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    r = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (r["model"]["n_kv_head"], r["model"]["pos"], r["model"]["qk_norm"]) == (2, "rope", True)
    assert r["check_max_difference"] < 1e-5
    assert list(r["heads"]) == ["layer 0", "layer 1"] and all(len(layer) == 4 for layer in r["heads"].values())
    T = len(r["tokens"])
    for layer in r["heads"].values():
        for n in layer.values():
            assert n["entropy_bits"][0] == 0.0  # row 0 can only see itself
            assert len(n["entropy_bits"]) == T
            assert all(0 <= e <= np.log2(t + 1) + 1e-9 for t, e in enumerate(n["entropy_bits"]))
