"""Training speed, peak memory and MFU of vintagelm against torch, with a per-op breakdown.

    python benchmarks/bench_training.py                    # tiny, baby, llama-tiny, llama-baby;
                                                           # the fast backend
    python benchmarks/bench_training.py --backend both     # the reference backend as well
    python benchmarks/bench_training.py --config baby --rounds 5 --json
    python benchmarks/bench_training.py --threads 1 --cpu-time  # on a machine others share
    python benchmarks/bench_training.py --both-envs        # then again with OPENBLAS_CORETYPE
                                                           # and OPENBLAS_L2_SIZE unset

Participants, each running one AdamW training step per call on the same model (harness.py's
BENCH_MODELS), initial weights (GPT seed 0), batches, hyperparameters, float32 and threads:
    vintagelm-fast, vintagelm-reference   vintagelm.train.training_step, the step `vintage
                            train` runs, on the backend(s) --backend names; the first is the
                            baseline that every ratio compares with
    torch_gpt               the team's torch reference (tests/torch_gpt.py), eager, torch's
                            default AdamW
    torch-nanogpt           the nanoGPT-style model a torch user would write
                            (benchmarks/torch_nanogpt.py: fused attention), AdamW fused (or
                            foreach where this torch build has no fused CPU kernel), eager
    torch-nanogpt-compiled  the same under torch.compile; when compiling fails here it is
                            skipped, with one line saying why
and on the Llama-shaped models (llama-tiny, llama-baby) in place of the three torch rows above:
    torch-llama             the Llama-shaped model a torch user would write
                            (benchmarks/torch_llama.py: RMSNorm, RoPE, SwiGLU, grouped-query
                            attention through SDPA, untied head), AdamW fused (or foreach), eager
    torch-llama-compiled    the same under torch.compile, skipped like torch-nanogpt-compiled
The Llama-shaped models have tiny's and baby's sizes (layers, heads, width, block, batch) with
n_kv_head = n_head / 2 and a SwiGLU hidden width of 8C/3 rounded up to a multiple of 8 (Llama's
rule), which gives the three SwiGLU matrices the parameters of the GPT's two 4C ones (baby:
exactly; tiny: 0.8% more).
The torch rows clip the usual torch way (clip_grad_norm_, then step); vintagelm folds the clip
factor into AdamW's pass, as `vintage train` does.

Speed: the participants take turns in alternating rounds within this process (the order flips
every round, and each turn begins with an untimed step: harness.time_alternating); medians are
reported because this machine's speed drifts between and within processes. A row's speed
ratio is the median over rounds of its time over the baseline's within the round (paired: both
ran in the same few seconds); the ratio of the two medians is shown beside it. On a machine
that other work shares, `--threads 1 --cpu-time` times every turn (and the GEMM probe) by the
process's CPU seconds instead: what a step costs, not how long it waited for the core. Memory: each
participant trains in a child process of its own and reports its peak RSS (a process-wide
high-water mark cannot be split between participants sharing a process). MFU: model FLOPs per
second over the float32 matmul FLOP/s NumPy reaches here, sampled in the same rounds
(GemmProbe), per round, median over rounds (harness.paired_mfu). The per-op breakdown times one
instrumented step of each vintagelm backend (harness.BREAKDOWN_TARGETS).

OpenBLAS reads its variables when it loads, so --both-envs runs the second environment in a
child process (with --json, one JSON object per environment); each table says which BLAS
kernel it ran with. On a CPU without AVX-512 both runs use the same kernel.

The torch rows need torch and, for torch_gpt, the checkout's tests/ (`pip install -e
'.[test]'` in a source checkout); without them they are skipped and the output says why.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

from harness import (BENCH_MODELS, CPU_CLOCK, BenchModel, GemmProbe, blas_kernel, breakdown, child_peak_rss_mb,
                    load_nanogpt_style, load_torch_reference, paired_mfu, set_threads, time_alternating, torch_adamw,
                    torch_missing, torch_reference_missing, torch_training_step)
from vintagelm.backend import BACKENDS, fast_available
from vintagelm.model import GPT, GPTConfig
from vintagelm.nn.rmsnorm import RMS_EPS
from vintagelm.nn.rope import ROPE_THETA
from vintagelm.optim import AdamW
from vintagelm.train import training_step

# the optimizer of `vintage train` (betas, decay, clip); a small lr, since nothing is learned here
LR, BETAS, WEIGHT_DECAY, GRAD_CLIP = 1e-4, (0.9, 0.99), 0.1, 1.0
# (M, K, N) of the GEMM probe: baby-sized linear layers (3072 rows, 384 -> 1152, 1536 -> 384) and a square one
GEMM_SHAPES = [(3072, 384, 1152), (3072, 1536, 384), (2048, 2048, 2048)]
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


class Skipped(Exception):
    """A participant that cannot run here; the message says why."""


# --------------------------------------------------------------------------- Llama-shaped models
# what makes a GPTConfig Llama-shaped
LLAMA_SWITCHES = dict(norm_type="rms", pos="rope", activation="swiglu", qk_norm=False, bias=False, tie_weights=False,
                      dropout=0.0)


def llama_config(rope_theta=ROPE_THETA, norm_eps=RMS_EPS, **shape):
    """A Llama-shaped GPTConfig of `shape` (sizes, n_kv_head, mlp_hidden)."""
    return GPTConfig(rope_theta=rope_theta, norm_eps=norm_eps, **LLAMA_SWITCHES, **shape)


def swiglu_hidden(n_embd):
    """Llama's SwiGLU width: two thirds of 4C, rounded up to a multiple of 8."""
    return 8 * math.ceil(int(8 * n_embd / 3) / 8)


