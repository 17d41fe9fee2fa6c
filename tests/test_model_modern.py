"""The GPT with the modern block's switches (RMSNorm, RoPE, no positions, SwiGLU, grouped KV
heads, QK-norm, no biases, an untied head), each alone and all together, on both backends,
against three independent truths:
  - central finite differences of the loss in float64 (vintagelm/gradcheck.py);
  - the torch reference (tests/torch_gpt.py, written from the papers and HF's Llama, not from
    our code) on our weights: logits, loss and every gradient within 1e-10 of its largest
    magnitude in float64 and 1e-5 in float32; the reference itself is checked against
    transformers' LlamaForCausalLM and Qwen3ForCausalLM where transformers is installed;
  - the model's own full forward: decoding with the KV cache (RoPE at the cached positions,
    only the kv heads stored) gives the same logits at every step, and the cache's measured
    size is 2 * L * T * Hkv * D * itemsize.
Also: the config's new fields (checked, settable with --set, absent from old configs), the
parameter names and shapes of the spec, the init, the FLOP and memory counts, and the GPT-2
path left exactly as it was.

    pytest tests/test_model_modern.py --parity-report     the error of every tensor
"""
import math
import os
import tracemalloc

import numpy as np
import pytest

from vintagelm import GPT, GPTConfig
from vintagelm.common import UserError
from vintagelm.gradcheck import check_model
from vintagelm.memory import gpt_training_bytes
from vintagelm.train_config import TrainConfig, resolve_config
from test_model import memorise
from test_model_vs_torch import check_against_reference, make_batch, randomize

os.environ["HF_HUB_OFFLINE"] = "1"  # transformers, where a test imports it, never reaches the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"

SMALL = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=16)  # D = 4
LLAMA = dict(norm_type="rms", pos="rope", activation="swiglu", n_kv_head=2, bias=False, tie_weights=False)
SWITCHES = {  # each piece alone, then everything at once (with odd widths and non-default constants)
    "rms": dict(norm_type="rms"),
    "rope": dict(pos="rope"),
    "no-positions": dict(pos="none"),
    "swiglu": dict(activation="swiglu"),
    "swiglu-odd-width": dict(activation="swiglu", mlp_hidden=13),
    "gqa": dict(n_kv_head=2),
    "multi-query": dict(n_kv_head=1),
    "qk-norm": dict(qk_norm=True),
    "no-bias": dict(bias=False),
    "untied": dict(tie_weights=False),
    "all": dict(LLAMA, qk_norm=True, mlp_hidden=13, norm_eps=1e-6, rope_theta=500.0),
    "all-post-norm-mqa": dict(LLAMA, norm="post", n_kv_head=1, qk_norm=True, bias=True, rope_theta=100.0),
}
RTOL = {np.float64: (1e-10,) * 3, np.float32: (1e-5,) * 3}  # (loss, logits, gradients) against float64 torch


def config(**overrides):
    return GPTConfig(**{**SMALL, **overrides})


# ---------------------------------------------------------------- the whole model, every switch

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("switch", SWITCHES)
def test_parity_with_torch(parity, backend, switch, dtype):
    check_against_reference(parity, config(**SWITCHES[switch]), dtype, backend=backend, rtol=RTOL[dtype])


@pytest.mark.parametrize("switch", SWITCHES)
def test_gradients_match_finite_differences(switch, backend):
    """float64 central differences for every parameter tensor, dropout on (its masks replayed):
    every entry on the reference backend, a seeded sample of each tensor on the fast one (whose
    float64 path differs only in where slots are zeroed and how the batch is split)."""
    cfg = GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=4, n_embd=16, dropout=0.1, **SWITCHES[switch])
    results = check_model(cfg, batch_size=2, seq_len=5, samples=None if backend == "reference" else 6, backend=backend)
    bad = [(r.name, r.rel_error) for r in results if not r.ok]
    assert not bad, bad
    assert {r.name for r in results} == set(GPT.param_shapes(cfg))


