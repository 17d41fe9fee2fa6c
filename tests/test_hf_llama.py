"""Hugging Face Llama interop: GPT.from_hf / save_hf against transformers' LlamaForCausalLM
(and Qwen3ForCausalLM, which is Llama with QK-norm).

Nothing is downloaded: the HF models are built at random from small, odd-shaped configs (4
query heads and 2 KV heads, or 1; an MLP width of 100, not 4C; RoPE base 5000 and RMSNorm eps
1e-5, neither the default), then every weight is redrawn: gains around 1 but not 1, biases
not 0, matrices at a scale where attention is not uniform, so a dropped gain, a transposed
matrix or a mis-split q/k/v changes the logits.

Two precisions, two truths:
- float32: transformers exactly as shipped (eager attention), our float32 model. Logits within
  1e-4 absolute, loss within 1e-5 relative: the difference is float32 rounding in different
  orders, and HF computing the RoPE angles in float32 where we use float64.
- float64: HF's model cast to float64 is not float64 throughout: LlamaRMSNorm casts its input
  to float32 (a downcast from float64), the rotary embedding computes its angles in float32,
  eager attention takes its softmax in float32 and HF's `labels` loss casts the logits to
  float32. So the float64 test patches RMSNorm and the rotary embedding to compute the same
  formulas in their input's dtype (monkeypatch, this test only), uses SDPA attention (float64
  in torch on the CPU) and takes the loss with torch's cross_entropy. Everything else is
  transformers' own code; logits, loss and every gradient then agree to about 1e-15 (tested
  at 1e-12). Unpatched, the same float64 comparison differs by about 1.5e-6 in the logits.
"""
import dataclasses
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never reach the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file as load_torch_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM)
from transformers.models.llama import modeling_llama  # noqa: E402
from transformers.models.qwen3 import modeling_qwen3  # noqa: E402

import vintagelm  # noqa: E402

V, C, H, FF, L, BLOCK = 61, 48, 4, 100, 2, 32
D = C // H
THETA, EPS = 5000.0, 1e-5
# name -> (HF kind, n_kv_head, tied head, biases)
VARIANTS = {
    "gqa": ("llama", 2, False, False),
    "tied": ("llama", 2, True, False),
    "mqa": ("llama", 1, False, False),
    "biases": ("llama", 2, False, True),
    "qwen3": ("qwen3", 2, False, False),
}
LOGITS_ATOL_F32, LOSS_RTOL_F32 = 2e-5, 1e-6
LOGITS_ATOL_F64, LOSS_RTOL_F64, GRAD_RTOL_F64 = 1e-12, 1e-13, 1e-12


def random_hf_model(variant, seed=0, attn="eager"):
    kind, kv, tied, bias = VARIANTS[variant]
    common = dict(vocab_size=V, hidden_size=C, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=H,
                  num_key_value_heads=kv, max_position_embeddings=BLOCK, rms_norm_eps=EPS, rope_theta=THETA,
                  tie_word_embeddings=tied, attention_bias=bias, bos_token_id=0, eos_token_id=0,
                  attn_implementation=attn)
    if kind == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=D))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, mlp_bias=bias))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):  # RMSNorm gains (and QK-norm's): around 1, not 1
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:  # (out, in); the embedding (V, C) too, so a tied head's logits are about N(0, 1)
                p.copy_(noise / p.shape[1] ** 0.5)
    return model.eval()


