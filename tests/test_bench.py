"""The benchmarks' shared machinery (benchmarks/harness.py) and bench_training.py's contract:
the alternating timer, the GEMM probe, paired MFU, the per-op breakdown, the JSON output, the
memory children, the nanoGPT-style torch model and the Llama-style one (against
transformers' LlamaForCausalLM). Timings themselves are not asserted
(performance claims live in the benchmarks' output); what is asserted is what must hold
whatever the machine's speed. Everything runs the tiny model for a round or two."""
import io
import json
import os
import platform
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # not a package: scripts
import bench_training  # noqa: E402
import harness  # noqa: E402


class SleepyTrainer:
    def __init__(self, name, seconds, log):
        self.name, self.seconds, self.log = name, seconds, log

    def step(self, x, y):
        self.log.append(self.name)
        time.sleep(self.seconds)


def tiny_batches(n):
    bench = harness.BENCH_MODELS["tiny"]
    return bench.config, bench_training.make_batches(bench.config, bench.batch_size, n)


def test_time_alternating_takes_turns_in_flipping_order():
    log = []
    trainers = {"a": SleepyTrainer("a", 0.002, log), "b": SleepyTrainer("b", 0.030, log)}
    samples = harness.time_alternating(trainers, [(None, None)], rounds=4, steps_per_round=2)
    rounds = [log[6 * r : 6 * (r + 1)] for r in range(4)]  # per turn: one untimed step, two timed
    assert rounds == [["a"] * 3 + ["b"] * 3, ["b"] * 3 + ["a"] * 3] * 2 and len(log) == 24
    assert len(samples["a"]) == len(samples["b"]) == 4
    assert 0.002 <= np.median(samples["a"]) < np.median(samples["b"])  # sleep is a lower bound
    assert 0.030 <= np.median(samples["b"])


def test_the_cpu_clock_does_not_count_waiting():
    # a sleeping step waits 30 ms and costs almost no CPU: the wall clock counts the wait,
    # the CPU clock (--cpu-time) does not (as it does not count the time others held the core)
    trainers = {"sleeper": SleepyTrainer("sleeper", 0.030, [])}
    assert np.median(harness.time_alternating(trainers, [(None, None)], 2, 2)["sleeper"]) >= 0.030
    assert np.median(harness.time_alternating(trainers, [(None, None)], 2, 2, clock=harness.CPU_CLOCK)["sleeper"]) < 0.015


