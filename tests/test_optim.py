"""Optimizers, clipping and the schedule (vintagelm.optim) against torch.optim and closed forms.

Both sides run in float64 on the same parameters and the same fixed random sequence of
gradients; after every one of 20 steps every parameter must agree within 1e-6 (max abs). The
torch side mirrors our weight-decay rule with two param groups: parameters with ndim >= 2 decay,
1-D ones (biases, gains) do not.
"""
import math

import numpy as np
import pytest
import torch

from vintagelm.optim import SGD, AdamW, clip_factor, clip_grad_norm, grad_norm, lr_at

ATOL = 1e-6
STEPS = 20
SHAPES = {  # mixed ndim: embeddings and matrices decay, vectors do not
    "wte.weight": (7, 5),
    "h.0.attn.c_attn.weight": (5, 15),
    "h.0.attn.c_attn.bias": (15,),
    "h.0.ln_1.weight": (5,),
    "stacked.weight": (2, 3, 4),
}


def initial_params(seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0.0, 1.0, shape) for name, shape in SHAPES.items()}


def gradient_sequence(steps=STEPS, scale=1.0, seed=1):
    rng = np.random.default_rng(seed)
    return [{name: scale * rng.normal(0.0, 1.0, shape) for name, shape in SHAPES.items()} for _ in range(steps)]


def torch_params(params):
    return {name: torch.tensor(p, dtype=torch.float64, requires_grad=True) for name, p in params.items()}


def param_groups(tparams, weight_decay):
    """Our decay rule as torch param groups (the order of names is the same on both sides)."""
    decay = [p for p in tparams.values() if p.ndim >= 2]
    no_decay = [p for p in tparams.values() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def run_both(ours_opt, params, torch_opt, tparams, grads_seq, lrs=None, scheduler=None):
    """Step both optimizers through grads_seq; return name -> the max |ours - torch| over all steps.

    lrs[i] (when given) is the lr of step i, passed to our step(..., lr=); None there means "no
    override". Torch gets the same lr either from `scheduler` (checked to agree) or, without
    one, written into every param group (its base lr where ours has no override)."""
    worst = {name: 0.0 for name in params}
    base_lrs = [g["lr"] for g in torch_opt.param_groups]
    for i, grads in enumerate(grads_seq):
        lr = None if lrs is None else lrs[i]
        for group, base in zip(torch_opt.param_groups, base_lrs):
            if scheduler is not None:
                assert math.isclose(group["lr"], lr, rel_tol=1e-12), (i, group["lr"], lr)
            elif lrs is not None:
                group["lr"] = base if lr is None else lr
        for name, p in tparams.items():
            p.grad = torch.tensor(grads[name], dtype=p.dtype)
        torch_opt.step()
        if scheduler is not None:
            scheduler.step()
        ours_opt.step({k: g.copy() for k, g in grads.items()}, lr=lr)  # copies: a step must not need ours
        for name, p in params.items():
            worst[name] = max(worst[name], float(np.max(np.abs(p - tparams[name].detach().numpy()))))
    return worst


def record(parity, worst, params, tparams, atol=ATOL):
    """One row per parameter: the max over all steps of max|ours - torch|, allowed atol."""
    for name in sorted(worst):
        scale = float(np.max(np.abs(tparams[name].detach().numpy())))
        parity.record(f"{name} (max over steps)", worst[name], scale, atol=atol)
    parity.assert_ok()


ADAMW_CASES = {
    # the case: decoupled decay 0.1, betas (0.9, 0.99)
    "wd0.1-b0.99": dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, grad_scale=1.0),
    # eps comparable to sqrt(v): pins where eps goes (outside the bias-corrected sqrt)
    "large-eps": dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1, grad_scale=1e-3),
    "defaults": dict(lr=3e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, grad_scale=1.0),
}


