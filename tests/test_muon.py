"""Muon (vintagelm.muon) against a torch implementation of the published algorithm written here.

The torch side works on torch's (out, in) orientation of the same matrices (ours are stored
(in, out)), so the shape rule of the update scale and the transposition inside Newton-Schulz are
checked, not assumed. It takes torch.optim.AdamW for the parameters Muon leaves to AdamW. Both
sides run 20 steps in the same dtype from the same start, with the same gradients, a varying lr
and gradient clipping's grad_scale; every parameter must agree within 1e-10 in float64 and
1e-5 in float32 (max abs over all steps).
"""
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from vintagelm.model import GPTConfig, param_shapes
from vintagelm.muon import Muon, muon_params, newton_schulz
from vintagelm.optim import AdamW

STEPS = 20
SHAPES = {  # ours, (in, out); the comment is the torch layout's (rows, cols)
    "wte.weight": (11, 6),  # embedding: AdamW
    "wpe.weight": (8, 6),  # embedding: AdamW
    "h.0.ln_1.weight": (6,),  # gain: AdamW
    "h.0.attn.c_attn.weight": (6, 18),  # (18, 6) tall: transposed in Newton-Schulz, scale sqrt(3)
    "h.0.attn.c_attn.bias": (18,),  # bias: AdamW
    "h.0.attn.c_proj.weight": (6, 6),  # (6, 6) square
    "h.0.mlp.c_proj.weight": (24, 6),  # (6, 24) wide: scale 1
    "lm_head.weight": (11, 6),  # output head: AdamW
}
MATRICES = ["h.0.attn.c_attn.weight", "h.0.attn.c_proj.weight", "h.0.mlp.c_proj.weight"]
CASES = {
    "nesterov": dict(muon_lr=0.02, momentum=0.95, nesterov=True, muon_weight_decay=0.0),
    "plain-momentum-decay": dict(muon_lr=0.05, momentum=0.9, nesterov=False, muon_weight_decay=0.1),
}
ADAMW = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}


def initial_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0.0, 1.0, shape).astype(dtype) for name, shape in SHAPES.items()}


def gradient_sequence(dtype, steps=STEPS, seed=1):
    rng = np.random.default_rng(seed)
    return [{name: rng.normal(0.0, 1.0, shape).astype(dtype) for name, shape in SHAPES.items()} for _ in range(steps)]


def schedule(steps=STEPS, seed=2):
    """A varying AdamW lr and clipping factor per step."""
    rng = np.random.default_rng(seed)
    return [float(x) for x in rng.uniform(2e-3, 1e-2, steps)], [float(x) for x in rng.uniform(0.2, 1.0, steps)]


# ---------------------------------------------------------------- the torch reference
def torch_newton_schulz5(G, steps=5, eps=1e-7):
    """The published quintic iteration on a torch matrix."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.T if G.size(0) > G.size(1) else G
    X = X / (X.norm() + eps)
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if G.size(0) > G.size(1) else X


class TorchMuon:
    """The published Muon step on (out, in) torch matrices, with an explicit lr per step."""

    def __init__(self, params, momentum, nesterov, weight_decay):
        self.params, self.momentum, self.nesterov, self.weight_decay = params, momentum, nesterov, weight_decay
        self.buffers = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, lr):
        for p, buf in zip(self.params, self.buffers):
            g = p.grad
            buf.mul_(self.momentum).add_(g)
            update = g.add(buf, alpha=self.momentum) if self.nesterov else buf
            p.mul_(1 - lr * self.weight_decay)
            p.add_(torch_newton_schulz5(update), alpha=-lr * max(1, p.size(0) / p.size(1)) ** 0.5)


def to_torch(name, a):
    """Our (in, out) matrix as torch's (out, in); other parameters as they are."""
    return torch.tensor(a.T.copy() if name in MATRICES else a)


