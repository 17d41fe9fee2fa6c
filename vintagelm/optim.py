"""Optimizers, gradient clipping and the learning-rate schedule, by hand.

Optimizers take the model's parameter dict and update its arrays in place, so the model's
flat buffer sees every step. Weight decay rule (both optimizers): only parameters with
ndim >= 2 decay (the weight matrices and the embeddings); 1-D parameters (biases, layer-norm
gains) never do, since shrinking a gain or an offset toward 0 is not a useful prior.
"""
import math

import numpy as np

from vintagelm.backend import resolve_backend


def decays(param):
    """Whether weight decay applies to this parameter (matrices and embeddings only)."""
    return param.ndim >= 2


class Optimizer:
    """Shared bookkeeping: the parameter dict, a step counter, state (de)serialisation."""

    state_names = ()  # per-parameter state buffers, e.g. ("m", "v")
    sharded = False  # True: the optimizer reduces, clips and steps across MPI ranks itself (dist.ZeroAdamW)

    def __init__(self, params, lr):
        self.params, self.lr, self.t = params, lr, 0
        self.state = {s: {k: np.zeros_like(p) for k, p in params.items()} for s in self.state_names}

    def state_dict(self):
        """{"<state>.<param name>": array} plus "t" as a 0-d array: safetensors-friendly."""
        out = {f"{s}.{k}": a for s, bufs in self.state.items() for k, a in bufs.items()}
        out["t"] = np.array(self.t, dtype=np.int64)
        return out

    def load_state_dict(self, d):
        expected = set(self.state_dict())
        if set(d) != expected:
            missing, extra = sorted(expected - set(d)), sorted(set(d) - expected)
            raise ValueError(f"optimizer state does not match the model (missing {missing[:3]}, unexpected {extra[:3]})")
        for s, bufs in self.state.items():
            for k, a in bufs.items():
                if d[f"{s}.{k}"].shape != a.shape:
                    raise ValueError(f"optimizer state {s}.{k} has shape {d[f'{s}.{k}'].shape}, expected {a.shape}")
                a[...] = d[f"{s}.{k}"]
        self.t = int(d["t"])


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), torch.optim.AdamW semantics:
        p <- p * (1 - lr * wd)                          (decaying parameters only)
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    state_names = ("m", "v")

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, backend="auto"):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        # backend "fast" updates each float32 tensor in one compiled pass (fast/kernels.py)
        self.backend = resolve_backend(backend)
        self.fused = self.backend == "fast" and all(p.dtype == np.float32 for p in params.values())

    def step(self, grads, lr=None, grad_scale=1.0):
        """One update with the gradients `grads` times grad_scale (the factor of gradient
        clipping, see clip_factor: applied as each gradient is read, not in a pass of its own)."""
        lr = self.lr if lr is None else lr
        self.t += 1
        step_size, rsqrt_bc2 = bias_corrections(lr, self.betas, self.t)
        for k, p in self.params.items():
            decay = 1 - lr * self.weight_decay if decays(p) else 1.0
            m, v = self.state["m"][k], self.state["v"][k]
            if self.fused:
                self._update_fused(p, grads[k], m, v, decay, step_size, rsqrt_bc2, grad_scale)
            else:
                adamw_update(p, grads[k], m, v, decay=decay, betas=self.betas, eps=self.eps,
                             step_size=step_size, rsqrt_bc2=rsqrt_bc2, grad_scale=grad_scale)

    def _update_fused(self, p, g, m, v, decay, step_size, rsqrt_bc2, grad_scale):
        """adamw_update in one pass over each tensor (fast/kernels.py), float32."""
        from vintagelm.fast.kernels import adamw_update as fused_update

        f = np.float32
        fused_update(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), f(decay), f(self.betas[0]),
                     f(self.betas[1]), f(step_size), f(rsqrt_bc2), f(self.eps), f(grad_scale))


def bias_corrections(lr, betas, t):
    """AdamW's step size at rate lr with m's bias correction folded in, and 1 / sqrt of v's
    bias correction, at step t (1 at the first update)."""
    b1, b2 = betas
    return lr / (1 - b1**t), 1.0 / math.sqrt(1 - b2**t)


def adamw_update(p, g, m, v, *, decay, betas, eps, step_size, rsqrt_bc2, grad_scale=1.0):
    """AdamW's update (see AdamW) of one tensor p and its moments m, v, in place, from its
    gradient g times grad_scale. decay: p's factor 1 - lr wd (1.0: none); step_size, rsqrt_bc2:
    bias_corrections. AdamW.step and ZeRO-1's shard (dist.ZeroAdamW) both update through it."""
    b1, b2 = betas
    if grad_scale != 1.0:
        g = g * g.dtype.type(grad_scale)
    if decay != 1.0:
        p *= decay
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * (g * g)
    denom = np.sqrt(v)
    denom *= rsqrt_bc2
    denom += eps
    p -= step_size * (m / denom)


