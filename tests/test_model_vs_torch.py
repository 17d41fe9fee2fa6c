"""Whole-model parity: the NumPy GPT against the PyTorch reference (tests/torch_gpt.py).

Same weights (ours, copied into torch), same batch: logits, loss and every gradient must agree.
The reference always runs in float64 from our (exactly representable) weights, so it is the
true value of the function and the measured error is ours alone.

Tolerances, each error measured against the largest reference magnitude of its tensor
(max|ours - ref| <= rtol * max|ref|; for the loss that is plain relative error):
    float32 model: loss 1e-5, logits 1e-5, gradients 1e-4
    float64 model: loss 1e-12, logits 1e-12, gradients 1e-10
The reference itself is checked against torch.nn.TransformerEncoderLayer below (and against
Hugging Face GPT-2 in test_hf_interop.py), so it is not merely our own code agreeing with itself.

Run `pytest tests/test_model_vs_torch.py --parity-report` to see the error of every tensor.
"""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vintagelm
from torch_gpt import TorchGPT, sinusoidal_positions

SMALL = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
RTOL = {  # dtype -> (loss, logits, gradients)
    np.float32: (1e-5, 1e-5, 1e-4),
    np.float64: (1e-12, 1e-12, 1e-10),
}
VARIANTS = list(itertools.product(("pre", "post", "none"), ("learned", "sinusoidal"), (True, False), (True, False)))


def variant_id(v):
    norm, pos, tie, bias = v
    return f"{norm}-{pos}-{'tied' if tie else 'untied'}-{'bias' if bias else 'nobias'}"


def make_config(**overrides):
    return vintagelm.GPTConfig(**{**SMALL, **overrides})


def randomize(params, seed):
    """Overwrite every parameter in place with non-trivial values: the default init has zero
    biases and unit gains, under which a forgotten bias or gain would go unnoticed, and weights
    so small that attention is nearly uniform. Matrices get std 1/sqrt(rows) (rows = fan-in of
    x @ W), embeddings std 1, gains 1 +- 0.2, biases +- 0.2."""
    rng = np.random.default_rng(seed)
    for name in sorted(params):
        p = params[name]
        if name.startswith(("wte", "wpe", "lm_head")):
            value = rng.normal(0.0, 1.0, p.shape)
        elif p.ndim == 2:
            value = rng.normal(0.0, 1.0 / math.sqrt(p.shape[0]), p.shape)
        elif name.endswith(".weight"):
            value = 1.0 + rng.normal(0.0, 0.2, p.shape)
        else:
            value = rng.normal(0.0, 0.2, p.shape)
        p[...] = value  # in place: params may be views into one flat buffer


def make_batch(V, B, T, seed, n_ignored=0):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V, size=(B, T), dtype=np.int64)
    targets = rng.integers(0, V, size=(B, T), dtype=np.int64)
    if n_ignored:
        flat = targets.reshape(-1)  # a view: writes land in targets
        flat[rng.choice(flat.size, size=n_ignored, replace=False)] = -1
    return idx, targets


def reference(config, params, idx, targets):
    """float64 torch autograd on a copy of `params` -> (logits, loss, grads) as NumPy."""
    ref = TorchGPT.from_numpy(config, params, dtype=torch.float64)
    logits, loss = ref(torch.as_tensor(idx), torch.as_tensor(targets))
    loss.backward()
    return logits.detach().numpy(), loss.item(), ref.numpy_grads()


