"""The museum (vintagelm/museum/): Bengio's MLP, the Elman RNN and the LSTM, through the public
model API only (forward with targets, backward).

    gradients      central differences (float64) of every parameter entry: several BPTT steps,
                   two layers, ignored targets, dropout, and a carried state held fixed
    torch          the RNN and LSTM against torch.nn.RNN / torch.nn.LSTM given our weights
                   (gate order mapped), logits, loss and every gradient (parity fixture)
    state          the cached forward one token at a time = the full-window forward; carried
                   state: two windows = one forward over both, and the second window's gradient
                   is the truncated one (torch with the state detached), not the full one
    loops          each model trains through train.training_step, checkpoints, loads with the
                   same logits and generates (cache and no cache agree)

Run: .venv/bin/python -m pytest tests/test_museum_models.py -v   (--parity-report for every tensor)
"""
import numpy as np
import pytest
import torch

from vintagelm import architectures
from vintagelm.checkpoint import load_checkpoint, save_checkpoint
from vintagelm.generate import generate
from vintagelm.gradcheck import TOLERANCE, central_differences, relative_error
from vintagelm.museum.lstm import LSTMLM
from vintagelm.museum.mlp import MLPLM
from vintagelm.museum.rnn import RNNLM
from vintagelm.optim import AdamW
from vintagelm.train import training_step

V = 11
CLASSES = {"mlp": MLPLM, "rnn": RNNLM, "lstm": LSTMLM}
SMALL = {  # tiny shapes: every parameter entry can be finite-differenced in well under a second
    "mlp": dict(vocab_size=V, block_size=8, context=3, n_embd=4, hidden=7),
    "rnn": dict(vocab_size=V, block_size=8, n_embd=5, n_layer=2),
    "lstm": dict(vocab_size=V, block_size=8, n_embd=4, n_layer=2),
}


def make(arch, dtype=np.float64, seed=0, randomize=True, **overrides):
    cls = CLASSES[arch]
    model = cls(cls.config_class(**{**SMALL[arch], **overrides}), seed=seed, dtype=dtype, backend="reference")
    if randomize:
        # away from the init (zero head bias, small weights), so that a forgotten term cannot
        # hide and tanh/sigmoid work in their curved range
        model.flat_params[:] = np.random.default_rng(seed + 100).normal(0.0, 0.5, model.flat_params.size)
    return model


def batch(B, T, seed, n_ignored=2):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V, (B, T))
    targets = rng.integers(0, V, (B, T))
    targets.reshape(-1)[rng.choice(B * T, n_ignored, replace=False)] = -1
    return idx, targets


@pytest.fixture
def museum_registered(monkeypatch):
    for arch, cls in CLASSES.items():
        monkeypatch.setitem(architectures.ARCHITECTURES, arch, f"{cls.__module__}:{cls.__name__}")


# ---------------------------------------------------------------- gradients vs finite differences
def check_every_parameter(model, loss):
    """Analytic gradient of loss() (after one loss() + backward) vs central differences, for
    every entry of every parameter -> {name: relative error}."""
    loss()
    grads = {k: v.copy() for k, v in model.backward().items()}
    return {name: relative_error(grads[name], central_differences(loss, p.reshape(-1), range(p.size)).reshape(p.shape))
            for name, p in model.params.items()}


GRADCHECK_CASES = [
    ("mlp", {}), ("mlp", dict(direct=True)), ("mlp", dict(context=1, direct=True)), ("mlp", dict(dropout=0.3)),
    ("rnn", {}), ("rnn", dict(n_layer=1)), ("rnn", dict(dropout=0.3)),
    ("lstm", {}), ("lstm", dict(n_layer=1)), ("lstm", dict(dropout=0.3)),
]


