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

MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")  # set by mpirun / mpiexec


class Local:
    """One process, no MPI: every collective is the identity."""
    rank, size = 0, 1

    def mean(self, x):
        return x

    def average(self, buf):
        pass

    def barrier(self):
        pass

    def any(self, flag):
        return bool(flag)

    def abort(self, code):
        sys.exit(code)


LOCAL = Local()


class MPIWorld:
    """The ranks of MPI.COMM_WORLD."""

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

    def abort(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


_WORLD = None


def launched_by_mpi():
    return any(v in os.environ for v in MPI_ENV)


def world():
    """The world this process trains in: MPIWorld when started by mpirun (and mpi4py is
    installed), else Local. Made once; under MPI it also installs the excepthook that aborts
    the job when any rank raises."""
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


def rows_of(rank, size, batch_size):
    """The slice of a global batch's rows that `rank` trains on."""
    per = batch_size // size
    return slice(rank * per, (rank + 1) * per)


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
    It has AdamW's state_dict / load_state_dict format (gathered), so checkpoints do not know
    whether ZeRO was on."""

    sharded = True

    def __init__(self, model, world, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        from vintagelm.optim import decays

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
        decay = np.zeros(self.padded, dtype=bool)  # (padded,) which elements weight decay applies to
        offset = 0
        for name, p in model.params.items():
            decay[offset:offset + p.size] = decays(p)
            offset += p.size
        self.decay = decay[lo:lo + self.shard]
        self._grads = np.zeros(self.padded, dtype=dtype)  # the padded gradient buffer sent to Reduce_scatter
        self._params = np.zeros(self.padded, dtype=dtype)  # the padded parameter buffer Allgather fills

    def step_sharded(self, flat_grads, lr, grad_clip):
        """Reduce-scatter the gradients, clip by the global norm, update this rank's slice and
        all-gather the parameters -> (global gradient norm, whether the step was taken)."""
        from vintagelm.optim import clip_factor

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
        b1, b2 = self.betas
        step_size = lr / (1 - b1**self.t)
        rsqrt_bc2 = 1.0 / math.sqrt(1 - b2**self.t)
        p = self._params[self.world.rank * self.shard:(self.world.rank + 1) * self.shard]  # (shard,) a view
        p[: self.hi - self.lo] = self.model.flat_params[self.lo:self.hi]
        if scale != 1.0:
            g *= g.dtype.type(scale)
        p[self.decay] *= 1 - lr * self.weight_decay  # the same operations, in the same order, as AdamW._update
        self.m *= b1
        self.m += (1 - b1) * g
        self.v *= b2
        self.v += (1 - b2) * (g * g)
        denom = np.sqrt(self.v)
        denom *= rsqrt_bc2
        denom += self.eps
        p -= step_size * (self.m / denom)
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
            full, offset = self._gather(shard), 0
            for name, p in self.model.params.items():
                out[f"{state}.{name}"] = full[offset:offset + p.size].reshape(p.shape).copy()
                offset += p.size
        out["t"] = np.array(self.t, dtype=np.int64)
        return out

    def load_state_dict(self, d):
        expected = {f"{s}.{k}" for s in ("m", "v") for k in self.model.params} | {"t"}
        if set(d) != expected:
            raise ValueError("optimizer state does not match the model")
        for state, shard in (("m", self.m), ("v", self.v)):
            full = np.zeros(self.padded, dtype=shard.dtype)
            offset = 0
            for name, p in self.model.params.items():
                if d[f"{state}.{name}"].shape != p.shape:
                    raise ValueError(f"optimizer state {state}.{name} has shape {d[f'{state}.{name}'].shape}, "
                                     f"expected {p.shape}")
                full[offset:offset + p.size] = d[f"{state}.{name}"].reshape(-1)
                offset += p.size
            shard[...] = full[self.world.rank * self.shard:(self.world.rank + 1) * self.shard]
        self.t = int(d["t"])
