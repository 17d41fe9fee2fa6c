"""Data-parallel training over MPI (mpi4py), and ZeRO stage 1.

    mpirun -n 4 vintage train ...

What data parallelism is, in three lines: every rank draws the same global batch (the same
seeded generator), keeps its own 1/N of the rows, and computes the gradient of its rows' mean
loss; an Allreduce sums the N gradients in place and each rank divides by N, so every rank
holds the gradient of the whole batch's mean loss; every rank then takes the same step. So
`batch_size` is the global batch whatever the number of ranks, and 1 rank and N ranks train
the same model (up to the order of float additions).

ZeRO stage 1 (`--set zero=1`) shards the optimizer state: the flat parameter buffer, padded
to a multiple of N, is cut into N equal slices; rank r keeps AdamW's m and v for slice r only
(optimizer memory per rank / N). A step is then: Reduce_scatter the gradients (rank r gets
the summed gradient of its slice), the global norm from the slices' sums of squares (one
scalar Allreduce) for clipping, the AdamW update of slice r, and an Allgather of the updated
slices into every rank's full parameter buffer. A checkpoint gathers the slices into the
ordinary AdamW state, so a ZeRO run resumes with or without ZeRO, on any number of ranks.

Muon cannot take an element slice: Newton-Schulz orthogonalises each WHOLE matrix. So under
optimizer=muon, ZeRO-1 (ZeroMuon) shards by whole parameters instead: each parameter is owned
by one rank (the largest first, each to the rank owning the fewest elements so far), which
alone keeps its optimizer state (Muon's momentum, or AdamW's m and v) and computes its update
from the all-reduced gradient; then one Allgatherv, each rank sending its own parameters
packed one after another in an order every rank knows, hands every rank all of them (a copy:
half the bytes of an Allreduce, and exact). Every parameter's update is the one-process
Muon's to the bit. (The gradients are all-reduced, as without ZeRO: the memory saved is the
optimizer state.) Its checkpoints hold Muon's state.

The training loop (train.py) never imports this module: `vintage train` makes the world here
(world(), an MPIWorld with world.Local's members) and the optimizer (make_optimizer), and
hands both to train.train.

Only rank 0 writes files (checkpoints, metrics, logs) and shows progress. A rank that fails
must not leave the others waiting in a collective forever: an uncaught exception calls
MPI Abort (sys.excepthook), and mpirun ends the job when a rank is killed.

Open MPI progresses a non-blocking collective only inside MPI calls, so overlapping the
Allreduce with the backward pass would need the backward to call into MPI between layers;
at this model size one blocking Allreduce over the one flat buffer is simpler and measured
in benchmarks/bench_mpi.py.
"""
import math
import os
import sys

import numpy as np

from vintagelm.flat_model import flat_slices
from vintagelm.muon import muon_params
from vintagelm.optim import (adamw_update, bias_corrections, clip_factor, decays,
                             make_optimizer as one_process_optimizer, optimizer_for)
from vintagelm.world import LOCAL

MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")  # set by mpirun / mpiexec