def run_json(argv, gemm_shapes):
    """bench_training.main(["--json", *argv]) with quick GEMM probe shapes -> its JSON result."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(out):
        mp.setattr(bench_training, "GEMM_SHAPES", gemm_shapes)
        assert bench_training.main(["--json", *argv]) == 0
    return json.loads(out.getvalue())


def test_bench_training_json_contract():
    assert harness.torch_reference_missing() is None  # torch is in the [test] extra: the references must run here
    result = run_json(["--config", "tiny", "--rounds", "1", "--steps-per-round", "2", "--threads", "1",
                       "--backend", "both", "--no-compile", "--no-memory"], gemm_shapes=[(512, 384, 512), (256, 256, 256)])
    assert isinstance(result["blas_kernel"], str) and result["blas_kernel"]
    assert result["clock"] == "wall clock"
    assert result["backends"] == ["fast", "reference"]
    assert result["fast_backend"]["lanes"] == 1  # one BLAS thread, one lane
    on = platform.libc_ver()[0] == "glibc" and os.environ.get("VINTAGELM_REUSE_MEMORY", "1") != "0"
    assert result["fast_backend"]["reuse_freed_memory"] is on
    tiny = result["tiny"]
    assert tiny["model"]["n_layer"] == 4 and tiny["model"]["batch_size"] == 12 and tiny["skipped"] == {}
    rows = tiny["participants"]
    assert list(rows) == ["vintagelm-fast", "vintagelm-reference", "torch_gpt", "torch-nanogpt"]
    assert tiny["baseline"] == "vintagelm-fast" and set(tiny["ratios"]) == set(rows) - {"vintagelm-fast"}
    tokens = 12 * 64  # batch 12, block 64
    for name, row in rows.items():
        assert row["tokens_per_s"] == pytest.approx(tokens / (row["ms_per_step"] / 1000))
        assert 0 < row["mfu"] < 2  # model FLOP/s over NumPy's GEMM FLOP/s: a fraction, give or take noise
        assert "peak_rss_mb" not in row
    for name, r in tiny["ratios"].items():
        # one round: the paired ratio and the ratio of medians are the same number
        assert r["speed"] == pytest.approx(rows[name]["ms_per_step"] / rows["vintagelm-fast"]["ms_per_step"])
        assert r["speed_of_medians"] == pytest.approx(r["speed"]) and "memory" not in r
    assert set(tiny["breakdown_ms"]) == {"vintagelm-fast", "vintagelm-reference"}
    assert tiny["matmul_gflops"] == result["matmul_gflops"] > 0


def test_memory_child_trains_without_torch_and_reports_its_peak():
    statement = ("from bench_training import child_main; child_main('vintagelm-fast', 'tiny', 1, steps=1); "
                 "assert 'torch' not in sys.modules, 'vintagelm imported torch'")
    assert 10 < harness.child_peak_rss_mb(statement) < 4000
    with pytest.raises(RuntimeError, match="memory child failed"):
        harness.child_peak_rss_mb("raise SystemExit(3)")


def test_ratios_compare_every_row_with_the_baseline():
    rows = {"a": {"ms_per_step": 10.0, "peak_rss_mb": 100.0}, "b": {"ms_per_step": 30.0, "peak_rss_mb": 400.0}}
    samples = {"a": [1.0, 2.0, 1.0], "b": [2.0, 8.0, 2.0]}  # b took 2x, 4x, 2x as long: paired median 2
    r = bench_training.ratios(rows, samples, "a", "b")
    assert r == {"speed": 2.0, "speed_of_medians": 3.0, "memory": 0.25}


def test_gemm_probe_times_every_shape_and_drops_each_turns_untimed_step():
    probe = harness.GemmProbe([(64, 32, 16), (8, 8, 8)], steps_per_turn=2)
    samples = harness.time_alternating({"gemm": probe}, [(None, None)], rounds=3, steps_per_round=2)
    assert probe.calls == 9 and len(samples["gemm"]) == 3
    assert [[len(t) for t in turn] for turn in probe.rounds] == [[2, 2]] * 3  # 2 timed steps, both shapes
    a, b, out = probe.operands[0]
    np.testing.assert_allclose(out, a @ b, rtol=1e-5)  # it really multiplied
    rates = probe.gflops_per_round()
    assert len(rates) == 3 and all(r > 0 for r in rates)


def test_paired_mfu_divides_round_by_round():
    # 1 GFLOP steps; round 2 ran at half speed on both sides, so every round is 50%
    assert harness.paired_mfu(1e9, [0.5, 1.0, 0.5], [4.0, 2.0, 4.0]) == pytest.approx(0.5)
    # rounds at 50%, 50%, 25%: the median is 50%, where the ratio of the medians
    # (1 GFLOP / 1.0 s / 4 GFLOP/s) would be 25%
    assert harness.paired_mfu(1e9, [0.5, 1.0, 1.0], [4.0, 2.0, 4.0]) == pytest.approx(0.5)


# what each model's step calls: GPT-2 has no RoPE, grouped KV heads or QK-norm
HEADS_STEPS = "RoPE, grouped KV, QK-norm"


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("config_name", ["tiny", "llama-tiny"])
def test_breakdown_categories_add_up_and_patches_are_undone(backend, config_name):
    bench = bench_training.MODELS[config_name]
    batches = bench_training.make_batches(bench.config, bench.batch_size, 3)
    trainer = bench_training.VintageTrainer(bench.config, backend)
    owners = harness.breakdown_owners(trainer.model, trainer.optimizer)

    def own_attributes():  # what each patched owner itself holds (None: it comes from the class)
        return [vars(owners[o]).get(a) for o, attrs in harness.BREAKDOWN_TARGETS.values() for a in attrs]

    before = own_attributes()
    bd = harness.breakdown(trainer, batches, repeats=1)
    # every patch undone: the same objects, and a class's method is not left shadowed
    assert all(a is b for a, b in zip(own_attributes(), before, strict=True))
    other = bd.pop(harness.OTHER)
    total = bd.pop("total")
    # nested timed calls are not counted twice (that would drive "other" below zero), and the
    # named categories cover most of the step (an unpatched op would land in "other")
    assert -0.01 * total <= other < 0.25 * total
    expected = [k for k in harness.BREAKDOWN_TARGETS if config_name.startswith("llama") or k != HEADS_STEPS]
    assert all(v > 0 for v in bd.values()) and list(bd) == expected


@pytest.mark.parametrize("argv,says", [(["--rounds", "0"], "at least 1"), (["--cpu-time"], "needs --threads 1")])
def test_bench_training_rejects_bad_arguments(capsys, argv, says):
    with pytest.raises(SystemExit) as exit_info:
        bench_training.main(argv)
    assert exit_info.value.code == 2 and says in capsys.readouterr().err


def test_torch_rows_are_skipped_with_a_reason_without_the_checkout(monkeypatch, tmp_path):
    monkeypatch.setattr(harness, "TORCH_REFERENCE", tmp_path / "tests" / "torch_gpt.py")
    with pytest.raises(bench_training.Skipped, match="source checkout"):
        bench_training.build("torch_gpt", harness.BENCH_MODELS["tiny"].config, None)


def test_nanogpt_style_model_starts_from_our_weights():
    torch = harness.require_torch()
    config, batches = tiny_batches(1)
    x, y = batches[0]
    ours = bench_training.VintageTrainer(config, "reference").model
    _, loss = ours.forward(x, y)
    nano = harness.load_nanogpt_style().from_numpy(config, ours.params)
    _, torch_loss = nano(torch.from_numpy(x), torch.from_numpy(y))
    assert torch_loss.item() == pytest.approx(loss, rel=1e-5)


def hf_llama_and_ours(dtype, seed=0):
    """A small random HF LlamaForCausalLM of an odd shape (6 query heads sharing 2 key/value
    heads, head size 8, SwiGLU width 72 = 1.5 C, rope theta 500, norm epsilon 1e-3, untied
    head, every gain drawn at random so that a norm read from the wrong place shows) and
    torch_llama's model holding its weights, both in `dtype`."""
    torch = harness.require_torch()
    from transformers import LlamaConfig, LlamaForCausalLM
    from torch_llama import LlamaStyle

    torch.manual_seed(seed)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=37, hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=16, rope_theta=500.0, rms_norm_eps=1e-3,
        tie_word_embeddings=False, initializer_range=0.2, attn_implementation="sdpa"))
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    config = bench_training.llama_config(vocab_size=37, block_size=16, n_layer=2, n_head=6, n_kv_head=2, n_embd=48,
                                         mlp_hidden=72, rope_theta=500.0, norm_eps=1e-3)
    return hf.to(dtype), LlamaStyle.from_hf_tensors(config, dict(hf.named_parameters()), dtype)