@pytest.mark.parametrize("arch, overrides", GRADCHECK_CASES, ids=lambda c: str(c) if isinstance(c, str) else
                         "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_gradients_match_finite_differences(arch, overrides):
    model = make(arch, **overrides)
    idx, targets = batch(B=2, T=7, seed=1)  # T=7 > context: padded and full contexts; 7 BPTT steps
    rng_state = model.dropout_rng.bit_generator.state

    def loss():
        model.dropout_rng.bit_generator.state = rng_state  # the same dropout masks every time
        return model.forward(idx, targets)[1]

    errors = check_every_parameter(model, loss)
    assert set(errors) == set(model.shapes)
    bad = {k: e for k, e in errors.items() if not e < TOLERANCE}
    assert not bad, bad


@pytest.mark.parametrize("arch", ["rnn", "lstm"])
def test_gradient_with_a_carried_state_is_the_truncated_one(arch):
    """With the state carried from a first window held constant, the second window's loss is a
    function of the weights whose derivative backward() must return: truncated BPTT."""
    model = make(arch, carry_state=True)
    (w1, t1), (w2, t2) = batch(2, 5, seed=2), batch(2, 6, seed=3)
    model.forward(w1, t1)
    carried = model.state
    assert carried is not None and np.abs(carried[0][0]).max() > 0.1

    def loss():
        model.state = carried
        return model.forward(w2, t2)[1]

    errors = check_every_parameter(model, loss)
    bad = {k: e for k, e in errors.items() if not e < TOLERANCE}
    assert not bad, bad


def test_backward_accumulates_when_asked():
    model = make("lstm")
    idx, targets = batch(2, 5, seed=4)
    model.forward(idx, targets)
    model.backward()
    once = model.flat_grads.copy()
    model.forward(idx, targets)
    model.backward(accumulate=True)
    np.testing.assert_allclose(model.flat_grads, 2 * once, rtol=1e-12)
    model.forward(idx, targets)
    model.backward()
    np.testing.assert_allclose(model.flat_grads, once, rtol=1e-12)


# ---------------------------------------------------------------- parity with torch
def gate_columns(arch, C):
    """Our 4C gate columns in torch's order: ours are i, f, o, g; torch.nn.LSTM's i, f, g, o."""
    if arch == "rnn":
        return np.arange(C)
    return np.concatenate([np.arange(k * C, (k + 1) * C) for k in (0, 1, 3, 2)])


class TorchRecurrent(torch.nn.Module):
    """nn.Embedding -> nn.RNN(tanh) or nn.LSTM -> nn.Linear, in float64, with our weights."""

    def __init__(self, model):
        super().__init__()
        cfg, P = model.config, model.params
        C, L, self.arch = cfg.n_embd, cfg.n_layer, model.architecture
        self.emb = torch.nn.Embedding(cfg.vocab_size, C).double()
        rnn = torch.nn.RNN(C, C, L, nonlinearity="tanh", batch_first=True) if self.arch == "rnn" else \
            torch.nn.LSTM(C, C, L, batch_first=True)
        self.rnn, self.head = rnn.double(), torch.nn.Linear(C, cfg.vocab_size).double()
        self.cols = gate_columns(self.arch, C)
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))
        with torch.no_grad():
            self.emb.weight.copy_(t(P["wte.weight"]))
            for i in range(L):
                p = f"{self.arch}.{i}."
                getattr(self.rnn, f"weight_ih_l{i}").copy_(t(P[p + "weight_xh"][:, self.cols].T))  # (G C, C)
                getattr(self.rnn, f"weight_hh_l{i}").copy_(t(P[p + "weight_hh"][:, self.cols].T))
                getattr(self.rnn, f"bias_ih_l{i}").copy_(t(P[p + "bias"][self.cols]))
                getattr(self.rnn, f"bias_hh_l{i}").zero_()  # torch's second bias: ours has one
            self.head.weight.copy_(t(P["lm_head.weight"].T))
            self.head.bias.copy_(t(P["lm_head.bias"]))

    def forward(self, idx, state=None):
        out, state = self.rnn(self.emb(torch.as_tensor(idx)), state)
        return self.head(out), state

    def loss(self, logits, targets):
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.as_tensor(targets).reshape(-1), ignore_index=-1)

    def our_grads(self, model):
        """torch's gradients in our names and layouts."""
        g = {"wte.weight": self.emb.weight.grad.numpy(), "lm_head.weight": self.head.weight.grad.numpy().T,
             "lm_head.bias": self.head.bias.grad.numpy()}
        for i in range(model.config.n_layer):
            p = f"{self.arch}.{i}."
            for ours, theirs in (("weight_xh", "weight_ih"), ("weight_hh", "weight_hh")):
                w = np.zeros(model.shapes[p + ours])
                w[:, self.cols] = getattr(self.rnn, f"{theirs}_l{i}").grad.numpy().T
                g[p + ours] = w
            b = np.zeros(model.shapes[p + "bias"])
            b[self.cols] = getattr(self.rnn, f"bias_ih_l{i}").grad.numpy()
            g[p + "bias"] = b
        return g


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def check_against_torch(model, idx, targets, parity, rtol, grad_rtol):
    """One forward and backward of ours and of TorchRecurrent with the same weights: loss,
    logits and every parameter's gradient compared."""
    logits, loss = model.forward(idx, targets)
    grads = model.backward()
    ref = TorchRecurrent(model)
    ref_logits, _ = ref(idx)
    ref_loss = ref.loss(ref_logits, targets)
    ref_loss.backward()
    parity.check("loss", loss, ref_loss.item(), rtol=rtol)
    parity.check("logits", logits, ref_logits.detach().numpy(), rtol=rtol)
    for name, g in ref.our_grads(model).items():
        parity.check(name, grads[name], g, rtol=grad_rtol)
    parity.assert_ok()