@pytest.mark.parametrize("case", sorted(ADAMW_CASES))
def test_adamw_matches_torch(parity, case):
    kw = dict(ADAMW_CASES[case])
    scale = kw.pop("grad_scale")
    params = initial_params()
    tparams = torch_params(params)
    ours = AdamW(params, **kw)
    theirs = torch.optim.AdamW(
        param_groups(tparams, kw["weight_decay"]), lr=kw["lr"], betas=kw["betas"], eps=kw["eps"]
    )
    worst = run_both(ours, params, theirs, tparams, gradient_sequence(scale=scale))
    record(parity, worst, params, tparams)
    # the parameters really moved (a no-op optimizer would not pass by accident)
    assert max(np.max(np.abs(params[k] - initial_params()[k])) for k in params) > 1e-2


@pytest.mark.parametrize("case", sorted(ADAMW_CASES))
def test_fast_adamw_in_float32_matches_torch(parity, case):
    # the fast backend's one-pass kernel (float32 only) against torch in float64 from the same
    # float32 start: 20 steps of float32 rounding stay within 2e-5
    kw = dict(ADAMW_CASES[case])
    scale = kw.pop("grad_scale")
    params = {k: p.astype(np.float32) for k, p in initial_params().items()}
    tparams = torch_params(params)
    ours = AdamW(params, **kw, backend="fast")
    assert ours.fused
    theirs = torch.optim.AdamW(
        param_groups(tparams, kw["weight_decay"]), lr=kw["lr"], betas=kw["betas"], eps=kw["eps"]
    )
    grads = [{k: g.astype(np.float32) for k, g in step.items()} for step in gradient_sequence(scale=scale)]
    worst = run_both(ours, params, theirs, tparams, grads)
    record(parity, worst, params, tparams, atol=2e-5)


SGD_CASES = {
    "momentum-wd": dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=False),
    "nesterov-wd": dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
    "momentum": dict(lr=0.05, momentum=0.9, weight_decay=0.0, nesterov=False),
    "plain-wd": dict(lr=0.05, momentum=0.0, weight_decay=0.1, nesterov=False),
}


@pytest.mark.parametrize("case", sorted(SGD_CASES))
def test_sgd_matches_torch(parity, case):
    kw = SGD_CASES[case]
    params = initial_params()
    tparams = torch_params(params)
    ours = SGD(params, **kw)
    theirs = torch.optim.SGD(
        param_groups(tparams, kw["weight_decay"]), lr=kw["lr"], momentum=kw["momentum"], nesterov=kw["nesterov"]
    )
    worst = run_both(ours, params, theirs, tparams, gradient_sequence())
    record(parity, worst, params, tparams)


def test_adamw_lr_override_matches_manual_group_lr(parity):
    """step(grads, lr=x) uses x for that step only; a step without lr goes back to the constructor lr."""
    rng = np.random.default_rng(2)
    lrs = [float(x) for x in rng.uniform(1e-3, 3e-2, STEPS)]
    for i in (3, 4, 11, 19):
        lrs[i] = None
    params = initial_params()
    tparams = torch_params(params)
    ours = AdamW(params, lr=5e-3, betas=(0.9, 0.99), weight_decay=0.1)
    theirs = torch.optim.AdamW(param_groups(tparams, 0.1), lr=5e-3, betas=(0.9, 0.99), eps=1e-8)
    worst = run_both(ours, params, theirs, tparams, gradient_sequence(), lrs=lrs)
    record(parity, worst, params, tparams)


@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
def test_sgd_lr_schedule_matches_torch_scheduler(parity, nesterov):
    """Our lr_at fed per step == torch's LambdaLR driving the same schedule."""
    sched = dict(learning_rate=0.1, min_lr=0.01, warmup_iters=4, lr_decay_iters=15)
    params = initial_params()
    tparams = torch_params(params)
    ours = SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    theirs = torch.optim.SGD(param_groups(tparams, 0.01), lr=0.1, momentum=0.9, nesterov=nesterov)
    scheduler = torch.optim.lr_scheduler.LambdaLR(theirs, lambda step: lr_at(step, **sched) / 0.1)
    lrs = [lr_at(i, **sched) for i in range(STEPS)]
    worst = run_both(ours, params, theirs, tparams, gradient_sequence(), lrs=lrs, scheduler=scheduler)
    record(parity, worst, params, tparams)