@pytest.mark.parametrize("switch", ["all", "all-post-norm-mqa"])
def test_backward_leaves_nothing_of_the_previous_backward(switch, backend):
    """The fast backend writes a slot at its first write instead of zeroing every slot: after a
    backward on batch A, a backward on batch B gives exactly a fresh model's; accumulate=True
    gives the sum of the two."""
    cfg = config(**SWITCHES[switch])
    a, b = [make_batch(cfg.vocab_size, 2, 9, seed) for seed in (6, 7)]
    model, fresh = GPT(cfg, dtype=np.float64, backend=backend), GPT(cfg, dtype=np.float64, backend=backend)
    randomize(model.params, 1)
    fresh.flat_params[:] = model.flat_params
    model.forward(*a)
    model.backward()
    first = model.flat_grads.copy()
    for m in (model, fresh):
        m.forward(*b)
        m.backward()
    np.testing.assert_array_equal(model.flat_grads, fresh.flat_grads)
    model.forward(*a)
    model.backward(accumulate=True)
    np.testing.assert_allclose(model.flat_grads, first + fresh.flat_grads, rtol=1e-12, atol=1e-14)


def test_every_attention_variant_serves_the_switches(backend):
    """RoPE, grouped heads and QK-norm are packed for the attention op the config chose: naive,
    blocked (several 64-row blocks) and tiled (several 128-row tiles) give the same loss and
    gradients."""
    base = dict(vocab_size=17, block_size=150, n_layer=2, n_head=4, n_embd=16, **SWITCHES["all"])
    idx, tgt = make_batch(17, 2, 150, seed=4)
    out = {}
    for kind in ("naive", "blocked", "tiled"):
        model = GPT(GPTConfig(**base, attention=kind), seed=1, dtype=np.float64, backend=backend)
        randomize(model.params, 2)
        logits, loss = model.forward(idx, tgt)
        model.backward()
        out[kind] = (logits, loss, model.flat_grads.copy())
    for kind in ("blocked", "tiled"):
        np.testing.assert_allclose(out[kind][0], out["naive"][0], rtol=1e-12, atol=1e-12)
        assert out[kind][1] == pytest.approx(out["naive"][1], rel=1e-13)
        np.testing.assert_allclose(out[kind][2], out["naive"][2], rtol=1e-10, atol=1e-13)


def test_a_llama_shaped_model_learns(backend):
    """The pieces work together in training: a small Llama-shaped model memorises a sentence."""
    loss = memorise(backend, lr=1e-2, steps=60, n_head=4, qk_norm=True, **LLAMA)
    assert loss < 0.05, loss


# ---------------------------------------------------------------- the torch reference's own truth

def hf_state_dict(cfg, params):
    """Our parameters -> a Hugging Face LlamaForCausalLM / Qwen3ForCausalLM state dict, written
    from the spec's mapping (HF weights are (out, in): our transposes)."""
    import torch

    H, Hkv, D = cfg.n_head, cfg.kv_heads, cfg.head_dim
    t = {name: torch.as_tensor(np.asarray(p)) for name, p in params.items()}
    sd = {"model.embed_tokens.weight": t["wte.weight"], "model.norm.weight": t["ln_f.weight"],
          "lm_head.weight": t["lm_head.weight"]}
    for i in range(cfg.n_layer):
        ours, theirs = f"h.{i}.", f"model.layers.{i}."
        qkv = t[ours + "attn.c_attn.weight"]
        sd |= {theirs + "input_layernorm.weight": t[ours + "ln_1.weight"],
               theirs + "post_attention_layernorm.weight": t[ours + "ln_2.weight"],
               theirs + "self_attn.q_proj.weight": qkv[:, : H * D].T,
               theirs + "self_attn.k_proj.weight": qkv[:, H * D : (H + Hkv) * D].T,
               theirs + "self_attn.v_proj.weight": qkv[:, (H + Hkv) * D :].T,
               theirs + "self_attn.o_proj.weight": t[ours + "attn.c_proj.weight"].T,
               theirs + "mlp.gate_proj.weight": t[ours + "mlp.c_gate.weight"].T,
               theirs + "mlp.up_proj.weight": t[ours + "mlp.c_fc.weight"].T,
               theirs + "mlp.down_proj.weight": t[ours + "mlp.c_proj.weight"].T}
        if cfg.qk_norm:
            sd[theirs + "self_attn.q_norm.weight"] = t[ours + "attn.q_norm.weight"]
            sd[theirs + "self_attn.k_norm.weight"] = t[ours + "attn.k_norm.weight"]
    return sd


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_torch_reference_matches_transformers(parity, family):
    """tests/torch_gpt.py with the modern switches computes what transformers' Llama (no
    QK-norm) and Qwen3 (QK-norm) compute: the rotate_half RoPE, the kv head grouping and the
    norms' placement. HF's RMSNorm runs in float32 whatever the model's dtype, hence 1e-6."""
    transformers = pytest.importorskip("transformers")
    import torch
    from torch_gpt import TorchGPT

    cfg = config(**LLAMA, qk_norm=family == "qwen3", mlp_hidden=24, norm_eps=1e-6, rope_theta=1000.0)
    params = {name: np.array(p) for name, p in GPT(cfg, dtype=np.float64).params.items()}
    randomize(params, seed=3)
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.mlp_width,
                  num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
                  max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                  tie_word_embeddings=False, attention_bias=False, attn_implementation="eager")
    if family == "llama":
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, mlp_bias=False))
    else:
        hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common, head_dim=cfg.head_dim))
    hf = hf.to(torch.float64).eval()
    missing, unexpected = hf.load_state_dict(hf_state_dict(cfg, params), strict=False)
    assert not unexpected and all("rotary_emb" in m for m in missing), (missing, unexpected)
    idx = torch.as_tensor(make_batch(cfg.vocab_size, 2, 13, seed=4)[0])
    with torch.no_grad():
        theirs = hf(idx).logits.numpy()
        ours, _ = TorchGPT.from_numpy(cfg, params)(idx)
    parity.check("logits", ours.numpy(), theirs, 1e-6)
    parity.assert_ok()


