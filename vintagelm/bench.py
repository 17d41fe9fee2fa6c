"""Training-speed benchmark: vintagelm against the team's PyTorch reference, in one run.

Speed: both implementations train the same model (same init, same batches, float32, same
thread count) in alternating rounds within this process (the order flips every round, and
each turn begins with an untimed step, see time_alternating);
medians are reported because this machine's speed drifts between and within processes. The
speed ratio is the median over rounds of the two implementations' ratio within a round
(a paired comparison: both halves of a round ran in the same few seconds); the ratio of the
two medians is reported beside it. Memory: each implementation trains in a
child process of its own and reports its peak RSS (a process-wide high-water mark cannot be
split between two implementations sharing a process). MFU: model FLOPs per second divided by
the float32 matmul FLOP/s NumPy reaches here, sampled by the same command in the same rounds
(GemmProbe), per round, median over rounds (paired_mfu). The per-op
breakdown times one instrumented training step of vintagelm.

The torch reference lives in the repository's tests/torch_gpt.py (torch is a test-only
dependency), so the comparison needs a source checkout with the [test] extra installed.
"""
import importlib.util
import json
import resource
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from vintagelm.model import GPT, GPTConfig
from vintagelm.optim import AdamW, clip_factor, grad_norm

BENCH_CONFIGS = {
    # name: (model config, batch size)
    "tiny": (dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128), 12),
    "baby": (dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384), 8),
}
GEMM_SHAPES = [(3072, 384, 1152), (3072, 1536, 384), (2048, 2048, 2048)]  # (M, K, N), as BENCHMARKS.md
TORCH_REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "torch_gpt.py"


def make_config(name):
    kwargs, batch_size = BENCH_CONFIGS[name]
    return GPTConfig(**kwargs, dropout=0.0), batch_size


def make_batches(config, batch_size, n, seed=0):
    rng = np.random.default_rng(seed)
    shape = (batch_size, config.block_size)
    return [(rng.integers(0, config.vocab_size, shape), rng.integers(0, config.vocab_size, shape)) for _ in range(n)]


class VintageTrainer:
    """One AdamW training step of a vintagelm GPT per call."""

    def __init__(self, config, seed=0):
        self.model = GPT(config, seed=seed)
        self.opt = AdamW(self.model.params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1)

    def step(self, x, y):
        self.model.forward(x, y)
        grads = self.model.backward()
        self.opt.step(grads, grad_scale=clip_factor(grad_norm(grads), 1.0))  # clipped to norm 1, as train.py does


