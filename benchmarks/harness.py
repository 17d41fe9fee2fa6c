"""What the benchmark scripts share: the models they time, how they load torch and the team's
torch reference, the thread setup, the timers (alternating rounds, the GEMM probe, paired
MFU), peak memory in child processes, the per-op breakdown of a vintagelm training step, and
the torch side of a training step.

Not part of the package: vintagelm never imports torch or anything under tests/. Torch is
imported only by the functions that need it (require_torch), so a process that times
vintagelm alone never carries it (the peak-RSS children depend on that).
"""
import functools
import importlib.util
import resource
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vintagelm.train_config import resolve_config
from vintagelm.model import GPTConfig

BENCHMARKS = Path(__file__).resolve().parent
TORCH_REFERENCE = BENCHMARKS.parent / "tests" / "torch_gpt.py"  # the team's torch GPT: a test file
TORCH_INSTALL_HINT = "pip install -e '.[test]' in a source checkout"


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class BenchModel:
    config: GPTConfig
    batch_size: int  # sequences per training step, each block_size tokens


CHAR_VOCAB = 65  # tiny shakespeare's characters: the vocabulary of every benchmark model
BENCH_MODELS = {
    # `vintage train`'s tiny sizes (4 layers, 4 heads, 128 wide, block 64) in GPT-2's block (the
    # gpt2 preset), as nanoGPT builds it; batch 12 as in nanoGPT's CPU recipe (the preset trains with 16)
    "tiny": BenchModel(replace(resolve_config("gpt2").model, vocab_size=CHAR_VOCAB), batch_size=12),
    # nanoGPT's shakespeare_char shape (vintagelm's `base` preset) without dropout; batch 8
    # keeps a step around a second on 2 cores
    "baby": BenchModel(GPTConfig(vocab_size=CHAR_VOCAB, block_size=256, n_layer=6, n_head=6, n_embd=384,
                                 dropout=0.0), batch_size=8),
}


# --------------------------------------------------------------------------- torch
def torch_missing():
    """Why torch cannot be used here (a sentence), or None when it can."""
    if importlib.util.find_spec("torch") is None:
        return f"torch is not installed ({TORCH_INSTALL_HINT})"
    return None


def torch_reference_missing():
    """Why the team's torch reference cannot be loaded here, or None when it can."""
    if not TORCH_REFERENCE.is_file():
        return f"{TORCH_REFERENCE} is not here (the torch reference lives in a source checkout's tests/)"
    return torch_missing()


def require_torch():
    """The torch module; a missing torch ends the script with one line saying how to get it."""
    reason = torch_missing()
    if reason:
        raise SystemExit(reason)
    import torch

    return torch


@functools.cache
def load_torch_reference():
    """tests/torch_gpt.py as a module (TorchGPT), loaded by path: tests/ is not a package and
    vintagelm must not import it. Cached, so every caller gets the same module object."""
    reason = torch_reference_missing()
    if reason:
        raise SystemExit(reason)
    spec = importlib.util.spec_from_file_location("torch_gpt", TORCH_REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_nanogpt_style():
    """The NanoGPTStyle class of benchmarks/torch_nanogpt.py (it imports torch: on demand)."""
    require_torch()
    from torch_nanogpt import NanoGPTStyle

    return NanoGPTStyle


def torch_adamw(model, lr, betas, weight_decay, fast=False):
    """torch.optim.AdamW over `model`'s parameters with vintagelm's decay rule (only ndim >= 2
    decays, optim.decays). fast=False: torch's default implementation; fast=True: the one a
    user would pick, fused when this torch build has the fused CPU kernel, else foreach.
    -> (optimizer, "default" | "fused" | "foreach")."""
    import torch

    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if not fast:
        return torch.optim.AdamW(groups, lr=lr, betas=betas), "default"
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True), "fused"
    except RuntimeError:  # a build without the fused CPU kernel says so when it is asked for one
        return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True), "foreach"


def torch_training_step(model, optimizer, x, y, lr, grad_clip):
    """vintagelm.train.training_step's torch counterpart on one batch, written the usual torch
    way: forward, backward, clip the global norm, step. -> the loss (a tensor)."""
    import torch

    for group in optimizer.param_groups:
        group["lr"] = lr
    _, loss = model(torch.from_numpy(x), torch.from_numpy(y))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss


# --------------------------------------------------------------------------- threads
def set_threads(n):
    """n threads for NumPy's BLAS (and so the fast backend's lanes) and for torch, when this
    process has imported it: call it after building the torch models, so torch is counted."""
    from vintagelm.common import set_blas_threads

    set_blas_threads(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def blas_kernel():
    """NumPy's BLAS as one string: library, version, kernel architecture."""
    import threadpoolctl

    info = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    return f"{info[0].get('internal_api')} {info[0].get('version')} {info[0].get('architecture')}" if info else "unknown"


# --------------------------------------------------------------------------- timing
# On one thread, the CPU seconds a step takes are what it costs whatever else the machine
# runs meanwhile (a wall clock counts the time other processes held the core too). With more
# threads they are not: OpenBLAS's and OpenMP's idle workers spin, and spinning is CPU time.
CPU_CLOCK = time.process_time

def time_alternating(trainers, batches, rounds, steps_per_round, clock=time.perf_counter):
    """{name: [seconds per step, one per round]}, the participants taking turns round by
    round, in alternating order (so none always runs right after the same other one), timed
    by `clock` (CPU_CLOCK: the process's CPU seconds).

    Each turn starts with one untimed step: the other participant's idle threads keep
    spinning for a while after its last step (OpenBLAS's worker for ~0.1 s, OpenMP's), and
    its data has pushed ours out of the caches; a training run never pays either, so the
    timed steps are the steady state that follows."""
    samples = {name: [] for name in trainers}
    order = list(trainers)
    i = 0
    for _ in range(rounds):
        for name in order:
            trainers[name].step(*batches[i % len(batches)])  # untimed: see the docstring
            t0 = clock()
            for k in range(steps_per_round):
                trainers[name].step(*batches[(i + k) % len(batches)])
            samples[name].append((clock() - t0) / steps_per_round)
        order.reverse()
        i += steps_per_round
    return samples


class GemmProbe:
    """NumPy's float32 GEMM rate on `shapes` ((M, K, N) each), sampled as one more participant
    in the alternating rounds, so the rate that MFU divides by is measured over the same
    minutes, round by round, as the training steps it is compared with. Each step multiplies
    every shape once, each timed; the first step of a turn is time_alternating's untimed one
    (cold caches), so its times are dropped here too: `steps_per_turn` is that function's
    steps_per_round."""

    def __init__(self, shapes, steps_per_turn, clock=time.perf_counter):
        rng = np.random.default_rng(0)
        self.shapes = shapes
        self.operands = [
            (rng.standard_normal((M, K), dtype=np.float32), rng.standard_normal((K, N), dtype=np.float32),
             np.empty((M, N), dtype=np.float32))
            for M, K, N in shapes
        ]
        self.steps_per_turn = steps_per_turn
        self.clock = clock
        self.rounds = []  # per turn: per shape, the seconds of each timed multiply
        self.calls = 0

    def step(self, x, y):
        first_of_turn = self.calls % (self.steps_per_turn + 1) == 0
        self.calls += 1
        seconds = []
        for a, b, out in self.operands:
            t0 = self.clock()
            np.matmul(a, b, out=out)
            seconds.append(self.clock() - t0)
        if first_of_turn:
            self.rounds.append([[] for _ in self.shapes])
        else:
            for per_shape, t in zip(self.rounds[-1], seconds):
                per_shape.append(t)

    def gflops_per_round(self):
        """Per round, the median over the shapes of each shape's rate in that round."""
        return [
            float(np.median([2 * M * K * N / np.mean(t) / 1e9 for (M, K, N), t in zip(self.shapes, turn)]))
            for turn in self.rounds
        ]


def paired_mfu(flops_per_step, step_seconds, gflops_per_round):
    """Median over rounds of that round's model FLOP/s over that round's GEMM rate: paired,
    like the speed ratios, so drift between rounds cancels."""
    return float(np.median([flops_per_step / s / (g * 1e9) for s, g in zip(step_seconds, gflops_per_round, strict=True)]))


# --------------------------------------------------------------------------- memory
def child_peak_rss_mb(statement):
    """Peak RSS (MB) of a fresh Python process that runs `statement` (with benchmarks/
    importable). A process-wide high-water mark cannot be split between participants sharing
    a process, so each gets one of its own."""
    code = f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); {statement}; " \
           "from harness import vm_hwm_kib; print(vm_hwm_kib())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory child failed ({statement}):\n{out.stderr.strip()}")
    return int(out.stdout.strip().splitlines()[-1]) / 1024.0