@pytest.mark.parametrize("make", [
    lambda p: AdamW(p, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1),
    lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
], ids=["adamw", "sgd"])
def test_state_dict_resume_is_exact(parity, make):
    """10 steps, save the state, load it into a fresh optimizer on a copy of the params, 10 more
    steps == 20 uninterrupted steps, bit for bit (bias correction needs the step count too)."""
    grads_seq = gradient_sequence()
    straight = initial_params()
    opt = make(straight)
    for g in grads_seq:
        opt.step({k: v.copy() for k, v in g.items()})

    first = initial_params()
    opt = make(first)
    for g in grads_seq[:10]:
        opt.step({k: v.copy() for k, v in g.items()})
    saved = {k: np.array(v, copy=True) for k, v in opt.state_dict().items()}
    resumed = {k: v.copy() for k, v in first.items()}
    opt = make(resumed)
    opt.load_state_dict(saved)
    for g in grads_seq[10:]:
        opt.step({k: v.copy() for k, v in g.items()})
    for name in sorted(straight):
        parity.check(name, resumed[name], straight[name])
    parity.assert_ok()


@pytest.mark.parametrize(
    "make,dtype,rtol",
    [
        (lambda p: AdamW(p, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, backend="reference"), np.float64, 0.0),
        (lambda p: AdamW(p, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, backend="fast"), np.float32, 1e-6),
        (lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01), np.float64, 0.0),
    ],
    ids=["adamw-reference", "adamw-fast", "sgd"],
)
def test_grad_scale_equals_clipping_the_gradients_first(make, dtype, rtol):
    # the training loop's clipping (clip_factor as grad_scale) against clip_grad_norm's
    # in-place scaling, over steps that clip (norms 12-13 > 2) and steps that do not (1.1-1.3)
    params = {k: p.astype(dtype) for k, p in initial_params().items()}
    clipped, scaled = {k: p.copy() for k, p in params.items()}, {k: p.copy() for k, p in params.items()}
    opt_clipped, opt_scaled = make(clipped), make(scaled)
    for i, grads in enumerate(gradient_sequence(steps=6)):
        grads = {k: (g if i % 2 else 0.1 * g).astype(dtype) for k, g in grads.items()}
        ours = {k: g.copy() for k, g in grads.items()}
        clip_grad_norm(grads, 2.0)
        opt_clipped.step(grads)
        opt_scaled.step(ours, grad_scale=clip_factor(grad_norm(ours), 2.0))
    for k in params:
        np.testing.assert_allclose(scaled[k], clipped[k], rtol=rtol, atol=0)
        assert np.max(np.abs(scaled[k] - params[k])) > 1e-3  # and they moved


def test_clip_factor():
    assert clip_factor(4.0, 2.0) == pytest.approx(0.5, rel=1e-6)
    assert clip_factor(1.0, 2.0) == 1.0
    assert clip_factor(math.inf, 2.0) == clip_factor(math.nan, 2.0) == 1.0  # the step is skipped anyway
    assert clip_factor(3.0, math.inf) == 1.0  # no clipping


@pytest.mark.parametrize("ratio", [0.3, 1.0 - 1e-3, 2.0, None], ids=["clips", "just-clips", "no-clip", "zero-grads"])
def test_clip_grad_norm_matches_torch(parity, ratio):
    grads = gradient_sequence(steps=1, seed=3)[0]
    if ratio is None:
        grads = {k: np.zeros_like(g) for k, g in grads.items()}
    tparams = torch_params(initial_params())
    for name, p in tparams.items():
        p.grad = torch.tensor(grads[name])
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))  # computed here, independently
    max_norm = 1.0 if ratio is None else ratio * norm

    returned = clip_grad_norm(grads, max_norm)
    torch_norm = torch.nn.utils.clip_grad_norm_(list(tparams.values()), max_norm)

    parity.check("returned norm vs torch", float(returned), float(torch_norm), rtol=1e-12)
    parity.check("returned norm vs sqrt(sum g^2)", float(returned), norm, rtol=1e-12)
    for name in sorted(grads):
        parity.check(name, grads[name], tparams[name].grad.numpy(), rtol=1e-12)
    parity.assert_ok()
    clipped = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    assert clipped <= max_norm * (1 + 1e-9) or clipped == 0.0