@pytest.mark.parametrize("gqa_in_sdpa", [True, False], ids=["enable_gqa", "repeat_interleave"])
@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
def test_llama_style_model_gives_transformers_logits_and_gradients(dtype_name, gqa_in_sdpa, monkeypatch):
    """torch_llama.py against Hugging Face's LlamaForCausalLM holding the same weights: logits,
    loss and the gradient of every parameter (the same names and shapes on both sides), with
    the key/value heads shared through SDPA's enable_gqa and through the older torch's path.

    float64 within 1e-10: HF's LlamaRMSNorm normalises in float32 whatever the dtype, so there
    it is given its own formula without that round trip (the one change to HF made here); its
    rotary tables are float32 by design, and torch_llama computes them the same way. float32
    within 1e-5 against HF untouched."""
    torch = harness.require_torch()
    import torch_llama

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch_llama, "GQA_IN_SDPA", gqa_in_sdpa)
    dtype = getattr(torch, dtype_name)
    if dtype == torch.float64:
        from transformers.models.llama import modeling_llama

        def rmsnorm_in_input_dtype(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

        monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rmsnorm_in_input_dtype)
    hf, ours = hf_llama_and_ours(dtype)
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(0, 37, (3, 16)))
    y = torch.from_numpy(rng.integers(0, 37, (3, 16)))
    y[0, :5] = -1  # vintagelm's "no target here"
    logits, loss = ours(x, y)
    hf_logits = hf(input_ids=x).logits
    hf_loss = torch.nn.functional.cross_entropy(hf_logits.flatten(0, 1), y.flatten(), ignore_index=-1)
    loss.backward()
    hf_loss.backward()
    tol = 1e-10 if dtype == torch.float64 else 1e-5

    def check(a, b):  # relative to the largest magnitude: elementwise ratios near zero mean nothing
        a, b = a.detach().numpy(), b.detach().numpy()
        assert a.shape == b.shape and np.abs(a - b).max() <= tol * np.abs(b).max()

    check(logits, hf_logits)
    check(loss, hf_loss)
    hf_params = dict(hf.named_parameters())
    assert set(hf_params) == {name for name, _ in ours.named_parameters()}
    for name, p in ours.named_parameters():
        check(p.grad, hf_params[name].grad)