def vm_hwm_kib():
    """Peak resident set of this process's address space (VmHWM, KiB). Unlike ru_maxrss it
    starts afresh at exec, so a child does not inherit the parent's (torch-sized) peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no /proc: the best available


# --------------------------------------------------------------------------- per-op breakdown
# category -> (owner, attributes). Owners, as `breakdown_owners` finds them: "ops" the model's
# op table (nn/ops.py, fast/ops.py), "model" the model (the norm and MLP variants its config
# chose, bound once in GPT._choose_variants), "heads" its attention heads (attention_heads.py:
# the attention op; its RoPE, grouped-KV and QK-norm steps are op-table entries), "optimizer",
# "train" the module of training_step (the grad_norm it calls). Time in nested timed calls
# goes to the inner category: the fast backend's MLPs call the table's linear layers, so there
# their matmuls count as matmuls, but for the fast SwiGLU's backward (its gate and up
# projections' products, written into the gradient slots directly); the reference MLPs call
# nn/linear.py directly, so there they stay in the MLP's line. A category the model never
# calls (RoPE in GPT-2) is left out.
BREAKDOWN_TARGETS = {
    "matmuls (linear layers)": ("ops", ("linear_forward", "linear_backward")),
    "MLP (ref. & SwiGLU backward: + matmuls)": ("model", ("mlp_forward", "mlp_backward")),
    "attention": ("heads", ("attention_forward", "attention_backward")),
    "RoPE, grouped KV, QK-norm": ("ops", ("rope_forward", "rope_backward", "repeat_kv_forward",
                                          "repeat_kv_backward", "qk_norm_forward", "qk_norm_backward")),
    "norms (layer or RMS)": ("model", ("norm_forward", "norm_backward")),
    "cross-entropy": ("ops", ("cross_entropy_forward", "cross_entropy_backward")),
    "embeddings": ("ops", ("embedding_forward", "embedding_backward")),
    "residual adds": ("ops", ("residual_add",)),
    "optimizer (AdamW)": ("optimizer", ("step",)),
    "grad norm": ("train", ("grad_norm",)),  # (clipping itself is folded into AdamW's pass)
}
OTHER = "other (reshapes, gradient slots, Python)"


def breakdown_owners(model, optimizer):
    from vintagelm import train

    return {"ops": model.ops, "model": model, "heads": model.heads, "optimizer": optimizer, "train": train}


@contextmanager
def patched(owner, attr, value):
    """owner.attr = value inside the block; afterwards the attribute is what it was, and an
    attribute that came from the class (a method of the op table) is gone from the instance."""
    own = vars(owner)
    had, original = attr in own, own.get(attr)
    setattr(owner, attr, value)
    try:
        yield
    finally:
        if had:
            setattr(owner, attr, original)
        else:
            delattr(owner, attr)


@contextmanager
def instrumented(owners, totals, clock=time.perf_counter):
    """Wrap the attributes of BREAKDOWN_TARGETS with timers adding into totals[category],
    undoing every patch on exit. Only this thread's calls are timed: what the fast backend's
    other lanes run happens inside this thread's timed call, and counts there."""
    stack = []  # seconds spent in nested timed calls, per open frame
    timing_thread = threading.get_ident()

    def wrap(category, fn):
        def timed(*args, **kwargs):
            if threading.get_ident() != timing_thread:
                return fn(*args, **kwargs)
            stack.append(0.0)
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = clock() - t0
                nested = stack.pop()
                totals[category] = totals.get(category, 0.0) + elapsed - nested
                if stack:
                    stack[-1] += elapsed
        return timed

    with ExitStack() as patches:
        for category, (owner_name, attrs) in BREAKDOWN_TARGETS.items():
            owner = owners[owner_name]
            for attr in attrs:
                patches.enter_context(patched(owner, attr, wrap(category, getattr(owner, attr))))
        yield totals


def breakdown(trainer, batches, repeats=3, clock=time.perf_counter):
    """{category: ms per step} of a vintagelm trainer (.model, .optimizer, .step(x, y)),
    median over `repeats` instrumented steps after one plain one, plus OTHER = the total minus
    the categories, and "total", timed by `clock`. Categories the model never called are left out."""
    trainer.step(*batches[0])
    owners = breakdown_owners(trainer.model, trainer.optimizer)
    runs = []
    for r in range(repeats):
        totals = {}
        with instrumented(owners, totals, clock):
            t0 = clock()
            trainer.step(*batches[(r + 1) % len(batches)])
            total = clock() - t0
        totals[OTHER] = total - sum(totals.values())
        totals["total"] = total
        runs.append(totals)
    keys = [*(k for k in BREAKDOWN_TARGETS if any(k in run for run in runs)), OTHER, "total"]
    return {k: 1000 * float(np.median([run.get(k, 0.0) for run in runs])) for k in keys}