# ----------------------------------------------------------------------------------------------
# the schedule: properties, then closed-form points derived by hand

SCHEDULES = [
    dict(learning_rate=6e-4, min_lr=6e-5, warmup_iters=10, lr_decay_iters=110),
    dict(learning_rate=1.0, min_lr=0.0, warmup_iters=100, lr_decay_iters=1000),
    dict(learning_rate=3e-3, min_lr=3e-3 / 10, warmup_iters=1, lr_decay_iters=9),
]


@pytest.mark.parametrize("s", SCHEDULES, ids=["nanogpt-like", "unit", "short"])
def test_lr_at_properties(s):
    w, d, hi, lo = s["warmup_iters"], s["lr_decay_iters"], s["learning_rate"], s["min_lr"]
    lrs = np.array([lr_at(i, **s) for i in range(d + 20)])
    # warm-up: starts near 0 (at most one warm-up increment), rises on a straight line to learning_rate
    assert 0.0 <= lrs[0] <= hi / w * (1 + 1e-12)
    steps = np.diff(lrs[: w + 1])
    assert np.all(steps > 0)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)
    assert math.isclose(lrs[w], hi, rel_tol=1e-12)
    # decay: never increases, reaches min_lr at lr_decay_iters and stays there
    assert np.all(np.diff(lrs[w:]) <= 1e-15 * hi)
    assert math.isclose(lrs[d], lo, rel_tol=1e-12, abs_tol=1e-15)
    assert np.allclose(lrs[d:], lo, rtol=1e-12, atol=1e-15)
    assert lr_at(10 * d, **s) == pytest.approx(lo, rel=1e-12, abs=1e-15)
    assert np.all((lrs >= min(lo, lrs[0]) - 1e-15) & (lrs <= hi * (1 + 1e-12)))


def test_lr_at_closed_form():
    """Cosine from learning_rate at step w to min_lr at step d: lr = lo + (hi - lo) * (1 + cos(pi * f)) / 2
    with f = (step - w) / (d - w). By hand, with w = 10, d = 110, hi = 1, lo = 0.1:
      f = 1/4 (step 35): cos(pi/4) = sqrt(2)/2 -> 0.1 + 0.9 * (2 + sqrt 2) / 4
      f = 1/2 (step 60): cos(pi/2) = 0        -> (1 + 0.1) / 2 = 0.55
      f = 3/4 (step 85): cos(3pi/4) = -sqrt(2)/2 -> 0.1 + 0.9 * (2 - sqrt 2) / 4
      f = 1/3 (step 10 + 100/3 is not an integer; use d = 130 -> step 50): cos(pi/3) = 1/2 -> 0.1 + 0.9 * 3/4
    """
    s = dict(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110)
    assert lr_at(35, **s) == pytest.approx(0.1 + 0.9 * (2 + math.sqrt(2)) / 4, rel=1e-12)
    assert lr_at(60, **s) == pytest.approx(0.55, rel=1e-12)
    assert lr_at(85, **s) == pytest.approx(0.1 + 0.9 * (2 - math.sqrt(2)) / 4, rel=1e-12)
    assert lr_at(50, **{**s, "lr_decay_iters": 130}) == pytest.approx(0.1 + 0.9 * 0.75, rel=1e-12)
    # no warm-up at all: the very first step is at learning_rate
    assert lr_at(0, **{**s, "warmup_iters": 0}) == pytest.approx(1.0, rel=1e-12)