def check_against_reference(parity, config, dtype=np.float32, B=3, T=11, seed=0, n_ignored=0, backend="reference",
                            rtol=None):
    """Our logits, loss and every gradient against the reference's on randomized weights;
    rtol (loss, logits, gradients) defaults to RTOL[dtype]."""
    model = vintagelm.GPT(config, seed=0, dtype=dtype, backend=backend)
    randomize(model.params, seed)
    idx, targets = make_batch(config.vocab_size, B, T, seed + 1, n_ignored)

    logits, loss = model.forward(idx, targets)
    grads = model.backward()
    ref_logits, ref_loss, ref_grads = reference(config, model.params, idx, targets)

    assert set(grads) == set(model.params), f"grads keys differ from params: {set(grads) ^ set(model.params)}"
    assert set(ref_grads) == set(model.params)  # from_numpy already enforced this; kept as documentation
    rtol_loss, rtol_logits, rtol_grad = rtol or RTOL[dtype]
    parity.check("loss", loss, ref_loss, rtol_loss)
    parity.check("logits", logits, ref_logits, rtol_logits)
    for name in sorted(ref_grads):
        parity.check(name, grads[name], ref_grads[name], rtol_grad)
    parity.assert_ok()
    return model


# ----------------------------------------------------------------------------------------------
# the NumPy model against the reference


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_parity_float32(parity, backend, variant):
    norm, pos, tie, bias = variant
    check_against_reference(parity, make_config(norm=norm, pos=pos, tie_weights=tie, bias=bias), np.float32, backend=backend)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_parity_float64(parity, backend, variant):
    norm, pos, tie, bias = variant
    check_against_reference(parity, make_config(norm=norm, pos=pos, tie_weights=tie, bias=bias), np.float64, backend=backend)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("norm", ["pre", "post", "none"])
def test_parity_relu(parity, backend, norm, dtype):
    check_against_reference(parity, make_config(norm=norm, activation="relu"), dtype, backend=backend)