class TorchTrainer:
    """The same step with the torch reference GPT (eager), starting from the same weights."""

    def __init__(self, config, params):
        import torch

        spec = importlib.util.spec_from_file_location("torch_gpt", TORCH_REFERENCE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.torch = torch
        self.model = module.TorchGPT.from_numpy(config, params, dtype=torch.float32)
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        rest = [p for p in self.model.parameters() if p.ndim < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-4, betas=(0.9, 0.99)
        )

    def step(self, x, y):
        _, loss = self.model(self.torch.from_numpy(x), self.torch.from_numpy(y))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()


def torch_available():
    return TORCH_REFERENCE.is_file() and importlib.util.find_spec("torch") is not None


def set_threads(n):
    """Same thread count for NumPy's BLAS and for torch (if present)."""
    import threadpoolctl

    threadpoolctl.threadpool_limits(n, user_api="blas")
    if importlib.util.find_spec("torch") is not None and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def blas_kernel():
    import threadpoolctl

    info = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    return f"{info[0].get('internal_api')} {info[0].get('version')} {info[0].get('architecture')}" if info else "unknown"


class GemmProbe:
    """NumPy's float32 GEMM rate on GEMM_SHAPES, sampled as one more participant in the
    alternating rounds, so the rate that MFU divides by is measured over the same minutes,
    round by round, as the training steps it is compared with. Each step multiplies every
    shape once, each timed; the first step of a turn is time_alternating's untimed one (cold
    caches), so its times are dropped here too: `steps_per_turn` is that function's
    steps_per_round."""

    def __init__(self, steps_per_turn):
        rng = np.random.default_rng(0)
        self.operands = [
            (rng.standard_normal((M, K), dtype=np.float32), rng.standard_normal((K, N), dtype=np.float32),
             np.empty((M, N), dtype=np.float32))
            for M, K, N in GEMM_SHAPES
        ]
        self.steps_per_turn = steps_per_turn
        self.rounds = []  # per turn: per shape, the seconds of each timed multiply
        self.calls = 0

    def step(self, x, y):
        first_of_turn = self.calls % (self.steps_per_turn + 1) == 0
        self.calls += 1
        seconds = []
        for a, b, out in self.operands:
            t0 = time.perf_counter()
            np.matmul(a, b, out=out)
            seconds.append(time.perf_counter() - t0)
        if first_of_turn:
            self.rounds.append([[] for _ in GEMM_SHAPES])
        else:
            for per_shape, t in zip(self.rounds[-1], seconds):
                per_shape.append(t)

    def gflops_per_round(self):
        """Per round, the median over the shapes of each shape's rate in that round."""
        return [
            float(np.median([2 * M * K * N / np.mean(t) / 1e9 for (M, K, N), t in zip(GEMM_SHAPES, turn)]))
            for turn in self.rounds
        ]


def paired_mfu(flops_per_step, step_seconds, gflops_per_round):
    """Median over rounds of that round's model FLOP/s over that round's GEMM rate: paired,
    like the speed ratio, so drift between rounds cancels."""
    return float(np.median([flops_per_step / s / (g * 1e9) for s, g in zip(step_seconds, gflops_per_round, strict=True)]))


def time_alternating(trainers, batches, rounds, steps_per_round):
    """{name: [seconds per step, one per round]}, the implementations taking turns round by
    round, in alternating order (so neither always runs right after the other).

    Each turn starts with one untimed step: the other implementation's idle threads keep
    spinning for a while after its last step (OpenBLAS's worker for ~0.1 s, OpenMP's), and
    its data has pushed ours out of the caches; a training run never pays either, so the
    timed steps are the steady state that follows."""
    samples = {name: [] for name in trainers}
    order = list(trainers)
    i = 0
    for _ in range(rounds):
        for name in order:
            trainers[name].step(*batches[i % len(batches)])  # untimed: see the docstring
            t0 = time.perf_counter()
            for k in range(steps_per_round):
                trainers[name].step(*batches[(i + k) % len(batches)])
            samples[name].append((time.perf_counter() - t0) / steps_per_round)
        order.reverse()
        i += steps_per_round
    return samples


def peak_rss_mb(impl, config_name, threads, steps=3):
    """Peak RSS (MB) of a fresh child process that trains `steps` steps with one implementation."""
    code = (
        "from vintagelm.bench import child_main, vm_hwm_kib; "
        f"child_main({impl!r}, {config_name!r}, {threads}, {steps}); print(vm_hwm_kib())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024.0


def vm_hwm_kib():
    """Peak resident set of this process's address space (VmHWM, KiB). Unlike ru_maxrss it
    starts afresh at exec, so a child does not inherit the parent's (torch-sized) peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no /proc: the best available


def child_main(impl, config_name, threads, steps):
    config, batch_size = make_config(config_name)
    batches = make_batches(config, batch_size, steps)
    if impl == "torch":
        import torch  # noqa: F401  (imported before set_threads so its pool is limited too)

        set_threads(threads)
        trainer = TorchTrainer(config, GPT(config, seed=0).params)
    else:
        set_threads(threads)
        trainer = VintageTrainer(config)
    for x, y in batches:
        trainer.step(x, y)


# --------------------------------------------------------------------------- per-op breakdown
# category -> [(owner, attribute)], owner being a module name or "kernels" (the model's
# kernel namespace, NumPy or numba); time in nested timed calls goes to the inner category
BREAKDOWN_TARGETS = {
    "matmuls (linear layers)": [("vintagelm.model", "linear_forward"), ("vintagelm.model", "linear_backward")],
    "attention softmax": [("kernels", "causal_softmax"), ("kernels", "softmax_backward")],
    "attention (matmuls, copies)": [
        ("vintagelm.nn.lanes", "attention_forward"), ("vintagelm.nn.lanes", "attention_backward"),
        ("vintagelm.model", "tiled_attention_forward"), ("vintagelm.model", "tiled_attention_backward"),
    ],
    "layer norm": [("kernels", "layernorm_forward"), ("kernels", "layernorm_backward")],
    "GELU": [("kernels", "gelu")],
    "cross-entropy": [("vintagelm.model", "cross_entropy_forward"), ("vintagelm.model", "cross_entropy_backward")],
    "embeddings": [("vintagelm.model", "embedding_backward")],
    "optimizer (AdamW)": [("vintagelm.optim", "AdamW.step")],
    "grad clipping": [("vintagelm.bench", "grad_norm")],  # (the scaling itself is in AdamW's pass)
}


@contextmanager
def instrumented(model, totals):
    """Wrap the functions of BREAKDOWN_TARGETS with timers adding into totals[category],
    undoing every patch on exit. Only this thread's calls are timed: what attention's other
    lanes run happens inside this thread's timed attention call, and counts there (a
    kernel's own line shows this lane's share of it)."""
    import importlib

    stack = []  # seconds spent in nested timed calls, per open frame
    patches = []  # (owner, attribute, original)
    timing_thread = threading.get_ident()

    def wrap(category, fn):
        def timed(*args, **kwargs):
            if threading.get_ident() != timing_thread:
                return fn(*args, **kwargs)
            stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                nested = stack.pop()
                totals[category] = totals.get(category, 0.0) + elapsed - nested
                if stack:
                    stack[-1] += elapsed
        return timed

    def patch(owner, attr, value):
        patches.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    for category, targets in BREAKDOWN_TARGETS.items():
        for owner_name, attr in targets:
            if owner_name == "kernels" and attr == "gelu":
                acts = dict(model.kernels.activations)
                acts["gelu"] = tuple(wrap(category, f) for f in acts["gelu"])
                patch(model.kernels, "activations", acts)
                continue
            owner = model.kernels if owner_name == "kernels" else importlib.import_module(owner_name)
            if "." in attr:  # a method: patch it on its class
                cls_name, attr = attr.split(".")
                owner = getattr(owner, cls_name)
            patch(owner, attr, wrap(category, getattr(owner, attr)))
    try:
        yield totals
    finally:
        for owner, attr, original in reversed(patches):
            setattr(owner, attr, original)


def breakdown(config, batches, repeats=3):
    """{category: ms per step} for vintagelm, median over `repeats` instrumented steps, plus
    "other" (residual adds, reshapes, Python) = total minus the categories."""
    trainer = VintageTrainer(config)
    trainer.step(*batches[0])
    runs = []
    for r in range(repeats):
        totals = {}
        with instrumented(trainer.model, totals):
            t0 = time.perf_counter()
            trainer.step(*batches[(r + 1) % len(batches)])
            total = time.perf_counter() - t0
        totals["other (residuals, reshapes, Python)"] = total - sum(totals.values())
        totals["total"] = total
        runs.append(totals)
    return {k: 1000 * float(np.median([run.get(k, 0.0) for run in runs])) for k in runs[0]}


def run_bench(config_names, threads=2, rounds=7, steps_per_round=None, with_torch=True, with_memory=True):
    """Everything `vintage bench` prints, as one dict keyed by config name (+ top-level keys)."""
    set_threads(threads)
    use_torch = with_torch and torch_available()
    if use_torch:
        import torch  # noqa: F401

        set_threads(threads)
    from vintagelm.heap import reuse_freed_memory
    from vintagelm.nn.kernels import get_kernels
    from vintagelm.nn.lanes import lane_count

    # (set by making the first model anyway; process-wide, so the torch runs have it too)
    result = {"blas_kernel": blas_kernel(), "threads": threads, "elementwise_kernels": get_kernels("auto", np.float32).name,
              "lanes": lane_count(), "reuse_freed_memory": reuse_freed_memory()}
    for name in config_names:
        config, batch_size = make_config(name)
        batches = make_batches(config, batch_size, 8)
        tokens = batch_size * config.block_size
        trainers = {"vintagelm": VintageTrainer(config)}
        if use_torch:
            trainers["torch"] = TorchTrainer(config, trainers["vintagelm"].model.params)
        steps = steps_per_round or (10 if tokens * config.n_embd < 2e6 else 2)
        probe = GemmProbe(steps)
        samples = time_alternating({**trainers, "gemm": probe}, batches, rounds, steps)
        del samples["gemm"]
        gemm_rates = probe.gflops_per_round()
        entry = {"matmul_gflops": float(np.median(gemm_rates))}
        for impl, times in samples.items():
            s = float(np.median(times))
            entry[impl] = {"tokens_per_s": tokens / s, "ms_per_step": 1000 * s}
            if with_memory:
                entry[impl]["peak_rss_mb"] = peak_rss_mb(impl, name, threads)
        entry["mfu"] = paired_mfu(trainers["vintagelm"].model.flops_per_token() * tokens, samples["vintagelm"], gemm_rates)
        if use_torch:
            # paired: the two runs of one round saw the same machine state, so their ratio
            # cancels the drift that the medians of each series keep (see the module docstring)
            entry["speed_ratio"] = float(np.median(np.divide(samples["torch"], samples["vintagelm"])))
            entry["speed_ratio_of_medians"] = entry["vintagelm"]["tokens_per_s"] / entry["torch"]["tokens_per_s"]
            if with_memory:
                entry["memory_ratio"] = entry["vintagelm"]["peak_rss_mb"] / entry["torch"]["peak_rss_mb"]
        entry["breakdown_ms"] = breakdown(config, batches)
        result[name] = entry
    result["matmul_gflops"] = float(np.median([result[name]["matmul_gflops"] for name in config_names]))
    return result


def format_report(result, config_names):
    lines = [
        f"BLAS: {result['blas_kernel']}, {result['threads']} threads; "
        f"elementwise kernels: {result['elementwise_kernels']}; lanes (nn/lanes.py): {result['lanes']}; "
        f"freed memory kept for reuse (heap.py, both implementations): {'yes' if result['reuse_freed_memory'] else 'no'}",
        "",
        f"{'config':<6} {'impl':<10} {'ms/step':>8} {'tokens/s':>9} {'peak RSS MB':>11}",
    ]
    for name in config_names:
        entry = result[name]
        for impl in ("vintagelm", "torch"):
            if impl in entry:
                e = entry[impl]
                rss = f"{e['peak_rss_mb']:>11.0f}" if "peak_rss_mb" in e else f"{'-':>11}"
                lines.append(f"{name:<6} {impl:<10} {e['ms_per_step']:>8.1f} {e['tokens_per_s']:>9.0f} {rss}")
        ratios = [f"MFU {100 * entry['mfu']:.0f}% of NumPy's float32 GEMM rate in the same rounds, "
                  f"{entry['matmul_gflops']:.0f} GFLOP/s"]
        if "speed_ratio" in entry:
            ratios.insert(0, f"speed vintagelm/torch {entry['speed_ratio']:.2f} "
                             f"(of medians {entry['speed_ratio_of_medians']:.2f})")
        if "memory_ratio" in entry:
            ratios.insert(1, f"memory vintagelm/torch {entry['memory_ratio']:.2f}")
        lines.append(f"{'':<6} {', '.join(ratios)}")
    for name in config_names:
        bd = result[name]["breakdown_ms"]
        lines += ["", f"vintagelm {name}: one training step, ms per category"]
        for k, v in sorted(bd.items(), key=lambda kv: -kv[1]):
            if k != "total":
                lines.append(f"  {k:<38} {v:>8.2f}  {100 * v / bd['total']:>5.1f}%")
        lines.append(f"  {'total':<38} {bd['total']:>8.2f}")
    return "\n".join(lines)


def to_json(result):
    return json.dumps(result, indent=2)