class SGD(Optimizer):
    """SGD with momentum, torch.optim.SGD semantics (dampening 0):
        g <- g + wd p   (L2 on decaying parameters only)
        buf <- g at the first step, then momentum * buf + g
        p <- p - lr * (g + momentum * buf if nesterov else buf)
    """

    state_names = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        if nesterov and momentum <= 0:
            raise ValueError("nesterov momentum needs momentum > 0")
        super().__init__(params, lr)
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov

    def step(self, grads, lr=None, grad_scale=1.0):
        """One update with the gradients `grads` times grad_scale (see AdamW.step)."""
        lr = self.lr if lr is None else lr
        self.t += 1
        for k, p in self.params.items():
            g = grads[k] if grad_scale == 1.0 else grads[k] * grads[k].dtype.type(grad_scale)
            if self.weight_decay and decays(p):
                g = g + self.weight_decay * p
            if self.momentum:
                buf = self.state["momentum_buffer"][k]
                if self.t == 1:
                    buf[...] = g
                else:
                    buf *= self.momentum
                    buf += g
                g = g + self.momentum * buf if self.nesterov else buf
            p -= lr * g


def grad_norm(grads):
    """The global L2 norm of all gradients (float; inf or nan when one is not finite)."""
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))


def layer_of(name):
    """The layer a parameter belongs to, for per-layer gradient norms: "h.3.attn.c_attn.weight" ->
    "h.3" (a block), "wte.weight" -> "wte"."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "h" and len(parts) > 2 else parts[0]


def layer_grad_norms(grads):
    """{layer: L2 norm of its gradients}, layers in the order their parameters come (layer_of)."""
    squares = {}
    for name, g in grads.items():
        layer = layer_of(name)
        squares[layer] = squares.get(layer, 0.0) + float(np.vdot(g, g))
    return {layer: math.sqrt(sq) for layer, sq in squares.items()}


def clip_factor(norm, max_norm):
    """What gradient clipping multiplies every gradient by: max_norm / norm when the global
    norm is above max_norm, else 1 (torch's clip_grad_norm_, which adds 1e-6 to the norm)."""
    return min(1.0, max_norm / (norm + 1e-6)) if math.isfinite(norm) else 1.0


def clip_grad_norm(grads, max_norm):
    """Scale all gradients in place so their global L2 norm is at most max_norm.

    Returns the norm before clipping (float; inf or nan when a gradient is not finite, in
    which case nothing is scaled and the caller should skip the step). The training loop
    instead hands clip_factor(...) to the optimizer's step as grad_scale, which saves this
    pass over every gradient."""
    total = grad_norm(grads)
    coef = clip_factor(total, max_norm)
    if coef < 1.0:
        for g in grads.values():
            g *= coef
    return total


def lr_at(step, *, learning_rate, min_lr, warmup_iters, lr_decay_iters):
    """The learning rate at `step` (0-based) of a schedule that peaks at learning_rate: linear
    warm-up from learning_rate/(warmup_iters+1) to learning_rate at step == warmup_iters, then half
    a cosine down to min_lr at step == lr_decay_iters, then flat. Warm-up keeps Adam's first,
    poorly estimated updates small."""
    if step < warmup_iters:
        return learning_rate * (step + 1) / (warmup_iters + 1)
    if step >= lr_decay_iters:
        return min_lr
    progress = (step - warmup_iters) / (lr_decay_iters - warmup_iters)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


def make_optimizer(cfg, model):
    """The optimizer a TrainConfig names (cfg.optimizer) for `model`, in one process:
    AdamW, or Muon with AdamW for what Muon does not update (muon.py). dist.make_optimizer
    adds ZeRO-1 under MPI."""
    return optimizer_for(cfg, model.params)


def optimizer_for(cfg, params):
    """make_optimizer's optimizer over the parameter dict `params` (a whole model's, or the
    parameters one ZeRO-1 rank updates)."""
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "muon":
        from vintagelm.muon import Muon  # muon.py builds on this module

        return Muon(params, cfg.learning_rate, muon_lr=cfg.muon_lr, momentum=cfg.muon_momentum, betas=betas,
                    weight_decay=cfg.weight_decay, backend=cfg.backend)
    return AdamW(params, cfg.learning_rate, betas, weight_decay=cfg.weight_decay, backend=cfg.backend)