@pytest.mark.parametrize("arch", ["rnn", "lstm"])
@pytest.mark.parametrize("n_layer", [1, 2])
def test_matches_torch(arch, n_layer, parity):
    model = make(arch, n_layer=n_layer, seed=n_layer)
    idx, targets = batch(B=3, T=9, seed=5, n_ignored=3)
    check_against_torch(model, idx, targets, parity, rtol=1e-12, grad_rtol=1e-10)


@pytest.mark.parametrize("arch", ["rnn", "lstm"])
def test_float32_at_init_matches_torch(arch, parity):
    """The training precision, at the model's own init, over 32 steps: within 1e-5 of float64
    torch. (At the large random weights above, a float32 Elman net is chaotic over 32 steps and
    its rounding grows; that is the recurrence, not the code.)"""
    model = make(arch, dtype=np.float32, randomize=False, n_embd=32)
    idx, targets = batch(B=4, T=32, seed=13)
    check_against_torch(model, idx, targets, parity, rtol=1e-5, grad_rtol=1e-5)


@pytest.mark.parametrize("arch", ["rnn", "lstm"])
def test_carried_state_is_truncated_bptt_as_in_torch(arch, parity):
    """Window 2 started from window 1's final state: logits equal one forward over both windows,
    and the gradient equals torch's with the state detached between them, which differs from the
    full gradient through both windows (so nothing leaks into window 1)."""
    model = make(arch, carry_state=True)
    (w1, t1), (w2, t2) = batch(3, 6, seed=6), batch(3, 6, seed=7)
    model.forward(w1, t1)
    logits2, loss2 = model.forward(w2, t2)
    grads = {k: v.copy() for k, v in model.backward().items()}

    both = make(arch)  # same weights, no carrying, one forward over the concatenated text
    both_logits, _ = both.forward(np.concatenate([w1, w2], axis=1))
    parity.check("logits (window 2 vs one forward over both)", logits2, both_logits[:, 6:], rtol=1e-12)

    ref = TorchRecurrent(model)
    _, state = ref(w1)
    ref_logits, _ = ref(w2, detach(state))
    ref.loss(ref_logits, t2).backward()
    parity.check("logits", logits2, ref_logits.detach().numpy(), rtol=1e-12)
    for name, g in ref.our_grads(model).items():
        parity.check(name, grads[name], g, rtol=1e-10)
    parity.assert_ok()

    full = TorchRecurrent(model)  # no detach: the gradient of loss 2 also flows through window 1
    _, state = full(w1)
    full_logits, _ = full(w2, state)
    full.loss(full_logits, t2).backward()
    leak = full.our_grads(model)[f"{arch}.0.weight_hh"]
    assert relative_error(grads[f"{arch}.0.weight_hh"], leak) > 1e-3


