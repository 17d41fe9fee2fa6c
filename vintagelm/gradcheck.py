"""Central finite differences: the independent truth for every hand-written backward.

`numerical_gradient` checks one op (CS231n style: contract with an upstream gradient dy);
`check_model` checks every parameter tensor of a whole GPT. Both take their derivatives from
`central_differences`, the one finite-difference loop. Use float64: in float32 the
rounding error of a finite difference is as large as the quantity it measures.
"""
from dataclasses import dataclass

import numpy as np

from vintagelm.model import GPT

STEP = 1e-5  # finite-difference step: balances truncation (h^2) and rounding (eps/h) in float64
TOLERANCE = 1e-6  # max relative error accepted by `vintage gradcheck`
WEIGHT_STD = 0.3  # scale of the random weights a model is checked at (see check_model)
# the rounding error of one evaluation of a model's loss, relative to the loss: on gradients
# under 1e-3 (where rounding, not h^2, dominates) central differences of small GPTs (GPT-2 and
# modern switches, 5 configs x 3 seeds) were off by at most 1.14 eps |loss| / h; 10 leaves room
LOSS_ROUNDING = 10 * np.finfo(np.float64).eps


def central_differences(f, flat, which, h=STEP):
    """(len(which),) float64: df/dflat[i] for every index i in `which`, as (f(+h) - f(-h)) / 2h.

    `flat` is a 1-D view into what the scalar function f() reads; each flat[i] is moved by +h
    and by -h in place, one at a time, and put back."""
    grad = np.empty(len(which))
    for j, i in enumerate(which):
        old = flat[i]
        flat[i] = old + h
        plus = f()
        flat[i] = old - h
        minus = f()
        flat[i] = old
        grad[j] = (plus - minus) / (2 * h)
    return grad


def numerical_gradient(f, x, dy, h=STEP):
    """d/dx of sum(f(x) * dy) by central differences, perturbing x in place one element at a
    time (x is restored). f returns an array shaped like dy (or a scalar when dy is a scalar)."""
    flat_x = x.reshape(-1)  # a view: the perturbations reach x
    grad = central_differences(lambda: np.sum(f(x) * dy), flat_x, range(flat_x.size), h)
    return grad.reshape(x.shape)


def relative_error(analytic, numeric, least_scale=0.0):
    """max |a - n| / max(max |a|, max |n|, least_scale): one number per tensor, stable where
    single entries are near zero (entrywise ratios there measure only rounding noise).
    least_scale keeps a tensor whose gradients are all tiny from being judged by rounding noise."""
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0), least_scale)
    return float(np.abs(analytic - numeric).max(initial=0.0) / scale) if scale > 0 else 0.0


@dataclass
class GroupResult:
    name: str  # parameter name, e.g. h.0.attn.c_attn.weight
    checked: int  # how many entries were perturbed
    max_abs_grad: float  # largest analytic gradient magnitude among the checked entries
    rel_error: float  # relative_error over the checked entries

    @property
    def ok(self):
        return self.rel_error < TOLERANCE


def check_model(config, batch_size=2, seq_len=None, seed=0, samples=None, backend="reference"):
    """Compare GPT.backward with central differences of the loss for every parameter tensor,
    on the given backend (backend.py; the fast one in float64 runs its lanes and slot logic).

    `samples` limits how many entries per tensor are perturbed (random, seeded); None checks
    all. Dropout is supported: its generator is rewound before every forward, so each
    evaluation of the loss uses the same masks and the loss is a smooth function."""
    model = GPT(config, seed=seed, dtype=np.float64, backend=backend)
    rng = np.random.default_rng(seed)
    # Redraw every parameter from N(0, WEIGHT_STD): at GPT-2's init (std 0.02) attention is
    # nearly uniform and GELU nearly linear, so a wrong second-order term could hide, and
    # gradients are so small that finite differences measure mostly rounding noise.
    model.flat_params[:] = rng.standard_normal(model.flat_params.size) * WEIGHT_STD
    T = seq_len or config.block_size
    idx = rng.integers(0, config.vocab_size, (batch_size, T))
    targets = rng.integers(0, config.vocab_size, (batch_size, T))
    rng_state = model.dropout_rng.bit_generator.state

    def loss():
        model.dropout_rng.bit_generator.state = rng_state
        return model.forward(idx, targets)[1]

    # A central difference resolves no finer than its rounding: f(+h) and f(-h) are each off by
    # about LOSS_ROUNDING |f|, so their quotient by LOSS_ROUNDING |f| / h. A tensor whose checked
    # gradients are all small (QK-norm's key gains can be 1e-5) is judged against that absolute
    # error rather than a relative one that rounding alone would fail.
    resolution = LOSS_ROUNDING * abs(loss()) / STEP
    grads = {k: v.copy() for k, v in model.backward().items()}
    results = []
    for name, p in model.params.items():
        flat = p.reshape(-1)
        which = np.arange(flat.size)
        if samples is not None and samples < flat.size:
            which = np.sort(rng.choice(flat.size, samples, replace=False))
        numeric = central_differences(loss, flat, which)
        analytic = grads[name].reshape(-1)[which]
        error = relative_error(analytic, numeric, least_scale=resolution / TOLERANCE)
        results.append(GroupResult(name, which.size, float(np.abs(analytic).max()), error))
    return results


def format_table(results):
    """Rows of `name  checked  max|grad|  rel.error  PASS/FAIL` as one printable string."""
    width = max(len(r.name) for r in results)
    lines = [f"{'parameter':<{width}}  {'checked':>7}  {'max|grad|':>9}  {'rel.error':>9}  result"]
    for r in results:
        lines.append(
            f"{r.name:<{width}}  {r.checked:>7}  {r.max_abs_grad:>9.2e}  {r.rel_error:>9.2e}  {'PASS' if r.ok else 'FAIL'}"
        )
    return "\n".join(lines)