def hf_as_ours(t):
    """HF tensors (params or grads, by HF name) -> our names, written from the spec's table:
    HF stores linear weights (out, in), we store (in, out); q, k, v pack into c_attn."""
    def linear(name):
        return t[name].T

    ours = {"wte.weight": t["model.embed_tokens.weight"], "ln_f.weight": t["model.norm.weight"]}
    if "lm_head.weight" in t:
        ours["lm_head.weight"] = t["lm_head.weight"]
    for i in range(L):
        hf, me = f"model.layers.{i}.", f"h.{i}."
        ours[me + "ln_1.weight"] = t[hf + "input_layernorm.weight"]
        ours[me + "ln_2.weight"] = t[hf + "post_attention_layernorm.weight"]
        qkv = [hf + f"self_attn.{x}_proj" for x in "qkv"]
        ours[me + "attn.c_attn.weight"] = np.concatenate([linear(n + ".weight") for n in qkv], axis=1)
        ours[me + "attn.c_proj.weight"] = linear(hf + "self_attn.o_proj.weight")
        ours[me + "mlp.c_gate.weight"] = linear(hf + "mlp.gate_proj.weight")
        ours[me + "mlp.c_fc.weight"] = linear(hf + "mlp.up_proj.weight")
        ours[me + "mlp.c_proj.weight"] = linear(hf + "mlp.down_proj.weight")
        if hf + "self_attn.q_proj.bias" in t:
            ours[me + "attn.c_attn.bias"] = np.concatenate([t[n + ".bias"] for n in qkv])
            ours[me + "attn.c_proj.bias"] = t[hf + "self_attn.o_proj.bias"]
            ours[me + "mlp.c_gate.bias"] = t[hf + "mlp.gate_proj.bias"]
            ours[me + "mlp.c_fc.bias"] = t[hf + "mlp.up_proj.bias"]
            ours[me + "mlp.c_proj.bias"] = t[hf + "mlp.down_proj.bias"]
        if hf + "self_attn.q_norm.weight" in t:
            ours[me + "attn.q_norm.weight"] = t[hf + "self_attn.q_norm.weight"]
            ours[me + "attn.k_norm.weight"] = t[hf + "self_attn.k_norm.weight"]
    return ours


def hf_params(hf):
    return {k: v.detach().numpy().copy() for k, v in hf.named_parameters()}


def check_params(parity, model, expected):
    """Every parameter there, each exactly `expected` (loading moves numbers, it computes nothing)."""
    assert set(model.params) == set(expected)
    for name in sorted(expected):
        parity.check(f"param {name}", model.params[name], expected[name])
    parity.assert_ok()


def random_batch(B=3, T=17, seed=0):
    """idx (B, T) and next-token targets, the last position ignored (-1): the positions HF's
    `labels=idx` scores (it shifts the labels left and pads with its ignore index)."""
    idx = np.random.default_rng(seed).integers(0, V, size=(B, T), dtype=np.int64)
    targets = np.concatenate([idx[:, 1:], np.full((B, 1), -1)], axis=1)
    return idx, targets


def saved(hf, folder):
    hf.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- float64 without HF's float32 steps
