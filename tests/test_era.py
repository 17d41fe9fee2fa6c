"""The era evaluation (vintagelm/era/): its shipped texts, each metric on tiny trained models,
a unigram that the minimal pairs reward and a shuffled-token model that the cloze does not,
which word on a count model that has read the text and one that has not, `vintage eval RUN --era --json`
and the lab page.

    pytest tests/test_era.py -q
"""
import json
import math
import types

import numpy as np
import pytest

from vintagelm.cli import main
from vintagelm.data.period import PeriodFilter, load_terms
from vintagelm.era import metrics, texts

TINY = ["--max-iters", "60", "--set", "n_layer=1", "--set", "n_embd=32", "--set", "n_head=2",
        "--set", "block_size=64", "--set", "sample_tokens=0", "--no-progress"]
N_PLAYS = 3  # the period text: the first plays of the builtin corpus, one file (val = its last 10%)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A private cache, the period text and the models trained on it, shared by the tests."""
    from vintagelm.data.sources import shakespeare_documents

    root = tmp_path_factory.mktemp("era")
    mp = pytest.MonkeyPatch()
    mp.setenv("VINTAGELM_CACHE", str(root / "cache"))
    docs = list(shakespeare_documents())[:N_PLAYS]
    period = root / "plays.txt"
    period.write_text("\n\n".join(d.text for d in docs) + "\n", encoding="utf-8")
    # the same characters in a random order: nothing to learn but their frequencies
    chars = np.array(list(period.read_text(encoding="utf-8")))
    shuffled = root / "shuffled.txt"
    shuffled.write_text("".join(np.random.default_rng(0).permutation(chars)), encoding="utf-8")
    runs = {"gpt": root / "gpt", "shuffled": root / "shuffled", "unigram": root / "unigram"}
    assert main(["train", "--data", str(period), "--out", str(runs["gpt"]), *TINY]) == 0
    # a count model (fitted at once) of the shuffled text: its bigrams carry no order either
    assert main(["train", "--data", str(shuffled), "--out", str(runs["shuffled"]), "--arch", "ngram",
                 "--set", "order=2", "--set", "sample_tokens=0", "--no-progress"]) == 0
    # a unigram over BPE tokens, so that a token stands for a word or a piece of one
    assert main(["train", "--data", str(period), "--out", str(runs["unigram"]), "--arch", "ngram",
                 "--set", "order=1", "--tokenizer", "bpe", "--set", "sample_tokens=0", "--no-progress"]) == 0
    yield types.SimpleNamespace(root=root, period=period, runs=runs)
    mp.undo()


def load(run):
    from vintagelm.checkpoint import load_checkpoint

    return load_checkpoint(run, with_optimizer=False)


def finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def walk_floats(value, where="report"):
    """Every float of a JSON structure, with its path."""
    if isinstance(value, float):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from walk_floats(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk_floats(v, f"{where}[{i}]")


# ---------------------------------------------------------------- the shipped texts
def test_each_minimal_pair_differs_in_its_span_only():
    pairs = texts.minimal_pairs()
    assert len(pairs) >= 200
    assert len({p.period for p in pairs}) == len(pairs), "a period sentence is listed twice"
    bad = []
    for p in pairs:
        assert p.period_span and p.modern_span and p.period_span != p.modern_span, p
        # some occurrence of the period span, replaced by the modern one, gives the modern sentence
        starts = [i for i in range(len(p.period)) if p.period.startswith(p.period_span, i)]
        if not any(p.period[:i] + p.modern_span + p.period[i + len(p.period_span):] == p.modern for i in starts):
            bad.append(p)
    assert not bad, f"pairs that differ outside their spans: {bad[:3]}"
    # balanced in length: preferring the shorter sentence is worth about nothing
    shorter = np.mean([metrics.choice_credit([-len(p.period), -len(p.modern)], 0) for p in pairs])
    assert 0.4 < shorter < 0.6


def test_the_control_text_is_modern_and_the_period_texts_are_not():
    period_filter = PeriodFilter(metrics.DEFAULT_BEFORE, load_terms())
    sections = texts.control_sections()
    assert len(texts.modern_control_text().encode()) >= 20_000 and len(sections) >= 10
    # the filter dates every section of the control text modern (and so the whole of it)
    undated = [name for name, text in sections if period_filter.find(text) is None]
    assert not undated, f"sections of the control text the filter keeps: {undated}"
    assert period_filter.find(texts.modern_control_text()) is not None
    # ...and fails none of the period texts: labelled period paragraphs, the pairs' period
    # members, and builtin paragraphs (no known failures to list)
    period = [t for t in texts.labelled_paragraphs() if not t.is_modern(metrics.DEFAULT_BEFORE)]
    period += texts.builtin_period_paragraphs(300, seed=1)
    failed = [(t.source, period_filter.find(t.text).reason) for t in period if period_filter.find(t.text)]
    assert not failed, failed
    for before in (1600, metrics.DEFAULT_BEFORE):  # the pairs are period-true even for Shakespeare's day
        strict = PeriodFilter(before, load_terms())
        assert [p.period for p in texts.minimal_pairs() if strict.find(p.period)] == []
    assert "PROVENANCE" in texts.__doc__ and "2026-12-02" in texts.__doc__
    for file in (texts.CONTROL_FILE, texts.PAIRS_FILE, texts.LABELLED_FILE):
        assert "PROVENANCE: written for vintagelm by the team on 2026-12-02" in file.read_text(encoding="utf-8")


def test_labelled_paragraphs_follow_the_cut_off():
    labelled = texts.labelled_paragraphs()
    assert sum(t.is_modern(1900) for t in labelled) >= 30 and sum(not t.is_modern(1900) for t in labelled) >= 30
    q = metrics.filter_quality(PeriodFilter(1900, load_terms()), labelled)
    assert q["modern"] + q["period"] == len(labelled)
    assert 0 <= q["precision"] <= 1 and 0 < q["recall"] <= 1
    # the modern paragraphs the filter keeps are listed as misses (up to EXAMPLES), and only those
    assert len(q["misses"]) == min(metrics.EXAMPLES, round((1 - q["recall"]) * q["modern"]))
    # an earlier cut-off makes the nineteenth century modern: more positives
    assert metrics.filter_quality(PeriodFilter(1850, load_terms()), labelled)["modern"] > q["modern"]


def test_wilson_interval_and_split_credit():
    assert metrics.wilson(0, 0) == (None, None)
    low, high = metrics.wilson(50, 100)
    assert low < 0.5 < high and abs((low + high) / 2 - 0.5) < 1e-12 and 0.09 < high - low < 0.2
    low, high = metrics.wilson(10, 10)
    assert math.isclose(high, 1.0) and 0.6 < low < 0.8
    assert metrics.choice_credit([1, 1, 0, 0], 0) == 0.5
    assert metrics.choice_credit([1, 2, 0, 0], 0) == 0.0


# ---------------------------------------------------------------- items and scoring
def test_cloze_items_never_take_a_candidate_from_the_contexts_window(work):
    from vintagelm.data.loader import load_dataset

    state = load(work.runs["gpt"]).state
    docs = metrics.val_documents(load_dataset(state["data"]["dataset"]))
    # plus a document that repeats its lines, which must never reach a window as a candidate
    docs = docs + ["\n".join(f"a line that is said again and again {i % 3}" for i in range(40))]
    items = metrics.cloze_items(docs, 150, seed=3)
    assert len(items) == 150
    lines = [d.split("\n") for d in docs]
    in_tolerance = 0
    for it in items:
        lo, hi = it.window
        assert it.sources[it.answer] == (it.doc, it.line) and lo == it.line - metrics.CONTEXT_LINES
        assert it.context == "\n".join(lines[it.doc][lo:it.line]) + "\n"
        window_text = set(lines[it.doc][lo:hi])
        assert len(set(it.candidates)) == 4
        for k, ((d, i), cand) in enumerate(zip(it.sources, it.candidates)):
            assert cand == lines[d][i] + "\n"
            if k != it.answer:
                assert not (d == it.doc and lo <= i < hi), "a candidate from the context's own window"
                assert lines[d][i] not in window_text, "a candidate that repeats a line of the window"
        true = len(lines[it.doc][it.line])
        in_tolerance += all(abs(len(c) - 1 - true) <= max(2, round(0.1 * true)) for c in it.candidates)
    assert in_tolerance >= 0.9 * len(items)
    assert [(it.doc, it.line, it.answer) for it in metrics.cloze_items(docs, 150, seed=3)] == \
        [(it.doc, it.line, it.answer) for it in items], "not deterministic"


def test_word_items_offer_four_words_of_one_length_and_frequency_in_the_true_ones_capitals(work):
    from vintagelm.data.loader import load_dataset

    docs = metrics.val_documents(load_dataset(load(work.runs["gpt"]).state["data"]["dataset"]))
    counts = metrics.word_counts(docs)
    items = metrics.word_items(docs, 150, seed=0)
    assert len(items) == 150
    for it in items:
        text, true = docs[it.doc], it.candidates[it.answer]
        at = text.index(it.context + true)  # the context and the true continuation are the text
        assert true.endswith("\n") or at + len(it.context) + len(true) == len(text)
        assert "\n" not in true[:-1] and len(it.context) == metrics.WORD_CONTEXT_CHARS
        words = [metrics._CLOZE_WORD.search(c).group(0) for c in it.candidates]
        rests = {c[c.index(w) + len(w):] for c, w in zip(it.candidates, words)}
        assert len(rests) == 1 and len({len(w) for w in words}) == 1 and len({w.lower() for w in words}) == 4
        assert len(words[0]) >= metrics.WORD_MIN_LETTERS and not words[it.answer].isupper()
        assert len({(w[0].isupper(), w[1:].isupper()) for w in words}) == 1, words  # love, Love or LOVE
        logs = [math.log(counts[w.lower()]) for w in words]
        assert max(logs) - min(logs) <= 2 * metrics.WORD_FREQUENCY_BAND + 1e-12
        assert text.count("\n", 0, at + len(it.context)) == it.line
    assert [(it.doc, it.line, it.answer, it.candidates) for it in metrics.word_items(docs, 150, seed=0)] == \
        [(it.doc, it.line, it.answer, it.candidates) for it in items], "not deterministic"
    assert metrics.word_items(["Too short a text for any item."], 10) == []


def test_token_logprobs_match_a_full_forward_and_slide_past_the_block(work):
    ckpt = load(work.runs["gpt"])
    model, tok = ckpt.model, ckpt.tokenizer
    text = work.period.read_text(encoding="utf-8")[:300]
    ids = tok.encode_ordinary(text)
    short = metrics.token_logprobs(model, [(ids[:10], ids[10:40])])[0]
    model.eval()
    logits, _ = model.forward(np.array([ids[:39]]))
    z = logits[0].astype(np.float64)
    zmax = z.max(-1, keepdims=True)
    ref = z - zmax - np.log(np.exp(z - zmax).sum(-1, keepdims=True))  # (T, V) log-softmax
    np.testing.assert_allclose(short, ref[np.arange(9, 39), ids[10:40]], rtol=1e-6, atol=1e-6)
    # past block_size the windows slide: every token scored once, with at least T/2 context
    long = metrics.token_logprobs(model, [(ids[:1], ids[1:250])])[0]
    assert long.shape == (249,) and np.all(np.isfinite(long)) and np.all(long <= 0)
    np.testing.assert_allclose(long[:30], metrics.token_logprobs(model, [(ids[:1], ids[1:31])])[0], atol=1e-6)


def test_unknown_characters_are_dropped_and_counted(work):
    tok = load(work.runs["gpt"]).tokenizer
    kept, dropped = metrics.split_unknown(tok, 'say "aye" at once, £ or @ or %')  # none of these in the plays
    assert kept == "say aye at once,  or  or " and dropped == {'"': 2, "£": 1, "@": 1, "%": 1}


# ---------------------------------------------------------------- the metrics can succeed and can fail
def test_a_unigram_fitted_on_period_text_prefers_the_period_member(work):
    ckpt = load(work.runs["unigram"])
    r = metrics.minimal_pair_accuracy(ckpt.model, ckpt.tokenizer, texts.minimal_pairs())
    assert r["n"] >= 200 and r["skipped"] == 0
    assert r["accuracy"] > 0.55 and r["ci_low"] > 0.5, r  # most pairs, beyond chance
    assert r["accuracy"] > r["shorter_baseline"] + 0.05


def test_a_model_of_shuffled_tokens_scores_chance_on_the_cloze(work):
    from vintagelm.data.loader import load_dataset

    real = load_dataset(load(work.runs["gpt"]).state["data"]["dataset"])
    ckpt = load(work.runs["shuffled"])
    items = metrics.cloze_items(metrics.val_documents(real), 200, seed=0)
    r = metrics.choice_accuracy(ckpt.model, ckpt.tokenizer, items)
    assert r["n"] == 200 and r["skipped"] == 0
    assert 0.15 <= r["accuracy"] <= 0.35, r  # a wide interval around 1/4
    assert r["ci_low"] <= 0.25 <= r["ci_high"]


# ---------------------------------------------------------------- which word: a model that knows, one that does not
def test_which_word_is_right_for_a_model_that_knows_the_text_and_chance_for_one_that_does_not(work, tmp_path):
    """An order-6 count model of the very plays the items come from has read every sentence: it
    picks the true word nearly always. The bigram of the shuffled plays knows only how often
    each character comes, which the four candidates of one length and frequency barely tell
    apart: chance. Choosing the most common candidate is chance too (about equally common)."""
    text = work.period.read_text(encoding="utf-8")
    assert main(["train", "--data", str(work.period), "--out", str(tmp_path / "knows"), "--arch", "ngram",
                 "--set", "order=6", "--set", "sample_tokens=0", "--no-progress"]) == 0
    docs = [text]
    items = metrics.word_items(docs, 200, seed=0)
    counts = metrics.word_counts(docs)
    knows = load(tmp_path / "knows")
    r = metrics.word_accuracy(knows.model, knows.tokenizer, items, counts)
    assert r["n"] == 200 and r["skipped"] == 0 and r["accuracy"] > 0.8, r
    blind = load(work.runs["shuffled"])
    r = metrics.word_accuracy(blind.model, blind.tokenizer, items, counts)
    assert r["ci_low"] <= 0.25 <= r["ci_high"], r
    assert 0.15 <= r["frequency_baseline"] <= 0.35, r


# ---------------------------------------------------------------- the command and the page
def test_eval_era_json_gives_every_figure(work, capsys):
    run = work.runs["gpt"]
    capsys.readouterr()
    assert main(["eval", str(run), "--era", "--json", "--samples", "3", "--text", str(work.period),
                 "--max-batches", "6", "--before", "1850"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((run / "era.json").read_text(encoding="utf-8"))
    assert report["format"] == "vintagelm-era" and report["before"] == 1850 and report["step"] == 60
    for where, x in walk_floats(report):
        assert math.isfinite(x), where
    s = report["surprise"]
    for key in ("period", "modern", "text"):
        assert finite(s[key]["bits_per_byte"]) and s[key]["bits_per_byte"] > 0 and s[key]["bytes"] > 0
    # the plays have no digits, quotes, % or £: the control text loses those, counted
    assert 0 < s["modern"]["unknown_share"] < 0.05 and "%" in s["modern"]["unknown_examples"]
    assert finite(s["gap"]) and finite(s["text_gap"])
    smp = report["samples"]
    assert smp["n"] == 3 and 0 <= smp["share"] <= 1 and smp["paragraphs"] >= 3
    for key, chance in (("pairs", 0.5), ("cloze", 0.25), ("words", 0.25)):
        r = report[key]
        assert r["n"] > 0 and r["chance"] == chance, key
        assert 0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1, key
        assert math.isclose(r["centred"], (r["accuracy"] - chance) / (1 - chance)), key
    f = report["filter"]
    assert f["before"] == 1850 and 0 <= f["precision"] <= 1 and 0 <= f["recall"] <= 1 and f["period"] > f["modern"]
    card = metrics.format_card(report)
    assert "cut-off 1850" in card and "GAP modern - period" in card and "choosing the most common word" in card
    # an era.json of version 2 had who speaks next in place of which word: the report card shows it as retired
    old = {k: v for k, v in report.items() if k != "words"} | {"speakers": report["words"]}
    assert "who speaks next (a score retired in version 3" in metrics.format_card(old)

    assert main(["eval", str(run), "--json", "--max-batches", "2"]) == 0  # without --era: as before
    assert set(json.loads(capsys.readouterr().out)) >= {"loss", "perplexity", "bits_per_byte"}


def test_the_default_cut_off_is_the_one_the_data_was_prepared_with():
    assert metrics.default_before(types.SimpleNamespace(meta={"period_filter": None})) == 1900
    assert metrics.default_before(types.SimpleNamespace(meta={"period_filter": {"before": 1700}})) == 1700


def test_lab_era_page(work, tmp_path):
    import argparse
    from html import escape

    import matplotlib.image as mpimg

    from vintagelm.lab import era
    from vintagelm.lab.page import LabPage

    parser = argparse.ArgumentParser()
    era.add_arguments(parser)
    args = parser.parse_args([str(work.runs["gpt"])])
    args.quick, args.seed, args.no_progress = True, 0, True
    page = LabPage(tmp_path / "lab", "era", era.TITLE)
    era.run(args, page)
    index = page.write()
    results = json.loads((tmp_path / "lab" / "results.json").read_text(encoding="utf-8"))
    for where, x in walk_floats(results):
        assert math.isfinite(x), where
    assert results["era"]["pairs"]["n"] >= 200 and results["era"]["cloze"]["n"] == era.QUICK["n_cloze"]
    for name in ("surprise", "choices", "filter"):
        assert mpimg.imread(tmp_path / "lab" / f"{name}.png").var() > 1e-3, name
    html = index.read_text(encoding="utf-8")
    assert len(page.sentences) >= 3 and all(escape(s) in html for s in page.sentences)
    assert f"{results['era']['surprise']['gap']:+.3f}" in html


def test_a_long_text_is_scored_on_its_first_bytes_and_says_how_much(work, monkeypatch):
    """Fuzz K8: `vintage eval --era --text huge.txt` scored all 22 MB with no word of how long it
    would take. Each text's bits per byte now come from its first MAX_SURPRISE_BYTES (unless
    --max-batches says otherwise), and the log says how many batches that is, and of what."""
    ckpt = load(work.runs["gpt"])
    text = work.period.read_text(encoding="utf-8")
    monkeypatch.setattr(metrics, "MAX_SURPRISE_BYTES", 5000)
    said = []
    capped = metrics.text_surprise(ckpt.model, ckpt.tokenizer, text, "plays", log=said.append)
    T = ckpt.model.config.block_size
    assert capped["capped"] and capped["of_bytes"] == len(text.encode("utf-8"))
    assert 5000 - 4 * T < capped["bytes"] <= 5000  # whole windows up to the cap (a character: 1-4 bytes)
    windows = capped["tokens"] // T  # every window is whole
    assert said == [f"era: plays: {-(-windows // 16)} batch(es) of 16 windows (its first 5,000 of "
                    f"{capped['of_bytes']:,} bytes; --max-batches to choose)"]
    chosen = metrics.text_surprise(ckpt.model, ckpt.tokenizer, text, "plays", max_batches=6)
    assert not chosen["capped"] and chosen["tokens"] == 6 * 16 * T and chosen["bytes"] > 5000


@pytest.mark.parametrize("samples", ["1001", "100000000000"])
def test_samples_has_an_upper_bound(work, capsys, samples):
    """Fuzz K8: --samples 100000000000 was accepted and ran until Ctrl-C."""
    assert main(["eval", str(work.runs["gpt"]), "--era", "--samples", samples]) == 2
    assert f"--samples must be 0 to 1000 (each is 200 sampled tokens), got {samples}" in capsys.readouterr().err