def llama_shaped(bench):
    """`bench`'s sizes (layers, heads, width, block, batch) in the Llama shape."""
    c = bench.config
    return BenchModel(llama_config(vocab_size=c.vocab_size, block_size=c.block_size, n_layer=c.n_layer,
                                   n_head=c.n_head, n_kv_head=c.n_head // 2, n_embd=c.n_embd,
                                   mlp_hidden=swiglu_hidden(c.n_embd)), bench.batch_size)


LLAMA_MODELS = {f"llama-{name}": llama_shaped(BENCH_MODELS[name]) for name in ("tiny", "baby")}
MODELS = {**BENCH_MODELS, **LLAMA_MODELS}


# --------------------------------------------------------------------------- participants
class VintageTrainer:
    """vintagelm's training step on one batch, as `vintage train` takes it."""

    def __init__(self, config, backend):
        self.model = GPT(config, seed=0, backend=backend)
        self.optimizer = AdamW(self.model.params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, backend=backend)
        self.what = f"vintagelm.train.training_step, {backend} backend"

    def step(self, x, y):
        training_step(self.model, self.optimizer, [(x, y)], LR, GRAD_CLIP)


class TorchTrainer:
    """The same step in torch (harness.torch_training_step) with a model holding our weights."""

    def __init__(self, model, what, fast_adamw):
        import torch

        self.model = model
        self.optimizer, adamw = torch_adamw(model, LR, BETAS, WEIGHT_DECAY, fast=fast_adamw)
        self.what = f"{what} (torch {torch.__version__}), AdamW {adamw}"

    def step(self, x, y):
        torch_training_step(self.model, self.optimizer, x, y, LR, GRAD_CLIP)


def initial_params(config):
    """The weights every participant starts from: vintagelm's GPT with seed 0."""
    return GPT(config, seed=0, backend="reference").params


def needs(reason):
    if reason:
        raise Skipped(reason)


def torch_gpt(config):
    needs(torch_reference_missing())
    import torch

    model = load_torch_reference().TorchGPT.from_numpy(config, initial_params(config), dtype=torch.float32)
    return TorchTrainer(model, "tests/torch_gpt.py, eager", fast_adamw=False)