def rmsnorm_in_input_dtype(self, x):
    """LlamaRMSNorm.forward's formula without its cast to float32."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def rope_in_input_dtype(self, x, position_ids):
    """LlamaRotaryEmbedding.forward (plain RoPE) with the inverse frequencies and angles in x's
    dtype instead of float32: half-split pairs, the angle table repeated for both halves."""
    dim = 2 * self.inv_freq.shape[-1]  # the head size D
    inv_freq = self.config.rope_parameters["rope_theta"] ** (-torch.arange(0, dim, 2, dtype=x.dtype) / dim)
    angles = position_ids[..., None].to(x.dtype) * inv_freq  # (B, T, D/2)
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


@pytest.fixture
def hf_float64(monkeypatch):
    for module, prefix in ((modeling_llama, "Llama"), (modeling_qwen3, "Qwen3")):
        monkeypatch.setattr(getattr(module, prefix + "RMSNorm"), "forward", rmsnorm_in_input_dtype)
        monkeypatch.setattr(getattr(module, prefix + "RotaryEmbedding"), "forward", rope_in_input_dtype)


# ---------------------------------------------------------------- loading
def test_from_hf_reads_the_llama_config_and_every_weight(parity, tmp_path):
    hf = random_hf_model("gqa", seed=1)
    model = vintagelm.GPT.from_hf(str(saved(hf, tmp_path)))
    cfg = model.config
    assert (cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.n_embd, cfg.mlp_width) == (
        V, BLOCK, L, H, 2, C, FF)
    assert (cfg.norm, cfg.norm_type, cfg.pos, cfg.activation, cfg.bias, cfg.tie_weights, cfg.qk_norm) == (
        "pre", "rms", "rope", "swiglu", False, False, False)
    assert (cfg.rope_theta, cfg.norm_eps) == (THETA, EPS)
    check_params(parity, model, hf_as_ours(hf_params(hf)))  # float32 both sides: exactly


def test_from_hf_reads_the_transformers_4_rope_spelling(tmp_path):
    """transformers 4.x wrote rope_theta at the top level and rope_scaling null."""
    folder = saved(random_hf_model("gqa"), tmp_path)
    hf_config = json.loads((folder / "config.json").read_text())
    hf_config.pop("rope_parameters")
    hf_config.update(rope_theta=THETA, rope_scaling=None)
    (folder / "config.json").write_text(json.dumps(hf_config))
    assert vintagelm.GPT.from_hf(str(folder)).config.rope_theta == THETA


@pytest.mark.parametrize("variant", VARIANTS)
def test_from_hf_gives_transformers_logits_and_loss(parity, tmp_path, backend, variant):
    """float32, transformers as shipped (its own loss from `labels`)."""
    hf = random_hf_model(variant, seed=2)
    model = vintagelm.GPT.from_hf(str(saved(hf, tmp_path)), backend=backend)
    idx, targets = random_batch(seed=3)
    logits, loss = model.forward(idx, targets)
    with torch.no_grad():
        out = hf(torch.as_tensor(idx), labels=torch.as_tensor(idx))
    parity.check("logits", logits, out.logits.numpy(), atol=LOGITS_ATOL_F32)
    parity.check("loss", loss, out.loss.item(), rtol=LOSS_RTOL_F32)
    parity.assert_ok()


@pytest.mark.parametrize("variant", VARIANTS)
def test_float64_logits_loss_and_every_gradient_match_torch_autograd(parity, tmp_path, backend, variant, hf_float64):
    hf = random_hf_model(variant, seed=4, attn="sdpa")
    model = vintagelm.GPT.from_hf(str(saved(hf, tmp_path)), dtype=np.float64, backend=backend)
    hf = hf.to(torch.float64)
    idx, targets = random_batch(seed=5)

    logits, loss = model.forward(idx, targets)
    model.backward()
    hf_logits = hf(torch.as_tensor(idx)).logits
    hf_loss = F.cross_entropy(hf_logits.reshape(-1, V), torch.as_tensor(targets).reshape(-1), ignore_index=-1)
    hf_loss.backward()

    parity.check("logits", logits, hf_logits.detach().numpy(), atol=LOGITS_ATOL_F64)
    parity.check("loss", loss, hf_loss.item(), rtol=LOSS_RTOL_F64)
    hf_grads = hf_as_ours({k: p.grad.numpy() for k, p in hf.named_parameters()})
    assert set(model.grads) == set(hf_grads)
    for name in sorted(hf_grads):
        parity.check(f"grad {name}", model.grads[name], hf_grads[name], rtol=GRAD_RTOL_F64)
    parity.assert_ok()


def test_a_bfloat16_checkpoint_loads_widened_exactly(parity, tmp_path):
    hf = random_hf_model("gqa", seed=6).to(torch.bfloat16)
    folder = saved(hf, tmp_path)
    assert {t.dtype for t in load_torch_file(folder / "model.safetensors").values()} == {torch.bfloat16}
    model = vintagelm.GPT.from_hf(str(folder))
    check_params(parity, model, hf_as_ours({k: v.detach().float().numpy() for k, v in hf.named_parameters()}))


def test_a_sharded_checkpoint_loads_like_one_file(parity, tmp_path):
    hf = random_hf_model("qwen3", seed=7)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    model = vintagelm.GPT.from_hf(str(tmp_path))
    check_params(parity, model, hf_as_ours(hf_params(hf)))


# ---------------------------------------------------------------- refusals
def edited_config(tmp_path, variant, **changes):
    folder = saved(random_hf_model(variant), tmp_path)
    hf_config = {**json.loads((folder / "config.json").read_text()), **changes}
    (folder / "config.json").write_text(json.dumps(hf_config))
    return folder


@pytest.mark.parametrize("variant, changes, named", [
    ("gqa", dict(rope_parameters={"rope_type": "llama3", "rope_theta": THETA, "factor": 8.0}), "rope_parameters"),
    ("gqa", dict(rope_parameters=None, rope_theta=THETA, rope_scaling={"type": "linear", "factor": 2.0}),
     "rope_scaling"),
    ("gqa", dict(hidden_act="gelu"), "hidden_act"),
    ("gqa", dict(head_dim=16), "head_dim"),
    ("gqa", dict(attention_bias=True), "attention_bias"),
    ("qwen3", dict(attention_bias=True), "attention_bias"),
    ("qwen3", dict(use_sliding_window=True, sliding_window=8), "sliding"),
    ("gqa", dict(model_type="mistral", architectures=["MistralForCausalLM"]), "mistral"),
], ids=["llama3-rope", "linear-rope", "gelu", "head-dim", "one-sided-bias", "qwen3-bias", "sliding", "mistral"])
def test_from_hf_refuses_what_we_do_not_compute_exactly(tmp_path, variant, changes, named):
    folder = edited_config(tmp_path, variant, **changes)
    with pytest.raises(vintagelm.UserError) as err:
        vintagelm.GPT.from_hf(str(folder))
    assert named in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_from_hf_reads_shards_only_from_its_own_folder(tmp_path):
    """A shard index naming a file outside the folder is refused, not followed."""
    folder = saved(random_hf_model("gqa"), tmp_path / "model")
    (folder / "model.safetensors").rename(tmp_path / "outside.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.embed_tokens.weight": "../outside.safetensors"}}))
    with pytest.raises(vintagelm.UserError, match="weight_map"):
        vintagelm.GPT.from_hf(str(folder))


def test_from_hf_refuses_weights_that_do_not_match_the_config(tmp_path):
    folder = edited_config(tmp_path, "gqa", num_key_value_heads=4)  # k_proj and v_proj hold 2 heads
    with pytest.raises(vintagelm.UserError, match="k_proj"):
        vintagelm.GPT.from_hf(str(folder))


# ---------------------------------------------------------------- saving
def perturb(model, seed):
    """Redraw our weights as random_hf_model does HF's: gains around 1, biases around 0,
    every matrix with unit-variance outputs for unit-variance inputs."""
    rng = np.random.default_rng(seed)
    for name in sorted(model.params):
        p = model.params[name]
        noise = rng.standard_normal(p.shape)
        if p.ndim == 1:
            p[...] = 0.2 * noise if name.endswith("bias") else 1.0 + 0.3 * noise
        else:  # ours are (in, out), the embedding and head (V, C)
            p[...] = noise / (C if name in ("wte.weight", "lm_head.weight") else p.shape[0]) ** 0.5


def our_config(variant):
    kind, kv, tied, bias = VARIANTS[variant]
    return vintagelm.GPTConfig(
        vocab_size=V, block_size=BLOCK, n_layer=L, n_head=H, n_kv_head=kv, n_embd=C, mlp_hidden=FF, dropout=0.0,
        bias=bias, norm="pre", norm_type="rms", norm_eps=EPS, pos="rope", rope_theta=THETA, activation="swiglu",
        tie_weights=tied, qk_norm=kind == "qwen3")


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_hf_loads_in_transformers_with_our_logits(parity, tmp_path, variant):
    model = vintagelm.GPT(our_config(variant), seed=0, dtype=np.float32)
    perturb(model, seed=8)
    out = tmp_path / "exported"
    model.save_hf(str(out))

    hf, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
    hf.eval()
    expected_class = Qwen3ForCausalLM if VARIANTS[variant][0] == "qwen3" else LlamaForCausalLM
    assert type(hf) is expected_class
    # nothing silently re-initialised: every HF tensor came from our file
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    c = hf.config
    assert (c.num_key_value_heads, c.intermediate_size, c.rms_norm_eps, c.rope_parameters["rope_theta"]) == (
        VARIANTS[variant][1], FF, EPS, THETA)
    assert hf_as_ours(hf_params(hf)).keys() == model.params.keys()

    idx, targets = random_batch(B=2, T=BLOCK, seed=9)
    logits, loss = model.forward(idx, targets)
    with torch.no_grad():
        out_hf = hf(torch.as_tensor(idx), labels=torch.as_tensor(idx))
    parity.check("logits", logits, out_hf.logits.numpy(), atol=LOGITS_ATOL_F32)
    parity.check("loss", loss, out_hf.loss.item(), rtol=LOSS_RTOL_F32)

    again = vintagelm.GPT.from_hf(str(out))  # and back: the same model, exactly
    assert again.config == model.config
    for name in sorted(model.params):
        parity.check(f"roundtrip {name}", again.params[name], model.params[name])
    parity.assert_ok()


@pytest.mark.parametrize("overrides", [
    dict(qk_norm=True, bias=True),  # Qwen3 has QK-norm but no MLP biases; Llama has no QK-norm
    dict(norm="post"),
    dict(pos="learned"),
    dict(norm_type="layer"),
], ids=["qk-norm-with-biases", "post-norm", "learned-positions", "layer-norm"])
def test_save_hf_refuses_what_neither_llama_nor_gpt2_computes(tmp_path, overrides):
    model = vintagelm.GPT(dataclasses.replace(our_config("gqa"), **overrides), seed=0)
    with pytest.raises(vintagelm.UserError, match="save_hf writes"):
        model.save_hf(str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