def test_llama_rows_run_beside_vintagelm():
    """llama-tiny: tiny's sizes, half the key/value heads, Llama's SwiGLU width (the GPT MLP's
    parameters within 1%); vintagelm's row and the torch row both run it."""
    assert [bench_training.swiglu_hidden(c) for c in (128, 384)] == [344, 1024]
    for c in (128, 384):
        assert 3 * c * bench_training.swiglu_hidden(c) == pytest.approx(2 * c * 4 * c, rel=0.01)
    result = run_json(["--config", "llama-tiny", "--rounds", "1", "--steps-per-round", "1", "--threads", "1",
                       "--no-compile", "--no-memory", "--cpu-time"], gemm_shapes=[(256, 256, 256)])
    assert result["clock"] == "process CPU time"
    entry = result["llama-tiny"]
    assert {k: entry["model"][k] for k in ("n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden", "batch_size")} \
        == dict(n_layer=4, n_head=4, n_kv_head=2, n_embd=128, mlp_hidden=344, batch_size=12)
    assert {k: entry["model"][k] for k in bench_training.LLAMA_SWITCHES} == bench_training.LLAMA_SWITCHES
    assert list(entry["participants"]) == ["vintagelm-fast", "torch-llama"] and entry["skipped"] == {}
    assert all(row["tokens_per_s"] > 0 for row in entry["participants"].values())
    assert HEADS_STEPS in entry["breakdown_ms"]["vintagelm-fast"]


def test_llama_style_model_starts_from_vintagelm_weights():
    """from_vintagelm: the same function as vintagelm's Llama-shaped GPT (float32: vintagelm
    takes RoPE's angles in float64, torch_llama as HF in float32)."""
    torch = harness.require_torch()
    from torch_llama import from_vintagelm

    bench = bench_training.MODELS["llama-tiny"]
    x, y = bench_training.make_batches(bench.config, bench.batch_size, 1)[0]
    ours = bench_training.GPT(bench.config, seed=0, backend="reference")
    logits, loss = ours.forward(x, y)
    torch_logits, torch_loss = from_vintagelm(ours)(torch.from_numpy(x), torch.from_numpy(y))
    assert np.abs(torch_logits.detach().numpy() - logits).max() <= 1e-5 * np.abs(logits).max()
    assert torch_loss.item() == pytest.approx(loss, rel=1e-5)
