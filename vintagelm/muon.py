"""Muon (Keller Jordan, 2024): momentum, then each hidden matrix's update orthogonalised.

For every 2-D weight matrix inside the network (muon_params says which), one step is
    B <- mu B + G                                   (momentum, buffer starts at 0)
    U <- G + mu B   (nesterov)   or   U <- B
    O <- NewtonSchulz5(U)                           (~ the semi-orthogonal factor of U's polar decomposition)
    p <- p * (1 - lr wd)                            (decoupled decay; wd 0 by default, as published)
    p <- p - lr * sqrt(max(1, fan_out / fan_in)) * O
Every other parameter (embeddings, the output head, gains, biases) takes AdamW's step with
the run's AdamW settings, through an inner optim.AdamW over those parameters only.

Orthogonalising replaces the update's singular values by ~1 and keeps its singular vectors,
so no direction of a matrix's update dominates the others. The published recipe keeps the
embedding and the head in AdamW, which it found to train them better; an embedding's rows are
looked up one at a time, not applied as a linear map of the hidden state, so an orthogonal
update means nothing for it.

Differences from the published code, neither of which changes the mathematics:
- its Newton-Schulz runs in bfloat16 on a GPU; ours runs in the parameter dtype (float32 or
  float64), since NumPy has no bfloat16 matmul.
- its later version keeps the momentum as an average (B <- mu B + (1 - mu) G) and mixes U as
  a lerp; both are this file's B and U times (1 - mu), which the normalisation in Newton-Schulz
  removes (but for its eps).

The learning-rate schedule: the training loop hands step() the scheduled AdamW lr; Muon's
matrices follow the same schedule, at muon_lr times the same fraction of the peak (lr / self.lr).

ZeRO-1: Newton-Schulz needs each whole matrix on one rank, so dist.ZeroMuon shards Muon's state
by whole parameters rather than by element ranges as dist.ZeroAdamW does.
"""
import numpy as np

from vintagelm.optim import AdamW, Optimizer

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the published quintic's (a, b, c)
NS_STEPS = 5
NS_EPS = 1e-7  # keeps an all-zero update at zero instead of 0/0

# first name component of the 2-D parameters that stay with AdamW: the token and position
# embeddings, the output head, and the museum MLP's direct context -> vocabulary connection,
# which is a second head
ADAMW_MATRICES = ("wte", "wpe", "lm_head", "direct")


def muon_params(shapes):
    """The names, in order, of the parameters Muon updates, from {name: shape}: every 2-D
    matrix except those of ADAMW_MATRICES. Biases, gains and any other ndim are AdamW's."""
    return [name for name, shape in shapes.items() if len(shape) == 2 and name.split(".")[0] not in ADAMW_MATRICES]


def newton_schulz(G, steps=NS_STEPS, eps=NS_EPS):
    """The quintic Newton-Schulz iteration: G (r, s) -> O (r, s) with G's singular vectors and
    singular values moved into [0.68, 1.21] (those above 2e-3 of G's Frobenius norm; much smaller
    ones are only multiplied by about a^5 ~ 480).

    Each step X <- a X + b (X X^T) X + c (X X^T)^2 X applies the odd polynomial
    p(s) = a s + b s^3 + c s^5 to every singular value; a, b, c make p's slope at 0 steep (a = 3.4)
    so small values grow fast, at the price of not converging exactly to 1. The iteration commutes
    with transposition, so it runs on the wide orientation, where X X^T is the smaller Gram matrix."""
    a, b, c = NS_COEFFICIENTS
    tall = G.shape[0] > G.shape[1]
    X = G.T if tall else G  # (r, s) with r <= s
    X = X / (np.linalg.norm(X) + eps)  # Frobenius >= spectral norm: every singular value is now <= 1
    for _ in range(steps):
        A = X @ X.T  # (r, r)
        B = b * A + c * (A @ A)  # (r, r)
        X = a * X + B @ X  # (r, s)
    return X.T if tall else X


def update_scale(shape):
    """The published factor sqrt(max(1, rows / cols)) on torch's (out, in) weight, which gives a
    tall matrix's orthogonal update the per-entry size of a wide one. Our weights are stored
    (in, out) like GPT-2's Conv1D, so rows / cols is shape[1] / shape[0] here: fan_out / fan_in."""
    fan_in, fan_out = shape
    return max(1.0, fan_out / fan_in) ** 0.5


class MuonMatrices(Optimizer):
    """The Muon update alone, for 2-D matrices only (the published optimizer); Muon below pairs it
    with AdamW for the other parameters. State: "momentum_buffer.<name>" and "t"."""

    state_names = ("momentum_buffer",)

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=NS_STEPS, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum, self.nesterov, self.ns_steps, self.weight_decay = momentum, nesterov, ns_steps, weight_decay

    def step(self, grads, lr=None, grad_scale=1.0):
        """One update with the gradients `grads` times grad_scale (see AdamW.step)."""
        lr = self.lr if lr is None else lr
        self.t += 1
        for k, p in self.params.items():
            g = grads[k] if grad_scale == 1.0 else grads[k] * grads[k].dtype.type(grad_scale)
            buf = self.state["momentum_buffer"][k]
            buf *= self.momentum
            buf += g
            u = g + self.momentum * buf if self.nesterov else buf
            if self.weight_decay:
                p *= 1 - lr * self.weight_decay
            p -= (lr * update_scale(p.shape)) * newton_schulz(u, self.ns_steps)


class Muon:
    """MuonMatrices for the hidden matrices (muon_params), AdamW for the rest; see the module docstring.

    lr, betas, eps and weight_decay are the AdamW part's (the run's AdamW settings); muon_lr,
    momentum, nesterov, ns_steps and muon_weight_decay are the matrices'. state_dict holds the
    matrices' "momentum_buffer.<name>", the AdamW part's "m.<name>" and "v.<name>", and one "t"
    (both parts always step together)."""

    sharded = False  # each rank steps the whole model (train.training_step); ZeRO-1 is dist.ZeroMuon

    def __init__(self, params, lr, muon_lr=0.02, momentum=0.95, nesterov=True, ns_steps=NS_STEPS,
                 betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, muon_weight_decay=0.0, backend="auto"):
        self.params, self.lr = params, lr
        names = set(muon_params({k: p.shape for k, p in params.items()}))
        self.matrices = MuonMatrices({k: p for k, p in params.items() if k in names}, muon_lr, momentum, nesterov,
                                     ns_steps, muon_weight_decay)
        self.adamw = AdamW({k: p for k, p in params.items() if k not in names}, lr, betas, eps, weight_decay, backend)

    @property
    def t(self):
        return self.adamw.t

    def step(self, grads, lr=None, grad_scale=1.0):
        """One update with the gradients `grads` times grad_scale (see AdamW.step); lr is the
        AdamW part's, and the matrices take muon_lr times the same fraction of the peak."""
        lr = self.lr if lr is None else lr
        self.adamw.step(grads, lr=lr, grad_scale=grad_scale)
        fraction = lr / self.lr if self.lr else 0.0  # a peak of 0 trains nothing, the matrices included
        self.matrices.step(grads, lr=self.matrices.lr * fraction, grad_scale=grad_scale)

    def state_dict(self):
        return {**self.adamw.state_dict(), **self.matrices.state_dict()}

    def load_state_dict(self, d):
        """The matrices' part first: an AdamW checkpoint fails there, naming the missing momentum."""
        self.matrices.load_state_dict({k: v for k, v in d.items() if k.startswith("momentum_buffer.") or k == "t"})
        self.adamw.load_state_dict({k: v for k, v in d.items() if not k.startswith("momentum_buffer.")})