def nanogpt_model(config):
    return load_nanogpt_style().from_numpy(config, initial_params(config))


def llama_model(config):
    """torch_llama.py's model, holding vintagelm's GPT's initial weights."""
    from torch_llama import from_vintagelm

    return from_vintagelm(GPT(config, seed=0, backend="reference"))


# the torch models a user would write: participant -> (the model on a config, its file)
USER_MODELS = {"torch-nanogpt": (nanogpt_model, "torch_nanogpt.py"), "torch-llama": (llama_model, "torch_llama.py")}


def compiled(model, source, batch):
    """`model` under torch.compile, compiled by one step on `batch` (x, y) here, so that a
    failure to compile skips it instead of ending the benchmark."""
    import torch

    trainer = TorchTrainer(torch.compile(model), f"{source}, torch.compile", fast_adamw=True)
    try:
        trainer.step(*batch)
    except Exception as e:  # dynamo and inductor fail in many ways (no compiler, unsupported op)
        raise Skipped(f"torch.compile failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}") from e
    return trainer


def build(name, config, batch):
    """The trainer of participant `name` on `config`; Skipped when it cannot run here."""
    if name.startswith("vintagelm-"):
        return VintageTrainer(config, name.removeprefix("vintagelm-"))
    if name == "torch_gpt":
        return torch_gpt(config)
    needs(torch_missing())
    model_of, source = USER_MODELS[name.removesuffix("-compiled")]
    if name.endswith("-compiled"):
        return compiled(model_of(config), source, batch)
    return TorchTrainer(model_of(config), f"{source}, eager", fast_adamw=True)


def participant_names(config_name, backends, with_torch, with_compile):
    names = [f"vintagelm-{b}" for b in backends]
    if with_torch:
        torch_rows = ["torch-llama"] if config_name in LLAMA_MODELS else ["torch_gpt", "torch-nanogpt"]
        names += [*torch_rows, *([f"{torch_rows[-1]}-compiled"] if with_compile else [])]
    return names


def make_batches(config, batch_size, n, seed=0):
    rng = np.random.default_rng(seed)
    shape = (batch_size, config.block_size)
    return [(rng.integers(0, config.vocab_size, shape), rng.integers(0, config.vocab_size, shape)) for _ in range(n)]


def child_main(name, config_name, threads, steps=3):
    """What a memory child runs: `steps` training steps of one participant."""
    bench = MODELS[config_name]
    batches = make_batches(bench.config, bench.batch_size, steps)
    trainer = build(name, bench.config, batches[0])
    set_threads(threads)
    for x, y in batches:
        trainer.step(x, y)


# --------------------------------------------------------------------------- measuring
def measure(config_name, names, threads, rounds, steps_per_round, with_memory, clock=time.perf_counter):
    """One config's entry of run_bench's result."""
    bench = MODELS[config_name]
    config, tokens = bench.config, bench.batch_size * bench.config.block_size
    batches = make_batches(config, bench.batch_size, 8)
    trainers, skipped = {}, {}
    for name in names:
        try:
            trainers[name] = build(name, config, batches[0])
        except Skipped as e:
            skipped[name] = str(e)
    set_threads(threads)  # now that the torch models are built, torch is counted too
    steps = steps_per_round or (10 if tokens * config.n_embd < 2e6 else 2)
    probe = GemmProbe(GEMM_SHAPES, steps, clock)
    samples = time_alternating({**trainers, "gemm": probe}, batches, rounds, steps, clock)
    gemm_rates = probe.gflops_per_round()
    baseline = names[0]
    # every row does the same work: counted by the baseline's model, or the first row's when it is skipped
    flops_per_step = next(iter(trainers.values())).model.flops_per_token() * tokens if trainers else 0
    rows = {}
    for name, trainer in trainers.items():
        s = float(np.median(samples[name]))
        rows[name] = {"what": trainer.what, "ms_per_step": 1000 * s, "tokens_per_s": tokens / s,
                      "mfu": paired_mfu(flops_per_step, samples[name], gemm_rates)}
        if with_memory:
            rows[name]["peak_rss_mb"] = child_peak_rss_mb(
                f"from bench_training import child_main; child_main({name!r}, {config_name!r}, {threads})")
    return {
        "model": {**config.to_dict(), "batch_size": bench.batch_size},
        "baseline": baseline,
        "matmul_gflops": float(np.median(gemm_rates)),
        "participants": rows,
        "ratios": {name: ratios(rows, samples, baseline, name) for name in rows if name != baseline}
        if baseline in rows else {},
        "skipped": skipped,
        "breakdown_ms": {name: breakdown(t, batches, clock=clock) for name, t in trainers.items()
                         if name.startswith("vintagelm-")},
    }


