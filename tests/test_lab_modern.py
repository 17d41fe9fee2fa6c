"""`vintage lab modern` run with --quick --alone: its page is real (a PNG with content per question,
the summary, every number finite except the documented Nones, the table and the sentences in
index.html), and what it states holds in the numbers it measured:
    the ladder adds one piece per rung, and only that piece
    every rung learned: finite bits per byte, below where it started
    the KV-cache bytes per token are 2 L Hkv D itemsize, read off each rung's config
    the SwiGLU rung has the GELU rung's parameters, within half a hidden unit per layer
    every "helped / no clear change / hurt" the page says is what the numbers in results.json give
"""
import html
import math

import numpy as np
import pytest

from lab_checks import numbers, run_page
from vintagelm import cli
from vintagelm.lab.modern import LABELS, PIECES, equal_step_point, swiglu_width
from vintagelm.model import GPTConfig

# what each piece changes in the model config ({} for Muon: only the optimizer)
PIECE_FIELDS = {"rope": {"pos"}, "rmsnorm": {"norm_type"}, "swiglu": {"activation", "mlp_hidden"},
                "gqa": {"n_kv_head"}, "qk_norm": {"qk_norm"}, "no_bias": {"bias"}, "untied": {"tie_weights"},
                "muon": set()}
GROUPS = {"helped": "Helped at this scale: ", "no clear change": "Made no clear difference: ",
          "hurt": "Hurt at this scale: "}


@pytest.fixture(scope="module")
def modern(tmp_path_factory):
    """One --quick --alone run -> (folder, results, sentences printed)."""
    return run_page("modern", tmp_path_factory, "--alone", "--seconds", "1")


def test_modern_page(modern):
    import matplotlib.image

    out, results, sentences = modern
    for name in [f"q_{p}" for p in PIECES] + ["summary", "alone"]:
        pixels = matplotlib.image.imread(out / f"{name}.png")
        assert pixels.var() > 1e-3, f"{name}.png is blank"
    for where, value in numbers(results):
        if value is None:  # the documented Nones: AdamW's rungs have no Muon rate; the noise run's one point
            rung = where.split(".")[2] if where.startswith("results.rungs.") else None
            assert (where.endswith(".muon_lr") and results["rungs"][rung]["optimizer"] == "adamw"
                    or where == "results.rungs.noise.val_bpb_equal_steps"), f"{where} is None"
        else:
            assert math.isfinite(value), f"{where} = {value}"
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and 'src="http' not in page
    assert "<table>" in page and "KV bytes/token" in page and "Δ alone on GPT-2" in page
    for sentence in sentences:
        assert f"<p>{html.escape(sentence, quote=True)}</p>" in page
    for key, rung in results["rungs"].items():
        name = f"GPT-2 {LABELS[key.removeprefix('alone_')]}" if key.startswith("alone_") else rung["label"]
        assert f"<td>{html.escape(name)}</td>" in page, key


def test_each_rung_adds_one_piece_to_the_rung_before(modern):
    _, results, _ = modern
    rungs = results["rungs"]
    ladder = results["ladder"]
    assert ladder == ["gpt2", *PIECES]
    gpt2 = rungs["gpt2"]["config"]
    assert (gpt2["pos"], gpt2["norm_type"], gpt2["activation"], gpt2["n_kv_head"], gpt2["qk_norm"], gpt2["bias"],
            gpt2["tie_weights"]) == ("learned", "layer", "gelu", 0, False, True, True)
    for before, piece in zip(ladder, ladder[1:]):
        a, b = rungs[before]["config"], rungs[piece]["config"]
        assert {k for k in a if a[k] != b[k]} == PIECE_FIELDS[piece], piece
        assert rungs[piece]["optimizer"] == ("muon" if piece == "muon" else "adamw")
        alone = rungs.get(f"alone_{piece}", rungs["rope"])["config"]  # rope alone is the ladder's first rung
        assert {k for k in gpt2 if gpt2[k] != alone[k]} == PIECE_FIELDS[piece], piece
    assert rungs["gqa"]["config"]["n_kv_head"] * 2 == rungs["gqa"]["config"]["n_head"]
    assert rungs["muon_lr"]["config"] == rungs["muon"]["config"]
    assert rungs["muon_lr"]["muon_lr"] != rungs["muon"]["muon_lr"]
    assert rungs["noise"]["config"] == gpt2 and rungs["noise"]["steps"] == rungs["gpt2"]["steps"]


def test_every_rung_learned(modern):
    _, results, _ = modern
    for key, rung in results["rungs"].items():
        assert not rung["diverged"], key
        assert math.isfinite(rung["val_bpb"]) and rung["val_bpb"] < 8, key
        if key != "noise":  # measured once, at the end (its own seed would move the windows)
            assert rung["curve"][0]["steps"] == 0 and rung["val_bpb"] < rung["curve"][0]["bpb"], key
            # every rung is measured at the equal-steps point, and that is the number the page gives
            at_equal = [p["bpb"] for p in rung["curve"] if p["steps"] == results["equal_steps"]]
            assert at_equal == [rung["val_bpb_equal_steps"]], key
        assert rung["steps"] == rung["planned_steps"] >= results["equal_steps"], key


