"""The GPT as a whole: config validation, API contract, gradients by finite differences for
every architecture variant, and a tiny model that learns (the pieces work together)."""
import itertools

import numpy as np
import pytest

from vintagelm import GPT, GPTConfig
from vintagelm.cli import main
from vintagelm.flat_model import evaluating
from vintagelm.gradcheck import check_model
from vintagelm.optim import AdamW, clip_grad_norm

SMALL = dict(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8)


@pytest.mark.parametrize(
    "field,value",
    [("n_embd", 10), ("n_head", 0), ("vocab_size", -3), ("block_size", 2.5), ("n_layer", True),
     ("norm", "middle"), ("pos", "rotary"), ("activation", "swish"), ("init", "xavier"),
     ("dropout", 1.0), ("bias", "yes"), ("tie_weights", 1)],
)
def test_invalid_config_names_the_field(field, value):
    cfg = dict(SMALL, n_head=3, n_embd=12)
    cfg[field] = value
    with pytest.raises(ValueError, match=field):
        GPTConfig(**cfg)


def test_config_round_trips_and_rejects_unknown_fields():
    cfg = GPTConfig(**SMALL, norm="post")
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="n_embed"):
        GPTConfig.from_dict(dict(SMALL, n_embed=8))


def test_api_contract():
    cfg = GPTConfig(**SMALL, tie_weights=False)
    model = GPT(cfg, seed=3)
    assert all(p.dtype == np.float32 for p in model.params.values())
    assert model.num_params() == sum(p.size for p in model.params.values())
    with pytest.raises(RuntimeError, match="forward"):
        model.backward()
    idx = np.random.default_rng(0).integers(0, 11, (3, 6))
    logits, loss = model.forward(idx)
    assert logits.shape == (3, 6, 11) and loss is None
    with pytest.raises(RuntimeError, match="targets"):
        model.backward()
    logits, loss = model.forward(idx, idx)
    grads = model.backward()
    assert grads.keys() == model.params.keys()
    assert all(grads[k].shape == p.shape for k, p in model.params.items())
    with pytest.raises(RuntimeError):
        model.backward()  # the activations of that forward were consumed
    with pytest.raises(ValueError, match="block_size"):
        model.forward(np.zeros((1, 7), dtype=np.int64))
    with pytest.raises(ValueError, match="token ids"):
        model.forward(np.full((1, 2), 11))


def test_parameters_and_gradients_are_views_laid_end_to_end_in_one_buffer():
    model = GPT(GPTConfig(**SMALL, tie_weights=False), seed=1)
    assert GPT.param_count(model.config) == model.num_params() == model.flat_params.size
    for flat, views in ((model.flat_params, model.params), (model.flat_grads, model.grads)):
        flat[:] = np.arange(flat.size)  # every number distinct: the order of the views shows
        np.testing.assert_array_equal(np.concatenate([v.ravel() for v in views.values()]), flat)
        assert [v.shape for v in views.values()] == list(model.shapes.values())


def test_evaluating_turns_dropout_off_and_gives_the_mode_back():
    model = GPT(GPTConfig(**SMALL, dropout=0.5), seed=2)
    idx = np.random.default_rng(0).integers(0, 11, (2, 6))
    with evaluating(model) as same:
        assert same is model and not model.training
        quiet = model.forward(idx)[0]
        np.testing.assert_array_equal(model.forward(idx)[0], quiet)  # no dropout masks drawn
    assert model.training
    assert not np.array_equal(model.forward(idx)[0], quiet)  # dropout is back on
    with pytest.raises(KeyboardInterrupt), evaluating(model):
        raise KeyboardInterrupt  # an error inside the block still restores the mode
    assert model.training
    model.eval()
    with evaluating(model):
        pass
    assert not model.training  # a model in eval mode stays there


def test_initial_loss_is_near_uniform_and_seeded():
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)
    idx = np.random.default_rng(1).integers(0, 50, (4, 16))
    targets = np.random.default_rng(2).integers(0, 50, (4, 16))  # not idx: a tied head favours the input id
    a, b, c = GPT(cfg, seed=5), GPT(cfg, seed=5), GPT(cfg, seed=6)
    assert np.array_equal(a.flat_params, b.flat_params)
    assert not np.array_equal(a.flat_params, c.flat_params)
    _, loss = a.forward(idx, targets)
    assert abs(loss - np.log(50)) < 0.05 * np.log(50)  # GPT-2 init: logits start near zero
    # the same seed gives the same weights in float64, up to float32 rounding
    d = GPT(cfg, seed=5, dtype=np.float64)
    np.testing.assert_allclose(d.flat_params, a.flat_params, rtol=1e-6, atol=1e-8)