# ---------------------------------------------------------------- decoding with the KV cache

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("switch", ["rope", "gqa", "multi-query", "all", "all-post-norm-mqa"])
def test_kv_cache_equals_full_recomputation(switch, dtype, backend):
    """Prefill, then chunks of 1 to 3 tokens at a time up to block_size, two rows at once:
    every step's logits equal a full forward over the sequence so far (RoPE's positions come
    from the cache's length, the grouped decode shares the stored kv heads)."""
    cfg = config(**SWITCHES[switch])
    model = GPT(cfg, seed=1, dtype=dtype, backend=backend).eval()
    randomize(model.params, 6)  # large, varied weights: a wrong position or a stale entry shows
    tokens = make_batch(cfg.vocab_size, 2, cfg.block_size, seed=7)[0]
    cache = model.new_kv_cache(batch_size=2)
    worst, scale, t = 0.0, 0.0, 0
    for n in (5, 1, 3, 1, 2, 1, 3):
        step, _ = model.forward(tokens[:, t : t + n], kv_cache=cache)  # (2, n, V)
        t += n
        full, _ = model.forward(tokens[:, :t])
        worst = max(worst, float(np.abs(step - full[:, t - n :]).max()))
        scale = max(scale, float(np.abs(full).max()))
    assert cache.pos == t == cfg.block_size
    assert worst <= (1e-12 if dtype == np.float64 else 2e-5) * scale, (worst, scale)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_kv_cache_stores_only_the_kv_heads(n_kv_head):
    """The cache holds (L, B, Hkv, T, D) keys and values: its bytes, counted from its arrays and
    measured as what NumPy allocated for them, are 2 * L * T * Hkv * D * itemsize per row."""
    cfg = config(**{**LLAMA, "n_kv_head": n_kv_head, "block_size": 64})
    L, T, D = cfg.n_layer, cfg.block_size, cfg.head_dim
    for dtype in (np.float32, np.float64):
        model = GPT(cfg, dtype=dtype)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            cache = model.new_kv_cache()
            allocated = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        expected = 2 * L * T * n_kv_head * D * np.dtype(dtype).itemsize
        assert cache.k.shape == cache.v.shape == (L, 1, n_kv_head, T, D)
        assert cache.nbytes == expected
        assert expected <= allocated <= expected + 1024, (allocated, expected)  # + the array objects
        model.forward(np.zeros((1, 3), dtype=np.int64), kv_cache=cache)
        assert np.abs(cache.k[:, :, :, :3]).sum() > 0 and not cache.k[:, :, :, 3:].any()


# ---------------------------------------------------------------- parameters, init, counts

