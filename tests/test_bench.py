"""`vintage bench`: the alternating timer, the JSON contract of issue 5, and the breakdown.
The timings themselves are not asserted (performance claims live in benchmarks); what is
asserted is what must hold whatever the machine's speed."""
import json
import os
import platform
import time

import numpy as np
import pytest

from vintagelm import bench
from vintagelm.cli import main


class SleepyTrainer:
    def __init__(self, name, seconds, log):
        self.name, self.seconds, self.log = name, seconds, log

    def step(self, x, y):
        self.log.append(self.name)
        time.sleep(self.seconds)


def test_time_alternating_takes_turns_in_flipping_order():
    log = []
    trainers = {"a": SleepyTrainer("a", 0.002, log), "b": SleepyTrainer("b", 0.030, log)}
    samples = bench.time_alternating(trainers, [(None, None)], rounds=4, steps_per_round=2)
    rounds = [log[6 * r : 6 * (r + 1)] for r in range(4)]  # per turn: one untimed step, two timed
    assert rounds == [["a"] * 3 + ["b"] * 3, ["b"] * 3 + ["a"] * 3] * 2 and len(log) == 24
    assert len(samples["a"]) == len(samples["b"]) == 4
    assert 0.002 <= np.median(samples["a"]) < np.median(samples["b"])  # sleep is a lower bound
    assert 0.030 <= np.median(samples["b"])


def test_vintage_bench_json_contract(capsys, monkeypatch):
    assert bench.torch_available()  # torch is in the [test] extra: the reference must run here
    monkeypatch.setattr(bench, "GEMM_SHAPES", [(512, 384, 512), (256, 256, 256)])  # quick ones here
    assert main(["bench", "--json", "--config", "tiny", "--rounds", "1", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert isinstance(result["blas_kernel"], str) and result["blas_kernel"]
    assert result["lanes"] == 1  # one BLAS thread, one lane
    on = platform.libc_ver()[0] == "glibc" and os.environ.get("VINTAGELM_REUSE_MEMORY", "1") != "0"
    assert result["reuse_freed_memory"] is on
    tiny = result["tiny"]
    for impl in ("vintagelm", "torch"):
        assert tiny[impl]["tokens_per_s"] > 0 and tiny[impl]["peak_rss_mb"] > 0
    tokens = 12 * 64  # batch 12, block 64
    assert tiny["vintagelm"]["tokens_per_s"] == pytest.approx(tokens / (tiny["vintagelm"]["ms_per_step"] / 1000))
    # one round: the paired ratio and the ratio of medians are the same number
    assert tiny["speed_ratio"] == pytest.approx(tiny["torch"]["ms_per_step"] / tiny["vintagelm"]["ms_per_step"])
    assert tiny["speed_ratio_of_medians"] == pytest.approx(tiny["speed_ratio"])
    assert tiny["memory_ratio"] == pytest.approx(tiny["vintagelm"]["peak_rss_mb"] / tiny["torch"]["peak_rss_mb"])
    assert 0 < tiny["mfu"] < 2  # model FLOP/s over NumPy's GEMM FLOP/s: a fraction, give or take noise
    assert tiny["matmul_gflops"] == result["matmul_gflops"] > 0


def test_gemm_probe_times_every_shape_and_drops_each_turns_untimed_step(monkeypatch):
    monkeypatch.setattr(bench, "GEMM_SHAPES", [(64, 32, 16), (8, 8, 8)])
    probe = bench.GemmProbe(steps_per_turn=2)
    samples = bench.time_alternating({"gemm": probe}, [(None, None)], rounds=3, steps_per_round=2)
    assert probe.calls == 9 and len(samples["gemm"]) == 3
    assert [[len(t) for t in turn] for turn in probe.rounds] == [[2, 2]] * 3  # 2 timed steps, both shapes
    a, b, out = probe.operands[0]
    np.testing.assert_allclose(out, a @ b, rtol=1e-5)  # it really multiplied
    rates = probe.gflops_per_round()
    assert len(rates) == 3 and all(r > 0 for r in rates)


def test_paired_mfu_divides_round_by_round():
    # 1 GFLOP steps; round 2 ran at half speed on both sides, so every round is 50%
    assert bench.paired_mfu(1e9, [0.5, 1.0, 0.5], [4.0, 2.0, 4.0]) == pytest.approx(0.5)
    # rounds at 50%, 50%, 25%: the median is 50%, where the ratio of the medians
    # (1 GFLOP / 1.0 s / 4 GFLOP/s) would be 25%
    assert bench.paired_mfu(1e9, [0.5, 1.0, 1.0], [4.0, 2.0, 4.0]) == pytest.approx(0.5)


def test_breakdown_categories_add_up_and_patches_are_undone():
    config, batch_size = bench.make_config("tiny")
    batches = bench.make_batches(config, batch_size, 3)
    from vintagelm import model as model_module

    before = model_module.linear_forward
    bd = bench.breakdown(config, batches, repeats=1)
    assert model_module.linear_forward is before
    other = bd.pop("other (residuals, reshapes, Python)")
    total = bd.pop("total")
    # nested timed calls are not counted twice (that would drive "other" below zero), and the
    # named categories cover most of the step (an unpatched op would land in "other")
    assert -0.01 * total <= other < 0.25 * total
    assert all(v > 0 for v in bd.values()) and len(bd) == len(bench.BREAKDOWN_TARGETS)


def test_bench_rejects_bad_numbers(capsys):
    assert main(["bench", "--rounds", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