def test_gpt2_init_scales_residual_projections():
    cfg = GPTConfig(vocab_size=64, block_size=8, n_layer=8, n_head=4, n_embd=128)
    P = GPT(cfg).params
    assert P["h.0.attn.c_attn.weight"].std() == pytest.approx(0.02, rel=0.05)
    assert P["h.0.mlp.c_proj.weight"].std() == pytest.approx(0.02 / np.sqrt(16), rel=0.05)
    assert np.all(P["h.0.ln_1.weight"] == 1) and np.all(P["h.0.attn.c_attn.bias"] == 0)
    bad = GPT(GPTConfig(**{**cfg.to_dict(), "init": "normal"})).params
    assert bad["h.0.attn.c_attn.weight"].std() == pytest.approx(1.0, rel=0.05)


def test_flops_per_token_counts_matmuls_and_attention():
    cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    m = GPT(cfg)
    C, L, V, T = 128, 4, 65, 64
    per_block = C * 3 * C + 3 * C + C * C + C + 4 * C * C + 4 * C + 4 * C * C + C + 4 * C
    n = V * C + L * per_block + 2 * C  # wte + blocks + ln_f (wpe excluded)
    assert m.flops_per_token() == 6 * n + 12 * L * C * T


VARIANTS = list(itertools.product(["pre", "post", "none"], ["learned", "sinusoidal"], [True, False], [True, False]))


@pytest.mark.parametrize("norm,pos,tie,bias", VARIANTS)
def test_model_gradients_match_finite_differences(norm, pos, tie, bias, backend):
    cfg = GPTConfig(**SMALL, norm=norm, pos=pos, tie_weights=tie, bias=bias, dropout=0.1)
    results = check_model(cfg, batch_size=2, seq_len=5, samples=12, backend=backend)
    bad = [(r.name, r.rel_error) for r in results if not r.ok]
    assert not bad, bad


@pytest.mark.parametrize("B,T,H", [(1, 1, 1), (1, 4, 1), (3, 1, 2)])
def test_model_gradients_edge_shapes(B, T, H, backend):
    cfg = GPTConfig(**{**SMALL, "n_head": H}, activation="relu")
    results = check_model(cfg, batch_size=B, seq_len=T, samples=10, backend=backend)
    assert all(r.ok for r in results), [(r.name, r.rel_error) for r in results]


def test_gradcheck_detects_a_wrong_gradient(monkeypatch):
    """The checker itself must be able to fail: break one backward and watch it."""
    from vintagelm.nn import norm
    from vintagelm.nn.ops import ReferenceOps

    real = norm.layernorm_backward

    def wrong(dy, cache, dw, db=None):
        true_dw = np.zeros_like(dw)
        dx = real(dy, cache, true_dw, db)
        dw += 1.01 * true_dw
        return dx

    # the op table of either backend (gradcheck runs float64, where the fast one uses nn/norm.py too)
    monkeypatch.setattr(ReferenceOps, "layernorm_backward", staticmethod(wrong))
    monkeypatch.setattr(norm, "layernorm_backward", wrong)
    results = check_model(GPTConfig(**SMALL), samples=6)
    failed = {r.name for r in results if not r.ok}
    assert "ln_f.weight" in failed and "h.0.ln_1.weight" in failed
    assert main(["gradcheck", "--samples", "4"]) == 1


def test_gradcheck_cli(capsys):
    assert main(["gradcheck", "--samples", "6", "--norm", "post", "--untied"]) == 0
    out = capsys.readouterr().out
    assert "lm_head.weight" in out and "PASS: all" in out and "reference backend" in out
    assert main(["gradcheck", "--samples", "4", "--backend", "fast"]) == 0
    assert "fast backend" in capsys.readouterr().out
    assert main(["gradcheck", "--embd", "10", "--heads", "3"]) == 2
    assert "n_embd" in capsys.readouterr().err