def test_parameter_names_and_shapes_follow_the_spec():
    C, H, Hkv, D, F, V = 24, 6, 2, 4, 40, 37
    cfg = GPTConfig(vocab_size=V, block_size=16, n_layer=1, n_head=H, n_embd=C, qk_norm=True,
                    mlp_hidden=F, **{**LLAMA, "n_kv_head": Hkv})
    assert GPT.param_shapes(cfg) == {
        "wte.weight": (V, C),
        "h.0.ln_1.weight": (C,),
        "h.0.attn.c_attn.weight": (C, (H + 2 * Hkv) * D),
        "h.0.attn.q_norm.weight": (D,),
        "h.0.attn.k_norm.weight": (D,),
        "h.0.attn.c_proj.weight": (C, C),
        "h.0.ln_2.weight": (C,),
        "h.0.mlp.c_gate.weight": (C, F),
        "h.0.mlp.c_fc.weight": (C, F),
        "h.0.mlp.c_proj.weight": (F, C),
        "ln_f.weight": (C,),
        "lm_head.weight": (V, C),
    }
    with_bias = GPT.param_shapes(GPTConfig(**{**cfg.to_dict(), "bias": True}))
    assert with_bias["h.0.attn.c_attn.bias"] == ((H + 2 * Hkv) * D,) and with_bias["h.0.mlp.c_gate.bias"] == (F,)
    assert not any(name.endswith(("ln_1.bias", "ln_2.bias", "ln_f.bias")) for name in with_bias)  # RMSNorm: no bias


@pytest.mark.parametrize("C", [3, 16, 24, 128, 768, 4096])
def test_swiglu_default_width_is_two_thirds_of_4c_rounded_up_to_8(C):
    width = GPTConfig(n_embd=C, n_head=1, activation="swiglu").mlp_width
    smallest = next(F for F in range(8, 4 * C + 8, 8) if 3 * F >= 2 * 4 * C)  # the rule, by search
    assert width == smallest
    assert GPTConfig(n_embd=C, n_head=1).mlp_width == 4 * C
    assert GPTConfig(n_embd=C, n_head=1, activation="swiglu", mlp_hidden=7).mlp_width == 7


def test_init_gains_one_and_residual_projections_scaled():
    cfg = GPTConfig(vocab_size=64, block_size=8, n_layer=8, n_head=4, n_embd=128, qk_norm=True, **LLAMA)
    P = GPT(cfg).params
    for name in ("h.0.ln_1.weight", "h.0.attn.q_norm.weight", "h.0.attn.k_norm.weight", "ln_f.weight"):
        assert np.all(P[name] == 1), name
    assert P["h.0.mlp.c_gate.weight"].std() == pytest.approx(0.02, rel=0.05)
    assert P["h.0.mlp.c_fc.weight"].std() == pytest.approx(0.02, rel=0.05)
    assert P["h.0.mlp.c_proj.weight"].std() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    idx, targets = make_batch(64, 4, 8, seed=3)
    _, loss = GPT(cfg, seed=0).forward(idx, targets)
    assert abs(loss - math.log(64)) < 0.05 * math.log(64)  # small init: near a uniform guess


def test_flops_per_token_counts_the_new_shapes():
    cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=8, n_embd=128, qk_norm=True, **LLAMA)
    C, L, V, T, D, Hkv, F = 128, 4, 65, 64, 16, 2, 344
    per_block = C * (8 + 2 * Hkv) * D + C * C + 3 * C * F + 2 * C + 2 * D  # matrices, then the gains
    n = 2 * V * C + L * per_block + C  # wte, lm_head, blocks, ln_f
    assert GPT(cfg).flops_per_token() == 6 * n + 12 * L * C * T


@pytest.mark.parametrize("switches", [
    dict(activation="relu"), dict(LLAMA), dict(LLAMA, qk_norm=True, n_kv_head=1), dict(LLAMA, mlp_hidden=300),
], ids=["gpt2-mlp", "llama", "llama-mqa-qk-norm", "llama-wide"])
def test_memory_estimate_counts_what_backward_keeps(switches):
    """gpt_training_bytes less its four copies of the parameters is what a forward keeps for
    backward (and the logits): measured as the NumPy memory a forward leaves allocated, within
    5%, for GPT-2's 4C MLP, SwiGLU's four kept (B, T, F) arrays, at any width, and QK-norm's
    normalised queries and keys. (ReLU stands for GPT-2's MLP: the reference GELU computes in
    float64 from float32 inputs, which the estimate does not count.)"""
    cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64, attention="naive", **switches)
    B = 8
    idx, targets = make_batch(cfg.vocab_size, B, cfg.block_size, seed=0)
    model = GPT(cfg, backend="reference")
    tracemalloc.start()
    try:
        model.forward(idx, targets)
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    activations = gpt_training_bytes(cfg, B, 4) - 4 * 4 * model.num_params()
    assert 0.95 < activations / kept < 1.05, (activations, kept)


