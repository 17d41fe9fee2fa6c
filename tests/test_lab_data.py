"""The lab's data experiments, `vintage lab data-quality` and `vintage lab tokenizers`, run with
--quick: their pages are real (PNGs with content, finite numbers, the sentences in index.html)
and the facts they exist to show hold in the numbers they measured. Plus the pieces they rest
on: the OCR-noise function, the mixing of passages, and the modern text the period filter flags.
"""
import difflib
import json
import math

import numpy as np
import pytest

from lab_checks import numbers
from vintagelm import cli
from vintagelm.data.clean import split_paragraphs
from vintagelm.data.period import PeriodFilter, load_terms
from vintagelm.data.sources import shakespeare_documents
from vintagelm.lab import data_quality


def run_quick(name, tmp_path_factory):
    """Run one experiment with --quick into a fresh folder (and a fresh cache) -> (folder, results)."""
    root = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VINTAGELM_CACHE", str(root / "cache"))
        # one BLAS thread: on a busy 2-core machine more threads wait on each other
        assert cli.main(["--threads", "1", "lab", name, "--quick", "--out", str(root / "out"), "--no-progress"]) == 0
    out = root / "out"
    return out, json.loads((out / "results.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def quality(tmp_path_factory):
    return run_quick("data-quality", tmp_path_factory)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    return run_quick("tokenizers", tmp_path_factory)


def check_page(out, results, figures):
    import matplotlib.image

    for name in figures:
        pixels = matplotlib.image.imread(out / f"{name}.png")
        assert pixels.var() > 1e-3, f"{name}.png is blank"
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "What the numbers say" in html and "data:image/png;base64," in html and "src=\"http" not in html
    for where, value in numbers(results):
        if value is None:
            assert where.endswith("train_chars") or where.endswith("heldout_chars"), f"{where} is None"
        else:
            assert math.isfinite(value), f"{where} = {value}"
    return html


# ---- data-quality ----

def test_data_quality_page(quality):
    out, results = quality
    html = check_page(out, results, ["curves", "summary"])
    variants = results["variants"]
    assert list(variants) == list(data_quality.VARIANTS)
    for name, m in variants.items():
        assert not m["diverged"], f"{name} diverged"
        assert f"{m['val_bpb']:.3f}" in html  # the sentences quote every variant's bits per byte
        assert len(m["sample_excerpts"]) >= 1 and all(m["sample_excerpts"])
        assert 0 < m["val_bpb"] < 8
    assert f"{variants['duplicated']['gap']:.3f}" in html


def test_duplicated_data_opens_a_wider_train_val_gap(quality):
    _, results = quality
    clean, dup = results["variants"]["clean"], results["variants"]["duplicated"]
    assert dup["gap"] > clean["gap"] + 0.05
    assert dup["train_loss"] < clean["train_loss"]  # the copies are easy to predict ...
    assert dup["val_loss"] > clean["val_loss"]  # ... and teach less about the held-out plays


def test_data_quality_saves_runs_for_the_doctor(quality):
    out, results = quality
    runs = results["runs"]
    assert runs["duplicated"]["expected"] == "overfit" and runs["clean"]["expected"] == "healthy"
    for name, run in runs.items():
        folder = out / run["folder"]
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        assert config["max_iters"] == results["size"]["steps"] and config["data_summary"]["variant"] == name
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(rows) == results["size"]["steps"]
        assert sum("val_loss" in r for r in rows) >= 2  # eval_every recorded the validation loss
        assert rows[-1]["val_loss"] == pytest.approx(results["variants"][name]["val_loss"])


def test_every_variant_shares_one_tokenizer_and_the_clean_val(quality):
    _, results = quality
    vocab = results["tokenizer_vocab"]
    assert vocab == results["config"]["vocab_size"]
    assert {m["data"]["val_chars"] for m in results["variants"].values()} == {results["val_chars"]}
    # the duplicated and modern variants are as long as the clean text (within a paragraph)
    lengths = {n: m["data"]["train_chars"] for n, m in results["variants"].items()}
    for name in ("duplicated", "modern"):
        assert lengths[name] == pytest.approx(lengths["clean"], rel=0.01)


# ---- the pieces: OCR noise, mixing, modern text ----

LONG = " ".join(d.text for d in shakespeare_documents())[:200_000]


def test_ocr_noise_respects_its_rate_and_its_seed():
    noisy, edits = data_quality.ocr_noise(LONG, 0.05, seed=3)
    assert sum(edits.values()) / len(LONG) == pytest.approx(0.05, rel=0.05)
    assert set(edits) == set(data_quality.OCR_KINDS)  # look-alikes, drops, strays and broken words all occur
    assert data_quality.ocr_noise(LONG, 0.05, seed=3) == (noisy, edits)
    assert data_quality.ocr_noise(LONG, 0.05, seed=4)[0] != noisy
    assert data_quality.ocr_noise(LONG, 0.0, seed=3)[0] == LONG
    # an independent count: the regions difflib finds changed, on a slice (adjacent edits may merge)
    piece = LONG[:4000]
    noisy_piece, piece_edits = data_quality.ocr_noise(piece, 0.05, seed=5)
    changed = sum(op != "equal" for op, *_ in difflib.SequenceMatcher(None, piece, noisy_piece, autojunk=False).get_opcodes())
    assert 0.8 * sum(piece_edits.values()) <= changed <= sum(piece_edits.values())
    assert 0.8 * 0.05 * len(piece) <= changed <= 1.2 * 0.05 * len(piece)


def test_ocr_noise_makes_the_classic_confusions():
    noisy, edits = data_quality.ocr_noise("rn" * 5000, 1.0, seed=0)
    assert "m" in noisy and edits["lookalike"] > 1000  # every pair chosen for a look-alike became "m"


def test_mix_in_holds_its_share_and_keeps_the_base_order():
    rng = np.random.default_rng(0)
    base = [f"base paragraph number {i:04d} " * 3 for i in range(500)]
    extra = ["an extra paragraph", "another extra one"]
    mixed = data_quality.mix_in(base, extra, 0.3, rng)
    extra_chars = sum(len(p) + 2 for p in mixed if p in extra)
    assert extra_chars / sum(len(p) + 2 for p in mixed) == pytest.approx(0.3, abs=0.01)
    kept = [p for p in mixed if p not in extra]
    assert kept == base[:len(kept)]


def test_period_filter_flags_the_modern_text_and_not_shakespeare():
    period = PeriodFilter(1900, load_terms())
    modern = data_quality.modern_paragraphs()
    assert len(data_quality.modern_text().encode("utf-8")) > 3000 and len(modern) >= 20
    assert sum(not period.keep(p) for p in modern) / len(modern) > 0.9
    plays = [p for d in list(shakespeare_documents())[:5] for p in split_paragraphs(d.text)]
    assert sum(not period.keep(p) for p in plays) / len(plays) < 0.01


def test_modern_hits_counts_every_term_in_a_line():
    period = PeriodFilter(1900, load_terms())
    hits = data_quality.modern_hits("I sent an email from my smartphone in 2019.\nthou art", period)
    assert sorted(h.matched for h in hits) == ["2019", "email", "smartphone"]


# ---- tokenizers ----

def test_tokenizers_page(tokenizers):
    out, results = tokenizers
    html = check_page(out, results, ["bytes_per_token", "char_vs_bpe"])
    for m in results["models"].values():
        assert f"{m['val_bpb']:.3f}" in html


def test_bytes_per_token_grows_with_the_vocabulary(tokenizers):
    _, results = tokenizers
    rows = results["bpe"]
    assert [r["vocab_size"] for r in rows] == [256 + n for n in results["size"]["extra"]]
    per_token = [r["bytes_per_token"] for r in rows]
    assert all(a < b for a, b in zip(per_token, per_token[1:])), per_token
    assert results["char"]["bytes_per_token"] < per_token[0]


def test_char_and_bpe_models_have_finite_bits_per_byte(tokenizers):
    _, results = tokenizers
    char, bpe = results["models"]["char"], results["models"]["bpe"]
    for m in (char, bpe):
        assert not m["diverged"] and m["steps"] > 0
        assert 0 < m["val_bpb"] < 8
    # the same shape: only the embedding table differs
    assert bpe["params"] - char["params"] == bpe["embedding_params"] - char["embedding_params"]
    assert bpe["block_bytes"] > char["block_bytes"]