class MPIWorld:
    """The ranks of MPI.COMM_WORLD: world.Local's members, for N ranks."""

    def __init__(self, comm, mpi):
        self.comm, self.MPI = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def mean(self, x):
        """The mean over ranks of a float."""
        return self.comm.allreduce(float(x), op=self.MPI.SUM) / self.size

    def average(self, buf):
        """buf <- the mean over ranks of buf, in place (one Allreduce over the whole buffer)."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        buf *= buf.dtype.type(1.0 / self.size)

    def barrier(self):
        self.comm.Barrier()

    def any(self, flag):
        """True on every rank when `flag` is true on any (a Ctrl-C seen by one rank stops all)."""
        return bool(self.comm.allreduce(int(bool(flag)), op=self.MPI.MAX))

    def rows(self, batch_size):
        """The slice of a global batch's rows that this rank trains on: its 1/N."""
        per = batch_size // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def dropout_rng(self, rng):
        """This rank's rows of the one-process dropout masks (RankRows)."""
        return RankRows(rng, self.rank, self.size) if self.size > 1 else rng

    def abort(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


_WORLD = None


def launched_by_mpi():
    return any(v in os.environ for v in MPI_ENV)


def world():
    """The world this process trains in: MPIWorld when started by mpirun (and mpi4py is
    installed), else world.LOCAL. Made once; under MPI it also installs the excepthook that
    aborts the job when any rank raises."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    if not launched_by_mpi():
        _WORLD = LOCAL
        return _WORLD
    try:
        from mpi4py import MPI
    except ImportError:
        from vintagelm.common import UserError

        raise UserError("started by mpirun, but mpi4py is not installed: pip install 'vintagelm[mpi]'") from None
    _WORLD = MPIWorld(MPI.COMM_WORLD, MPI)
    if _WORLD.size > 1:
        install_abort_hook(_WORLD)
    return _WORLD


def install_abort_hook(w):
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        print(f"vintage: rank {w.rank} of {w.size} failed ({kind.__name__}); aborting the whole job",
              file=sys.stderr, flush=True)
        w.abort(1)

    sys.excepthook = hook


def make_optimizer(cfg, model, world):
    """The optimizer of a run of `cfg` on `world`: with ZeRO-1 asked for (cfg.zero) and several
    ranks, ZeroAdamW, or ZeroMuon for optimizer=muon; else the one-process one (optim.make_optimizer)."""
    if cfg.zero and world.size > 1:
        if cfg.optimizer == "muon":
            return ZeroMuon(cfg, model, world)
        return ZeroAdamW(model, world, cfg.learning_rate, (cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    return one_process_optimizer(cfg, model)


class RankRows:
    """The dropout generator of one rank: it draws the masks of the WHOLE global batch from the
    stream every rank shares, and hands out this rank's rows, so N ranks apply exactly the masks
    one process would (drawing N times the random numbers, a small cost beside the matmuls).
    Tiled attention draws only a seed per call (nn/attention_tiled.py) and makes its masks by
    local row: with it, dropout under MPI is equally random but not the one-process masks."""

    def __init__(self, rng, rank, size):
        self.rng, self.rank, self.size = rng, rank, size

    @property
    def bit_generator(self):  # what a checkpoint saves and restores
        return self.rng.bit_generator

    def random(self, shape, dtype=np.float64):
        rows = shape[0]  # (B/N, ...) asked for; (B, ...) drawn
        full = self.rng.random((rows * self.size, *shape[1:]), dtype=dtype)
        return full[self.rank * rows:(self.rank + 1) * rows]

    def integers(self, *args, **kwargs):
        return self.rng.integers(*args, **kwargs)


class ZeroAdamW:
    """AdamW with its moments sharded over the ranks (ZeRO stage 1); see the module docstring.
    Each rank updates its slice with AdamW's own update (optim.adamw_update), parameter piece
    by parameter piece. It has AdamW's state_dict / load_state_dict format (gathered), so
    checkpoints do not know whether ZeRO was on."""

    sharded = True

    def __init__(self, model, world, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.model, self.world, self.lr = model, world, lr
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.t = 0
        n, N = model.flat_params.size, world.size
        self.padded = -(-n // N) * N  # n rounded up to a multiple of N
        self.shard = self.padded // N
        lo = world.rank * self.shard
        self.lo, self.hi = lo, min(lo + self.shard, n)  # this rank's slice [lo, hi) of the real buffer
        dtype = model.flat_params.dtype
        self.m = np.zeros(self.shard, dtype=dtype)  # (shard,) moments of this slice (padding included)
        self.v = np.zeros(self.shard, dtype=dtype)
        self.slices = flat_slices(model.shapes)  # name -> where the parameter sits in the flat buffer
        # the parameters' pieces inside this rank's slice: (where in the shard, whether it decays)
        self.pieces = [(slice(max(s.start, lo) - lo, min(s.stop, self.hi) - lo), decays(model.params[name]))
                       for name, s in self.slices.items() if s.start < self.hi and s.stop > lo]
        self._grads = np.zeros(self.padded, dtype=dtype)  # the padded gradient buffer sent to Reduce_scatter
        self._params = np.zeros(self.padded, dtype=dtype)  # the padded parameter buffer Allgather fills

    def step_sharded(self, flat_grads, lr, grad_clip):
        """Reduce-scatter the gradients, clip by the global norm, update this rank's slice and
        all-gather the parameters -> (global gradient norm, whether the step was taken)."""
        MPI, comm, N = self.world.MPI, self.world.comm, self.world.size
        n = flat_grads.size
        self._grads[:n] = flat_grads
        g = np.empty(self.shard, dtype=flat_grads.dtype)  # (shard,) summed gradient of this slice
        comm.Reduce_scatter_block(self._grads, g, op=MPI.SUM)
        g *= g.dtype.type(1.0 / N)
        norm = math.sqrt(comm.allreduce(float(np.vdot(g, g)), op=MPI.SUM))
        if not math.isfinite(norm):
            return norm, False
        scale = clip_factor(norm, grad_clip or math.inf)
        self.t += 1
        step_size, rsqrt_bc2 = bias_corrections(lr, self.betas, self.t)
        p = self._params[self.lo:self.lo + self.shard]  # (shard,) a view
        p[: self.hi - self.lo] = self.model.flat_params[self.lo:self.hi]
        for where, decaying in self.pieces:
            adamw_update(p[where], g[where], self.m[where], self.v[where],
                         decay=1 - lr * self.weight_decay if decaying else 1.0, betas=self.betas, eps=self.eps,
                         step_size=step_size, rsqrt_bc2=rsqrt_bc2, grad_scale=scale)
        comm.Allgather(MPI.IN_PLACE, self._params)
        self.model.flat_params[...] = self._params[:n]
        return norm, True

    def optimizer_bytes(self):
        return self.m.nbytes + self.v.nbytes

    def _gather(self, shard):
        full = np.empty(self.padded, dtype=shard.dtype)
        self.world.comm.Allgather(shard, full)
        return full[: self.model.flat_params.size]

    def state_dict(self):
        """AdamW's format: {"m.<name>", "v.<name>", "t"} with the moments gathered from all ranks
        (a collective: every rank must call it)."""
        out = {}
        for state, shard in (("m", self.m), ("v", self.v)):
            full = self._gather(shard)
            for name, where in self.slices.items():
                out[f"{state}.{name}"] = full[where].reshape(self.model.shapes[name]).copy()
        out["t"] = np.array(self.t, dtype=np.int64)
        return out

    def load_state_dict(self, d):
        expected = {f"{s}.{k}" for s in ("m", "v") for k in self.slices} | {"t"}
        if set(d) != expected:
            raise ValueError("optimizer state does not match the model")
        for state, shard in (("m", self.m), ("v", self.v)):
            full = np.zeros(self.padded, dtype=shard.dtype)
            for name, where in self.slices.items():
                saved, shape = d[f"{state}.{name}"], self.model.shapes[name]
                if saved.shape != shape:
                    raise ValueError(f"optimizer state {state}.{name} has shape {saved.shape}, expected {shape}")
                full[where] = saved.reshape(-1)
            shard[...] = full[self.lo:self.lo + self.shard]
        self.t = int(d["t"])


def parameter_owners(shapes, size):
    """{name: the rank that owns it} for ZeroMuon: the largest parameters first, each to the rank
    holding the fewest elements so far (the lowest rank on a tie), so the optimizer state splits
    about evenly however unequal the parameters are. The same on every rank (shapes are)."""
    load, owners = [0] * size, {}
    for name in sorted(shapes, key=lambda k: (-math.prod(shapes[k]), k)):
        rank = min(range(size), key=lambda r: (load[r], r))
        owners[name] = rank
        load[rank] += math.prod(shapes[name])
    return owners


class ZeroMuon:
    """ZeRO-1 for optimizer=muon: each rank keeps the optimizer state of the whole parameters it
    owns (parameter_owners) and updates them alone; see the module docstring. Its state_dict is
    one-process Muon's (gathered), so checkpoints do not know whether ZeRO was on.

    The gradients arrive averaged and the norm is taken as for any optimizer (train.training_step:
    every rank holds the whole gradient), so it is not `sharded` in that step's sense: only its
    `step` differs, updating this rank's parameters and sharing them."""

    sharded = False

    def __init__(self, cfg, model, world):
        self.model, self.world = model, world
        self.owners = parameter_owners(model.shapes, world.size)
        mine = {k: p for k, p in model.params.items() if self.owners[k] == world.rank}
        self.inner = optimizer_for(cfg, mine)  # a Muon over this rank's parameters only
        self.slices = flat_slices(model.shapes)
        # each rank's parameters in the model's order, packed: rank 0's first, then rank 1's, ...
        self.owned = [[k for k in model.shapes if self.owners[k] == r] for r in range(world.size)]
        self.counts = [sum(model.params[k].size for k in keys) for keys in self.owned]
        self._sent = np.empty(self.counts[world.rank], dtype=model.flat_params.dtype)  # this rank's, packed
        self._gathered = np.empty(sum(self.counts), dtype=model.flat_params.dtype)  # (n,) every rank's, packed
        # the full state's layout, {key: (owner, shape)}: what a one-process Muon's state_dict holds
        whole = set(muon_params(model.shapes))
        self.layout = {f"{s}.{k}": (self.owners[k], shape) for k, shape in model.shapes.items()
                       for s in (("momentum_buffer",) if k in whole else ("m", "v"))}

    @property
    def t(self):
        return self.inner.t

    def step(self, grads, lr=None, grad_scale=1.0):
        """One update of this rank's parameters from the (averaged) gradients times grad_scale,
        then every rank's parameters shared."""
        self.inner.step(grads, lr=lr, grad_scale=grad_scale)
        flat, at = self.model.flat_params, 0
        mine = [flat[self.slices[k]] for k in self.owned[self.world.rank]]
        if mine:  # more ranks than parameters leaves a rank none
            np.concatenate(mine, out=self._sent)
        self.world.comm.Allgatherv(self._sent, [self._gathered, self.counts])
        for name in (k for keys in self.owned for k in keys):  # unpacked into their places
            where = self.slices[name]
            flat[where] = self._gathered[at:at + where.stop - where.start]
            at += where.stop - where.start

    def optimizer_bytes(self):
        return sum(a.nbytes for a in self.inner.state_dict().values())

    def state_dict(self):
        """One-process Muon's format, every entry gathered from its owner (a collective: every
        rank must call it)."""
        own, dtype = self.inner.state_dict(), self.model.flat_params.dtype
        out = {}
        for key in sorted(self.layout):
            owner, shape = self.layout[key]
            buf = own[key].copy() if owner == self.world.rank else np.zeros(shape, dtype=dtype)
            self.world.comm.Allreduce(self.world.MPI.IN_PLACE, buf, op=self.world.MPI.SUM)
            out[key] = buf
        out["t"] = np.array(self.t, dtype=np.int64)
        return out

    def load_state_dict(self, d):
        """Take this rank's entries of a one-process Muon state (shapes checked by the inner Muon)."""
        if set(d) != set(self.layout) | {"t"}:
            raise ValueError("optimizer state does not match the model and optimizer=muon")
        self.inner.load_state_dict({k: v for k, v in d.items() if k == "t" or self.layout[k][0] == self.world.rank})