@pytest.mark.parametrize(
    "B, T, n_head",
    [(1, 1, 2), (1, 16, 2), (3, 11, 1), (2, 7, 4), (4, 1, 1)],
    ids=["B1-T1", "B1-Tfull", "H1", "H4", "B4-T1-H1"],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_parity_shapes(parity, backend, B, T, n_head, dtype):
    check_against_reference(parity, make_config(n_head=n_head, norm="post", pos="learned"), dtype, B=B, T=T, backend=backend)


@pytest.mark.parametrize("n_ignored", [5, 32], ids=["some", "all-but-one"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_parity_ignored_targets(parity, backend, n_ignored, dtype):
    # 3 x 11 = 33 targets; the loss is the mean over the ones that are not -1
    check_against_reference(parity, make_config(tie_weights=False), dtype, n_ignored=n_ignored, backend=backend)


def test_ignored_targets_do_not_count(parity):
    """Ignoring a position gives the same loss as the mean over the kept positions alone, and
    (through the reference check above) no gradient flows from it."""
    config = make_config()
    model = vintagelm.GPT(config, seed=0, dtype=np.float64)
    randomize(model.params, 3)
    idx, targets = make_batch(config.vocab_size, 2, 9, seed=4, n_ignored=6)
    logits, loss = model.forward(idx, targets)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))  # log-softmax, written out
    kept = targets != -1
    nll = -logp[kept, targets[kept]]
    parity.check("loss vs mean NLL of kept", loss, nll.mean(), 1e-12)
    parity.assert_ok()


def test_backward_is_fresh_each_step(parity, backend):
    """backward() returns the gradient of the LAST forward only (nothing left over from before)."""
    config = make_config(tie_weights=True, norm="pre")
    model = vintagelm.GPT(config, seed=0, dtype=np.float64, backend=backend)
    randomize(model.params, 5)
    for seed in (6, 7):  # a throwaway step on another batch first
        idx, targets = make_batch(config.vocab_size, 3, 11, seed)
        model.forward(idx, targets)
        grads = model.backward()
    _, _, ref_grads = reference(config, model.params, idx, targets)
    for name in sorted(ref_grads):
        parity.check(name, grads[name], ref_grads[name], RTOL[np.float64][2])
    parity.assert_ok()


def test_backward_needs_forward_with_targets():
    config = make_config()
    model = vintagelm.GPT(config, seed=0)
    with pytest.raises(Exception):
        model.backward()  # no forward at all
    idx, _ = make_batch(config.vocab_size, 2, 5, seed=0)
    logits, loss = model.forward(idx)
    assert loss is None and logits.shape == (2, 5, config.vocab_size)
    with pytest.raises(Exception):
        model.backward()  # forward without targets: there is no loss to differentiate


def test_forward_without_targets_matches(parity, backend):
    config = make_config(norm="post", pos="sinusoidal")
    model = vintagelm.GPT(config, seed=0, dtype=np.float64, backend=backend)
    randomize(model.params, 8)
    idx, targets = make_batch(config.vocab_size, 2, 16, seed=9)
    logits, loss = model.forward(idx)
    ref_logits, _, _ = reference(config, model.params, idx, targets)
    assert loss is None
    parity.check("logits", logits, ref_logits, RTOL[np.float64][1])
    parity.assert_ok()


@pytest.mark.parametrize("init", ["gpt2", "normal"])
@pytest.mark.parametrize("norm", ["pre", "post", "none"])
def test_init_forwards_finitely(init, norm):
    """Both init schemes (including the deliberately bad "normal") give finite logits and loss,
    the parameters they make have the reference's names and shapes, and their gradients are finite."""
    config = make_config(init=init, norm=norm, tie_weights=False)
    model = vintagelm.GPT(config, seed=1, dtype=np.float32)
    shapes = {name: tuple(p.shape) for name, p in TorchGPT(config).named_parameters()}
    assert {name: tuple(p.shape) for name, p in model.params.items()} == shapes
    idx, targets = make_batch(config.vocab_size, 3, 16, seed=2)
    logits, loss = model.forward(idx, targets)
    assert np.all(np.isfinite(logits)) and math.isfinite(loss)
    grads = model.backward()
    assert all(np.all(np.isfinite(g)) for g in grads.values())


@pytest.mark.parametrize("norm", ["pre", "post", "none"])
def test_gpt2_init_starts_near_uniform(norm):
    """With GPT-2's small init (std 0.02) the logits are near zero, so the first loss is close
    to that of a uniform guess, ln V."""
    config = make_config(init="gpt2", norm=norm)
    model = vintagelm.GPT(config, seed=0)
    idx, targets = make_batch(config.vocab_size, 4, 16, seed=3)
    _, loss = model.forward(idx, targets)
    assert abs(loss - math.log(config.vocab_size)) < 0.1, (loss, math.log(config.vocab_size))


@pytest.mark.parametrize("variant", VARIANTS[::5], ids=variant_id)
def test_num_params_counts_every_parameter(variant):
    norm, pos, tie, bias = variant
    config = make_config(norm=norm, pos=pos, tie_weights=tie, bias=bias)
    model = vintagelm.GPT(config, seed=0)
    assert model.num_params() == sum(p.numel() for p in TorchGPT(config).parameters())


def test_same_seed_same_params_and_float64_dtype():
    config = make_config()
    a, b = vintagelm.GPT(config, seed=3), vintagelm.GPT(config, seed=3)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    c = vintagelm.GPT(config, seed=4)
    assert not np.array_equal(a.params["wte.weight"], c.params["wte.weight"])
    m64 = vintagelm.GPT(config, seed=0, dtype=np.float64)
    assert all(p.dtype == np.float64 for p in m64.params.values())


# ----------------------------------------------------------------------------------------------
# the reference itself, against torch's own transformer layer (independent of our NumPy code)


def encoder_stack_logits(cfg, ref, idx):
    """The same GPT built from torch.nn.TransformerEncoderLayer (self_attn + linear1/2 + norm1/2),
    loaded from the reference's weights: x = wte[idx] + P, the layers with a causal mask,
    ln_f for pre-norm, logits = x @ headᵀ."""
    C, H = cfg["n_embd"], cfg["n_head"]
    act = (lambda h: F.gelu(h, approximate="tanh")) if cfg["activation"] == "gelu" else F.relu
    T = idx.shape[1]
    x = ref.wte.weight[idx] + ref.positions(T)
    mask = torch.triu(torch.full((T, T), float("-inf"), dtype=torch.float64), diagonal=1)
    for block in ref.h:
        layer = nn.TransformerEncoderLayer(
            C, H, dim_feedforward=4 * C, dropout=0.0, activation=act, layer_norm_eps=1e-5,
            batch_first=True, norm_first=cfg["norm"] == "pre", bias=cfg["bias"], dtype=torch.float64,
        )
        with torch.no_grad():
            # torch keeps (out, in) weights; ours are (in, out)
            layer.self_attn.in_proj_weight.copy_(block.attn.c_attn.weight.T)
            layer.self_attn.out_proj.weight.copy_(block.attn.c_proj.weight.T)
            layer.linear1.weight.copy_(block.mlp.c_fc.weight.T)
            layer.linear2.weight.copy_(block.mlp.c_proj.weight.T)
            if cfg["bias"]:
                layer.self_attn.in_proj_bias.copy_(block.attn.c_attn.bias)
                layer.self_attn.out_proj.bias.copy_(block.attn.c_proj.bias)
                layer.linear1.bias.copy_(block.mlp.c_fc.bias)
                layer.linear2.bias.copy_(block.mlp.c_proj.bias)
            if cfg["norm"] == "none":
                layer.norm1, layer.norm2 = nn.Identity(), nn.Identity()
            else:
                for theirs, mine in ((layer.norm1, block.ln_1), (layer.norm2, block.ln_2)):
                    theirs.weight.copy_(mine.weight)
                    if cfg["bias"]:
                        theirs.bias.copy_(mine.bias)
        layer.train()  # keeps torch off its fused inference path (dropout is 0 anyway)
        x = layer(x, src_mask=mask, is_causal=True)
    if cfg["norm"] == "pre":
        x = ref.ln_f(x)
    head = ref.wte.weight if cfg["tie_weights"] else ref.lm_head.weight
    return x @ head.T


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("norm", ["pre", "post", "none"])
def test_reference_matches_torch_encoder_layers(parity, norm, bias, activation):
    cfg = {**SMALL, "norm": norm, "bias": bias, "activation": activation, "pos": "sinusoidal", "tie_weights": not bias}
    ref = TorchGPT(cfg).to(torch.float64)
    params = ref.numpy_params()
    randomize(params, seed=11)
    ref.load_numpy(params)
    idx, _ = make_batch(SMALL["vocab_size"], 3, 13, seed=12)
    idx = torch.as_tensor(idx)
    with torch.no_grad():
        ours, _ = ref(idx)
        theirs = encoder_stack_logits(cfg, ref, idx)
    parity.check("logits", ours.numpy(), theirs.numpy(), 1e-12)
    parity.assert_ok()


def test_sinusoidal_table_closed_form():
    """Spot values of the 2017 table worked out by hand: row 0 is sin 0 = 0 / cos 0 = 1
    alternating; channels 0 and 1 have frequency 1 (sin t, cos t); channel pair i has
    wavelength 2*pi*10000^(2i/C)."""
    C, T = 16, 50
    P = sinusoidal_positions(T, C).numpy()
    t = np.arange(T)
    assert np.array_equal(P[0, 0::2], np.zeros(C // 2)) and np.array_equal(P[0, 1::2], np.ones(C // 2))
    np.testing.assert_allclose(P[:, 0], np.sin(t), atol=1e-15)
    np.testing.assert_allclose(P[:, 1], np.cos(t), atol=1e-15)
    np.testing.assert_allclose(P[:, 6], np.sin(t / 10000 ** (6 / 16)), atol=1e-15)
    np.testing.assert_allclose(P[:, 15], np.cos(t / 10000 ** (14 / 16)), atol=1e-15)
    assert sinusoidal_positions(5, 7).shape == (5, 7)  # odd C ends on a sine column
    np.testing.assert_allclose(sinusoidal_positions(5, 7).numpy()[:, 6], np.sin(np.arange(5) / 10000 ** (6 / 7)))