# ---------------------------------------------------------------- state: cache and carrying
@pytest.mark.parametrize("arch", ["mlp", "rnn", "lstm"])
def test_cached_forward_one_token_at_a_time_equals_the_full_window(arch):
    model = make(arch, carry_state=True) if arch != "mlp" else make(arch)
    model.train()  # a cached forward never uses dropout nor touches the carried state
    idx, _ = batch(2, 9, seed=8)
    full, _ = make(arch).eval().forward(idx)
    cache = model.new_kv_cache(batch_size=2)
    assert cache.pos == 0
    pieces = [model.forward(idx[:, :3], kv_cache=cache)[0]]  # a prefill, then one token per call
    pieces += [model.forward(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(3, 9)]
    assert cache.pos == 9
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=0, atol=1e-12)
    if arch != "mlp":
        assert model.state is None
    cache.reset()
    assert cache.pos == 0
    again, _ = model.forward(idx[:, :4], kv_cache=cache)
    np.testing.assert_allclose(again, full[:, :4], rtol=0, atol=1e-12)


def test_mlp_sees_exactly_its_context():
    model = make("mlp", context=3).eval()
    idx, _ = batch(1, 8, seed=9)
    base, _ = model.forward(idx)
    older = idx.copy()
    older[0, 2] = (older[0, 2] + 1) % V  # token 2 is in the context of positions 2, 3, 4 only
    changed = np.abs(model.forward(older)[0] - base).max(axis=-1)[0]
    assert np.all(changed[[0, 1, 5, 6, 7]] == 0) and np.all(changed[[2, 3, 4]] > 0)


@pytest.mark.parametrize("arch", ["rnn", "lstm"])
def test_carried_state_rules(arch):
    model = make(arch, carry_state=True)
    w1, w2 = batch(2, 5, seed=10)[0], batch(2, 5, seed=11)[0]
    fresh, _ = make(arch).forward(w2)
    model.forward(w1)
    carried, _ = model.forward(w2)
    assert np.abs(carried - fresh).max() > 1e-3  # the state was used
    model.eval()
    np.testing.assert_array_equal(model.forward(w2)[0], fresh)  # eval: zeros, state kept
    model.train()
    model.reset_state()
    np.testing.assert_array_equal(model.forward(w2)[0], fresh)  # after reset_state: zeros
    model.forward(batch(3, 5, seed=12)[0])  # another batch size: starts from zeros, replaces it
    assert model.state[0][0].shape == (3, SMALL[arch]["n_embd"])
    off = make(arch)  # carry_state False (the default): every window starts from zeros
    off.forward(w1)
    np.testing.assert_array_equal(off.forward(w2)[0], fresh)
    assert off.state is None


# ---------------------------------------------------------------- interface details
@pytest.mark.parametrize("arch", ["mlp", "rnn", "lstm"])
def test_interface_and_flops(arch):
    model = make(arch, randomize=False, dtype=np.float32)
    assert model.architecture == arch and model.backend == "reference" and model.dtype == np.float32
    assert list(model.params) == list(model.shapes) == list(model.grads)
    assert model.num_params() == model.flat_params.size == sum(p.size for p in model.params.values())
    for name, p in model.params.items():  # views into the flat buffers, not copies
        assert np.shares_memory(p, model.flat_params) and np.shares_memory(model.grads[name], model.flat_grads)
    # 6 FLOPs per multiply-add with every weight matrix but the embedding lookup
    matrices = [p for n, p in model.params.items() if p.ndim == 2 and n != "wte.weight"]
    assert model.flops_per_token() == 6 * sum(p.size for p in matrices)
    cfg = model.config
    assert type(model).param_count(cfg) == model.num_params()  # counted from the config alone
    longer = np.zeros((1, 3 * cfg.block_size), dtype=np.int64)  # no positions: block_size is no limit
    assert model.forward(longer)[0].shape == (1, 3 * cfg.block_size, cfg.vocab_size)
    with pytest.raises(ValueError, match="token ids"):
        model.forward(np.full((1, 2), cfg.vocab_size))
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown .* field"):
        type(cfg).from_dict({**cfg.to_dict(), "n_head": 2})
    with pytest.raises(ValueError, match="n_embd must be a positive integer"):
        type(cfg)(**{**cfg.to_dict(), "n_embd": 0})
    with pytest.raises(ValueError, match="dropout"):
        type(cfg)(**{**cfg.to_dict(), "dropout": 1.0})
    same = make(arch, randomize=False, dtype=np.float64)  # one seed, the same weights in either dtype
    np.testing.assert_array_equal(same.flat_params.astype(np.float32), model.flat_params)
    if arch == "lstm":
        C = cfg.n_embd
        assert np.all(model.params["lstm.0.bias"][C : 2 * C] == 1.0)  # forget gate opens at 1