def test_kv_cache_bytes_per_token_follow_the_formula(modern):
    _, results, _ = modern
    for key, rung in results["rungs"].items():
        c = rung["config"]
        kv_heads = c["n_kv_head"] or c["n_head"]
        assert rung["kv_bytes_per_token"] == 2 * c["n_layer"] * kv_heads * (c["n_embd"] // c["n_head"]) * 4, key
    rungs = results["rungs"]
    assert rungs["gqa"]["kv_bytes_per_token"] * 2 == rungs["swiglu"]["kv_bytes_per_token"]


def test_the_swiglu_rung_has_the_gelu_rungs_parameters(modern):
    _, results, _ = modern
    rungs, match = results["rungs"], results["swiglu_match"]
    c = rungs["swiglu"]["config"]
    C, L, F = c["n_embd"], c["n_layer"], c["mlp_hidden"]
    assert rungs["rmsnorm"]["config"]["activation"] == "gelu" and c["bias"]
    # the two MLPs by hand (the rest of the two models is the same): GELU 2 C 4C + 4C + C, SwiGLU 3 C F + 2F + C
    gelu_mlp, swiglu_mlp = 8 * C * C + 5 * C, 3 * C * F + 2 * F + C
    assert rungs["swiglu"]["params"] - rungs["rmsnorm"]["params"] == L * (swiglu_mlp - gelu_mlp)
    assert abs(swiglu_mlp - gelu_mlp) <= (3 * C + 2) / 2  # half a hidden unit per layer
    assert abs(rungs["swiglu"]["params"] - rungs["rmsnorm"]["params"]) <= match["tolerance"]
    assert (match["gelu_params"], match["swiglu_params"]) == (rungs["rmsnorm"]["params"], rungs["swiglu"]["params"])


def test_swiglu_width_at_the_tiny_shape():
    # C = 128 with biases: GELU holds 131,712 per layer; SwiGLU 386 F + 128, so 341 (131,754) beats 340 (131,368)
    assert swiglu_width(GPTConfig(vocab_size=65, n_embd=128, n_head=4)) == 341
    # without biases: 131,072 against 384 F, so 341 (130,944) beats 342 (131,328)
    assert swiglu_width(GPTConfig(vocab_size=65, n_embd=128, n_head=4, bias=False)) == 341


def plan_error(rung):
    """The bits per byte a plan spread too long or short could move: the curve's fall per step
    over its last third, times the steps the spread stands for."""
    curve = rung["curve"]
    end = curve[-1]
    start = [p for p in curve if p["steps"] >= end["steps"] * 2 / 3][0]
    if start is end:
        return 0.0
    return abs(start["bpb"] - end["bpb"]) / (end["steps"] - start["steps"]) * rung["plan_spread"] * end["steps"]


def test_the_pages_verdicts_are_the_numbers(modern):
    _, results, sentences = modern
    rungs = results["rungs"]
    seed_margin = max(abs(rungs["gpt2"]["val_bpb"] - rungs["noise"]["val_bpb"]), 0.005)
    assert results["noise"]["margin"] == pytest.approx(seed_margin)
    for before, piece in zip(results["ladder"], PIECES):
        b, a = rungs[before]["val_bpb"], rungs[piece]["val_bpb"]
        margin = seed_margin + plan_error(rungs[before]) + plan_error(rungs[piece])
        verdict = "helped" if a - b < -margin else "hurt" if a - b > margin else "no clear change"
        said = [s for s in sentences if s.startswith(GROUPS[verdict])]
        assert len(said) == 1, piece
        assert f"{LABELS[piece]} ({b:.3f} → {a:.3f}, {a - b:+.3f} against a margin of {margin:.3f})" in said[0], piece
        others = [s for v, s in ((v, s) for s in sentences for v in GROUPS if s.startswith(GROUPS[v])) if v != verdict]
        assert not any(f"{LABELS[piece]} (" in s for s in others), piece
    alone = next(s for s in sentences if s.startswith("Alone on GPT-2: "))
    for piece in PIECES:
        key = "rope" if piece == "rope" else f"alone_{piece}"
        assert f"{LABELS[piece]} {rungs[key]['val_bpb'] - rungs['gpt2']['val_bpb']:+.3f}" in alone, piece


def test_the_plan_gives_every_run_its_share_of_cpu_time(modern):
    _, results, _ = modern
    for key, rung in results["rungs"].items():
        # steps planned = seconds / the measured CPU seconds of a step (rounded, at least 1)
        assert rung["planned_steps"] == max(1, round(results["size"]["seconds"] / rung["step_cpu_seconds"])), key
        assert rung["tokens_per_second"] == pytest.approx(
            results["size"]["batch_size"] * rung["config"]["block_size"] / rung["step_cpu_seconds"]), key
        # the plan's step time is the median of the timing rounds, its spread half their range over
        # it; how large that is depends on how busy the machine was, so only the relation is asserted
        rounds = rung["step_cpu_rounds"]
        assert len(rounds) == results["size"]["timing_rounds"], key
        assert rung["step_cpu_seconds"] == pytest.approx(float(np.median(rounds))), key
        assert rung["plan_spread"] == pytest.approx((max(rounds) - min(rounds)) / 2 / np.median(rounds)), key


def test_the_equal_steps_point_is_reached_by_every_run():
    every, equal = equal_step_point({"a": 95, "b": 130, "c": 101}, evals=10)
    assert (every, equal) == (9, 90)  # 95 // 10 = 9; 90 is the largest multiple of 9 up to 95
    assert equal_step_point({"a": 3}, evals=10) == (1, 3)


@pytest.mark.parametrize("flags", [["--seconds", "0"], ["--lr", "-1"], ["--muon-lr", "0.02", "0"]])
def test_bad_settings_are_one_line(flags, tmp_path, capsys):
    assert cli.main(["lab", "modern", "--quick", "--out", str(tmp_path / "page"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "must be positive" in err
    assert not (tmp_path / "page").exists()