def test_accumulated_backward_equals_sum_of_micro_batches(backend):
    cfg = GPTConfig(**SMALL)
    model = GPT(cfg, dtype=np.float64, backend=backend)
    rng = np.random.default_rng(2)
    idx, tgt = rng.integers(0, 11, (4, 6)), rng.integers(0, 11, (4, 6))
    model.forward(idx[:2], tgt[:2])
    first = {k: v.copy() for k, v in model.backward().items()}
    model.forward(idx[2:], tgt[2:])
    model.backward()
    second = {k: v.copy() for k, v in model.grads.items()}
    model.forward(idx[:2], tgt[:2])
    model.backward()
    model.forward(idx[2:], tgt[2:])
    total = model.backward(accumulate=True)
    for k in total:
        np.testing.assert_allclose(total[k], first[k] + second[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("variant", [{}, {"norm": "post", "tie_weights": False}, {"norm": "none", "bias": False, "pos": "sinusoidal"}])
def test_backward_leaves_nothing_of_the_previous_backward(variant, backend):
    # the fast backend writes some slots instead of zeroing and adding: after a backward on
    # batch A, a backward on batch B must give exactly what a fresh model gives on B
    cfg = GPTConfig(**{**SMALL, **variant})
    rng = np.random.default_rng(5)
    a, b = [(rng.integers(0, 11, (2, 6)), rng.integers(0, 11, (2, 6))) for _ in range(2)]
    model, fresh = GPT(cfg, dtype=np.float64, backend=backend), GPT(cfg, dtype=np.float64, backend=backend)
    model.forward(*a)
    model.backward()
    for m in (model, fresh):
        m.forward(*b)
        m.backward()
    np.testing.assert_array_equal(model.flat_grads, fresh.flat_grads)


def memorise(backend, lr, steps, **config):
    """The loss after `steps` AdamW steps (lr, gradients clipped to norm 1) of a 2-layer model
    of `config` on windows of a repeated sentence: each next character is determined by its
    position ("to" is followed by " b" the first time and " n" the second only through
    position/context), so a working model reaches ~0."""
    text = "to be or not to be, "  # period 20; every window starts at a multiple of it
    chars = sorted(set(text))
    data = np.array([chars.index(c) for c in text * 4])
    cfg = GPTConfig(**{"vocab_size": len(chars), "block_size": 24, "n_layer": 2, "n_embd": 32, **config})
    model = GPT(cfg, seed=0, backend=backend)
    opt = AdamW(model.params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0, backend=backend)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        starts = 20 * rng.integers(0, 2, 8)
        x = np.stack([data[s : s + 24] for s in starts])
        y = np.stack([data[s + 1 : s + 25] for s in starts])
        _, loss = model.forward(x, y)
        clip_grad_norm(model.backward(), 1.0)
        opt.step(model.grads)
    return loss


def test_tiny_model_memorises_a_repeated_sequence(backend):
    loss = memorise(backend, lr=3e-3, steps=300, n_head=2)
    assert loss < 0.05, loss


def test_blocked_and_tiled_attention_models_equal_naive(backend):
    """Long enough for several query blocks (64) and tiles (128): same loss and gradients."""
    base = dict(vocab_size=17, block_size=150, n_layer=2, n_head=2, n_embd=16)
    rng = np.random.default_rng(4)
    idx, tgt = rng.integers(0, 17, (2, 150)), rng.integers(0, 17, (2, 150))
    out = {}
    for kind in ("naive", "blocked", "tiled"):
        model = GPT(GPTConfig(**base, attention=kind), seed=1, dtype=np.float64, backend=backend)
        logits, loss = model.forward(idx, tgt)
        out[kind] = (logits, loss, {k: v.copy() for k, v in model.backward().items()})
    for kind in ("blocked", "tiled"):
        np.testing.assert_allclose(out[kind][0], out["naive"][0], rtol=1e-12, atol=1e-12)
        assert out[kind][1] == pytest.approx(out["naive"][1], rel=1e-13)
        for k, g in out["naive"][2].items():
            np.testing.assert_allclose(out[kind][2][k], g, rtol=1e-10, atol=1e-13)


def test_threads_flag_limits_blas():
    import threadpoolctl

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    try:
        assert main(["--threads", "1", "gradcheck", "--samples", "2", "--layers", "1"]) == 0
        assert blas_threads() and all(n == 1 for n in blas_threads())
        assert main(["--threads", "0", "gradcheck"]) == 2
    finally:
        threadpoolctl.threadpool_limits(max(before), user_api="blas")