# ---------------------------------------------------------------- the config

@pytest.mark.parametrize("field,value", [
    ("n_kv_head", 3), ("n_kv_head", -1), ("n_kv_head", 1.5), ("mlp_hidden", -4), ("norm_eps", 0.0),
    ("norm_eps", float("nan")), ("rope_theta", -1.0), ("rope_theta", float("inf")), ("norm_type", "batch"),
    ("pos", "alibi"), ("activation", "geglu"), ("qk_norm", 1),
])
def test_invalid_new_fields_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        config(**{field: value})


def test_rope_needs_an_even_head_size():
    with pytest.raises(ValueError, match="pos.*even"):
        GPTConfig(n_embd=12, n_head=4, pos="rope")  # D = 3
    GPTConfig(n_embd=12, n_head=4, pos="learned")  # fine without RoPE


def test_gpt2_defaults_and_their_path_are_unchanged():
    """Every new field defaults to GPT-2, and naming the defaults explicitly (all kv heads,
    LayerNorm at 1e-5) gives bit for bit the same model and numbers on both backends."""
    cfg = config()
    assert (cfg.norm_type, cfg.norm_eps, cfg.pos, cfg.activation, cfg.kv_heads, cfg.qk_norm) == \
        ("layer", 1e-5, "learned", "gelu", 4, False)
    explicit = config(n_kv_head=4, norm_type="layer", norm_eps=1e-5, mlp_hidden=64, rope_theta=123.0)
    idx, targets = make_batch(cfg.vocab_size, 2, 9, seed=1)
    for backend in ("reference", "fast"):
        runs = []
        for c in (cfg, explicit):
            model = GPT(c, seed=2, backend=backend)
            logits, loss = model.forward(idx, targets)
            model.backward()
            runs.append((logits, loss, model.flat_grads.copy()))
        assert runs[0][1] == runs[1][1]
        assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][2], runs[1][2])


def test_new_fields_are_set_saved_and_optional():
    cfg = resolve_config(overrides=["norm_type=rms", "pos=rope", "activation=swiglu", "mlp_hidden=100", "n_kv_head=2",
                                    "qk_norm=true", "model.norm_eps=1e-6", "rope_theta=500000", "bias=false",
                                    "tie_weights=false"], backend="reference")
    m = cfg.model
    assert (m.norm_type, m.pos, m.activation, m.mlp_hidden, m.n_kv_head, m.qk_norm, m.norm_eps, m.rope_theta) == \
        ("rms", "rope", "swiglu", 100, 2, True, 1e-6, 500000.0)
    saved = cfg.to_dict()
    assert saved["model"]["n_kv_head"] == 2 and saved["model"]["norm_type"] == "rms"
    assert TrainConfig.from_dict(saved) == cfg
    # a config saved before these fields existed loads with GPT-2's behaviour
    old = dict(saved, model={k: v for k, v in saved["model"].items()
                             if k not in ("norm_type", "norm_eps", "rope_theta", "mlp_hidden", "n_kv_head", "qk_norm")
                             } | dict(pos="learned", activation="gelu"))
    assert TrainConfig.from_dict(old).model == GPTConfig(**old["model"])
    assert GPTConfig.from_dict(old["model"]).kv_heads == m.n_head
    assert TrainConfig.from_dict(old).model.norm_type == "layer"  # GPT-2's, not today's default tiny's
    # and a run saved before Muon existed trained (and resumes) with AdamW, today's default being Muon
    assert cfg.optimizer == "muon" and TrainConfig.from_dict(saved).optimizer == "muon"
    assert TrainConfig.from_dict({k: v for k, v in old.items() if not k.startswith(("optimizer", "muon_"))}
                                 ).optimizer == "adamw"
    for bad, field in (["n_kv_head=3"], "n_kv_head"), (["norm_eps=0"], "norm_eps"), (["qk_norm=maybe"], "qk_norm"):
        with pytest.raises(UserError, match=field):
            resolve_config(overrides=bad, backend="reference")