def from_torch(name, t):
    a = t.detach().numpy()
    return a.T if name in MATRICES else a


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_muon_matches_torch(parity, case, dtype):
    kw = CASES[case]
    params = initial_params(dtype)
    ours = Muon(params, **ADAMW, **kw, backend="reference")
    tparams = {name: to_torch(name, p).requires_grad_(True) for name, p in params.items()}
    theirs_muon = TorchMuon([tparams[n] for n in MATRICES], kw["momentum"], kw["nesterov"], kw["muon_weight_decay"])
    rest = [n for n in SHAPES if n not in MATRICES]
    theirs_adamw = torch.optim.AdamW(
        [{"params": [tparams[n] for n in rest if len(SHAPES[n]) == 2], "weight_decay": ADAMW["weight_decay"]},
         {"params": [tparams[n] for n in rest if len(SHAPES[n]) == 1], "weight_decay": 0.0}],
        lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"])
    lrs, scales = schedule()
    worst = dict.fromkeys(SHAPES, 0.0)
    for grads, lr, scale in zip(gradient_sequence(dtype), lrs, scales):
        for name, p in tparams.items():  # torch clips the gradients first, we pass the factor
            p.grad = to_torch(name, grads[name]) * scale
        for group in theirs_adamw.param_groups:
            group["lr"] = lr
        theirs_adamw.step()
        theirs_muon.step(kw["muon_lr"] * lr / ADAMW["lr"])  # the schedule's fraction of Muon's peak
        ours.step({k: g.copy() for k, g in grads.items()}, lr=lr, grad_scale=scale)
        for name, p in params.items():
            assert p.dtype == dtype
            worst[name] = max(worst[name], float(np.max(np.abs(p - from_torch(name, tparams[name])))))
    for name in SHAPES:
        parity.record(f"{name} (max over steps)", worst[name], float(np.max(np.abs(params[name]))),
                      atol=TOLERANCE[dtype])
    parity.assert_ok()
    moved = {name: float(np.max(np.abs(params[name] - initial_params(dtype)[name]))) for name in MATRICES}
    assert min(moved.values()) > 0.05, moved  # a no-op optimizer would not pass by accident


def test_non_muon_params_get_exactly_adamws_update():
    """Embeddings, head, gains and biases move exactly as AdamW alone would move them."""
    params = initial_params(np.float64)
    alone = {k: p.copy() for k, p in params.items() if k not in MATRICES}
    muon, adamw = Muon(params, **ADAMW, backend="reference"), AdamW(alone, **ADAMW, backend="reference")
    lrs, scales = schedule()
    for grads, lr, scale in zip(gradient_sequence(np.float64), lrs, scales):
        muon.step({k: g.copy() for k, g in grads.items()}, lr=lr, grad_scale=scale)
        adamw.step({k: g.copy() for k, g in grads.items()}, lr=lr, grad_scale=scale)
    for name in alone:
        np.testing.assert_array_equal(params[name], alone[name], err_msg=name)
        assert not np.array_equal(params[name], initial_params(np.float64)[name])


# ---------------------------------------------------------------- Newton-Schulz
def with_singular_values(shape, s, seed):
    """(U, V, U diag(s) V^T) with random orthonormal U (rows, k) and V (cols, k), k = len(s)."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.normal(size=(shape[0], len(s))))[0]
    V = np.linalg.qr(rng.normal(size=(shape[1], len(s))))[0]
    return U, V, (U * s) @ V.T


@pytest.mark.parametrize("shape", [(6, 14), (14, 6), (9, 9)])
def test_newton_schulz_orthogonalises(shape):
    """G = U diag(s) V^T with singular values spread over two decades -> O = U diag(s') V^T: the
    same singular vectors (U^T O V is diagonal) and every s' in [0.5, 1.5]; any scale of G alike."""
    k = min(shape)
    s = 7.0 * np.logspace(-2, 0, k)
    U, V, G = with_singular_values(shape, s, seed=k)
    O = newton_schulz(G)
    assert O.shape == shape
    core = U.T @ O @ V  # (k, k): diag(s') when the singular vectors are kept
    np.testing.assert_allclose(core - np.diag(np.diag(core)), 0.0, atol=1e-12)
    assert np.all((np.diag(core) > 0.5) & (np.diag(core) < 1.5)), np.diag(core)
    singular = np.linalg.svd(O, compute_uv=False)
    assert np.all((singular > 0.5) & (singular < 1.5)), singular
    # G's singular values spanned a factor of 100, O's span less than 2 (0.68 to 1.21 at most)
    assert singular.max() / singular.min() < 2.0
    # only the direction counts, up to the eps added to the norm (1e-7 against |G| ~ 10 here)
    np.testing.assert_allclose(newton_schulz(1e3 * G), O, atol=1e-7)


def test_newton_schulz_commutes_with_transposition():
    G = np.random.default_rng(3).normal(size=(5, 12))
    np.testing.assert_allclose(newton_schulz(G.T), newton_schulz(G).T, atol=1e-13)


def test_newton_schulz_keeps_float32():
    G = np.random.default_rng(4).normal(size=(5, 12)).astype(np.float32)
    assert newton_schulz(G).dtype == np.float32


# ---------------------------------------------------------------- which parameters are Muon's
@pytest.mark.parametrize("tie_weights", [True, False], ids=["tied", "untied"])
def test_muon_params_are_the_blocks_matrices(tie_weights):
    config = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8, tie_weights=tie_weights)
    expected = [f"h.{i}.{m}.weight" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert muon_params(param_shapes(config)) == expected


def test_muon_params_leave_embeddings_heads_and_vectors_to_adamw():
    shapes = {"wte.weight": (9, 4), "wpe.weight": (8, 4), "lm_head.weight": (4, 9), "direct.weight": (8, 9),
              "hidden.weight": (8, 5), "hidden.bias": (5,), "rnn.0.weight_hh": (4, 4), "stacked.weight": (2, 3, 4)}
    assert muon_params(shapes) == ["hidden.weight", "rnn.0.weight_hh"]


# ---------------------------------------------------------------- checkpoints
def make_muon(params):
    return Muon(params, **ADAMW, muon_weight_decay=0.1, backend="reference")


def test_state_dict_resume_is_exact(tmp_path):
    """10 steps, state saved through safetensors, loaded into a fresh Muon on a copy of the
    parameters, 10 more steps == 20 uninterrupted steps, bit for bit."""
    grads_seq = gradient_sequence(np.float32)
    straight = initial_params(np.float32)
    opt = make_muon(straight)
    for g in grads_seq:
        opt.step({k: v.copy() for k, v in g.items()})

    first = initial_params(np.float32)
    opt = make_muon(first)
    for g in grads_seq[:10]:
        opt.step({k: v.copy() for k, v in g.items()})
    save_file(opt.state_dict(), str(tmp_path / "optimizer.safetensors"))
    resumed = {k: v.copy() for k, v in first.items()}
    opt = make_muon(resumed)
    opt.load_state_dict(load_file(str(tmp_path / "optimizer.safetensors")))
    assert opt.t == opt.matrices.t == 10
    for g in grads_seq[10:]:
        opt.step({k: v.copy() for k, v in g.items()})
    for name in SHAPES:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)


def test_state_dict_holds_momentum_and_adamw_moments():
    params = initial_params(np.float64)
    keys = set(make_muon(params).state_dict())
    rest = [n for n in SHAPES if n not in MATRICES]
    assert keys == {"t"} | {f"momentum_buffer.{n}" for n in MATRICES} | {f"{s}.{n}" for s in "mv" for n in rest}


def test_load_state_dict_refuses_an_adamw_state():
    params = initial_params(np.float64)
    adamw_state = AdamW(params, **ADAMW).state_dict()
    with pytest.raises(ValueError, match="momentum_buffer"):
        make_muon(params).load_state_dict(adamw_state)