def ratios(rows, samples, baseline, name):
    """How the baseline compares with participant `name`: speed (> 1: the baseline is faster;
    paired, see the module docstring), the same from the medians, and memory (< 1: the
    baseline needs less)."""
    out = {"speed": float(np.median(np.divide(samples[name], samples[baseline]))),
           "speed_of_medians": rows[name]["ms_per_step"] / rows[baseline]["ms_per_step"]}
    if "peak_rss_mb" in rows[name]:
        out["memory"] = rows[baseline]["peak_rss_mb"] / rows[name]["peak_rss_mb"]
    return out


def run_bench(config_names, backends=("fast",), threads=2, rounds=7, steps_per_round=None, with_torch=True,
              with_compile=True, with_memory=True, cpu_time=False):
    """Everything this script prints, as one dict keyed by config name (+ top-level keys)."""
    result = {"environment": describe_env(os.environ), "blas_kernel": blas_kernel(), "threads": threads,
              "backends": list(backends), "clock": "process CPU time" if cpu_time else "wall clock"}
    clock = CPU_CLOCK if cpu_time else time.perf_counter
    result.update({name: measure(name, participant_names(name, backends, with_torch, with_compile), threads, rounds,
                                 steps_per_round, with_memory, clock) for name in config_names})
    if "fast" in backends:  # (read after the fast models are made: making one sets them)
        from vintagelm.fast.heap import reuse_freed_memory
        from vintagelm.fast.lanes import lane_count

        result["fast_backend"] = {"lanes": lane_count(), "reuse_freed_memory": reuse_freed_memory()}
    result["matmul_gflops"] = float(np.median([result[name]["matmul_gflops"] for name in config_names]))
    return result


# --------------------------------------------------------------------------- output
def describe_env(env):
    return ", ".join(f"{k}={env[k]}" if k in env else f"{k} unset" for k in OPENBLAS_VARS)