# ---------------------------------------------------------------- the loops
TEXT = "the cat sat on the mat. the dog sat on the log. " * 12
TRAIN = {  # (overrides, learning rate)
    "mlp": (dict(context=4, n_embd=8, hidden=32, direct=True), 1e-2),
    "rnn": (dict(n_embd=32, n_layer=1), 1e-2),
    "lstm": (dict(n_embd=32, n_layer=2, dropout=0.1), 1e-2),
    "lstm-carry": (dict(n_embd=32, n_layer=1, carry_state=True), 1e-2),
}


@pytest.mark.parametrize("case", list(TRAIN))
def test_trains_checkpoints_and_generates(case, museum_registered, tmp_path):
    arch = case.split("-")[0]
    overrides, lr = TRAIN[case]
    chars = sorted(set(TEXT))
    ids = np.array([chars.index(ch) for ch in TEXT])
    cls = architectures.model_class(arch)
    config = cls.config_class(**{**SMALL[arch], "vocab_size": len(chars), "block_size": 16, **overrides})
    model = architectures.model_for(config)(config, seed=0)  # float32, the default
    optimizer = AdamW(model.params, lr=lr, betas=(0.9, 0.99))
    B, T, rng = 4, 16, np.random.default_rng(0)
    stream = len(ids) // B  # carry_state: row b reads its own quarter of the text, window after window
    losses = []
    for step in range(40):
        if config.to_dict().get("carry_state"):
            offset = (step * T) % (stream - T - 1)
            if offset < T:
                model.reset_state()  # back at the start of the rows' text
            starts = np.arange(B) * stream + offset
        else:
            starts = rng.integers(0, len(ids) - T - 1, B)
        x = np.stack([ids[s : s + T] for s in starts])
        y = np.stack([ids[s + 1 : s + T + 1] for s in starts])
        result = training_step(model, optimizer, [(x, y)], lr=lr, grad_clip=1.0)
        assert result.stepped
        losses.append(result.loss)
    assert np.mean(losses[-5:]) < 0.6 * losses[0], losses

    path = save_checkpoint(tmp_path, 40, model, optimizer, {})
    ckpt = load_checkpoint(path)
    assert type(ckpt.model) is cls and ckpt.state["architecture"] == arch and ckpt.model.config == config
    np.testing.assert_array_equal(ckpt.model.flat_params, model.flat_params)
    probe = ids[None, :T]
    np.testing.assert_array_equal(ckpt.model.eval().forward(probe)[0], model.eval().forward(probe)[0])

    prompt = [chars.index(ch) for ch in "the "]
    n_new = 40  # > block_size: the window restarts (and the cache re-prefills) on the way
    cached = list(generate(ckpt.model, prompt, n_new, np.random.default_rng(0), temperature=0))
    plain = list(generate(ckpt.model, prompt, n_new, np.random.default_rng(0), temperature=0, use_kv_cache=False))
    assert cached == plain and len(cached) == n_new
    sampled = list(generate(ckpt.model, prompt, 20, np.random.default_rng(1), temperature=1.0, top_k=5))
    assert len(sampled) == 20 and all(0 <= t < len(chars) for t in sampled)