def format_report(result, config_names):
    lines = [f"# environment: {result['environment']}",
             f"BLAS: {result['blas_kernel']}, {result['threads']} threads; timed by the {result['clock']}"]
    if "fast_backend" in result:
        fast = result["fast_backend"]
        lines[-1] += (f"; fast backend: lanes (fast/lanes.py) {fast['lanes']}, freed memory kept for reuse "
                      f"(fast/heap.py; process-wide, so the timed torch rows have it too): "
                      f"{'yes' if fast['reuse_freed_memory'] else 'no'}")
    described = {}
    for name in config_names:
        described.update({p: row["what"] for p, row in result[name]["participants"].items()})
        lines += [f"{name}: skipped {p}: {why}" for p, why in result[name]["skipped"].items()]
    lines += ["participants:", *(f"  {p:<24} {what}" for p, what in described.items())]
    lines += ["", f"{'config':<10} {'participant':<24} {'ms/step':>8} {'tokens/s':>9} {'peak RSS MB':>11} {'MFU':>5}"
                  f" {'speed x':>8} {'(medians)':>9} {'memory x':>8}"]
    for name in config_names:
        entry = result[name]
        for p, row in entry["participants"].items():
            r = entry["ratios"].get(p, {})
            cells = [f"{row['ms_per_step']:>8.1f}", f"{row['tokens_per_s']:>9.0f}", cell(row, "peak_rss_mb", 11, ".0f"),
                     f"{100 * row['mfu']:>4.0f}%", cell(r, "speed", 8, ".2f"), cell(r, "speed_of_medians", 9, ".2f"),
                     cell(r, "memory", 8, ".2f")]
            lines.append(f"{name:<10} {p:<24} {' '.join(cells)}")
        lines.append(f"{'':<10} MFU: over NumPy's float32 GEMM rate in the same rounds, "
                     f"{entry['matmul_gflops']:.0f} GFLOP/s")
    if any(result[name]["ratios"] for name in config_names):
        lines.append(f"ratios: {result[config_names[0]]['baseline']}'s speed over the row's (paired, median over "
                     "rounds; of the medians beside it) and its peak RSS over the row's")
    for name in config_names:
        for p, bd in result[name]["breakdown_ms"].items():
            lines += ["", f"{p} {name}: one training step, ms per category"]
            for k, v in sorted(bd.items(), key=lambda kv: -kv[1]):
                if k != "total":
                    lines.append(f"  {k:<42} {v:>8.2f}  {100 * v / bd['total']:>5.1f}%")
            lines.append(f"  {'total':<42} {bd['total']:>8.2f}")
    return "\n".join(lines)


def cell(values, key, width, fmt):
    return f"{values[key]:>{width}{fmt}}" if key in values else f"{'-':>{width}}"


# --------------------------------------------------------------------------- command line
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", choices=list(MODELS), help="model (repeatable; default: all)")
    p.add_argument("--backend", choices=[*BACKENDS, "both"], default="fast",
                   help="vintagelm backend to time (default fast); both: fast, and reference as one more row")
    p.add_argument("--threads", type=int, default=2, help="BLAS/torch threads for every participant (default 2)")
    p.add_argument("--rounds", type=int, default=7, help="alternating timing rounds (default 7)")
    p.add_argument("--steps-per-round", type=int, help="timed steps per turn (default: 10 for tiny models, 2 else)")
    p.add_argument("--no-torch", action="store_true", help="time vintagelm alone")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd row")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child processes")
    p.add_argument("--cpu-time", action="store_true",
                   help="time by the process's CPU seconds instead of the wall clock: what a step costs on a "
                        "machine that other work shares (needs --threads 1: idle BLAS threads spin)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--both-envs", action="store_true",
                   help="run again in a child process with " + " and ".join(OPENBLAS_VARS) + " unset")
    args = p.parse_args(argv)
    if args.threads < 1 or args.rounds < 1 or (args.steps_per_round is not None and args.steps_per_round < 1):
        p.error("--threads, --rounds and --steps-per-round must be at least 1")
    if args.cpu_time and args.threads != 1:
        p.error("--cpu-time needs --threads 1 (with more, idle BLAS and OpenMP threads spin, and spinning is CPU time)")
    args.backends = ["fast", "reference"] if args.backend == "both" else [args.backend]
    if "fast" in args.backends and not fast_available():
        p.error("the fast backend needs numba (pip install -e '.[fast]'); or use --backend reference")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    names = args.config or list(MODELS)
    result = run_bench(names, args.backends, args.threads, args.rounds, args.steps_per_round,
                       with_torch=not args.no_torch, with_compile=not args.no_compile, with_memory=not args.no_memory,
                       cpu_time=args.cpu_time)
    print(json.dumps(result, indent=2) if args.json else format_report(result, names), flush=True)
    if not args.both_envs:
        return 0
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_VARS}
    print()
    return subprocess.run([sys.executable, __file__, *(a for a in argv if a != "--both-envs")], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
