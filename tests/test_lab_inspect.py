"""The lab's inspection experiments: kv-cache (--quick), and attention-maps and embeddings on a
tiny run trained here. Each page must be real (PNGs not blank, every number finite, the
sentences in index.html), its qualitative facts must hold in the measured data, and the
numbers it extracts are checked against an independent computation: the attention weights
against the model's own forward pass, the PCA against np.linalg.eigh of the covariance."""
import html
import json
import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from vintagelm import cli

TEXT_LINES = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer",
              "The slings and arrows of outrageous fortune,", "Or to take arms against a sea of troubles",
              "And by opposing end them. To die: to sleep;", "No more; and by a sleep to say we end"]
PROMPT = "To be, or not to be: that is the question."


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """One BLAS thread: on a shared 2-core machine threaded BLAS can be 20x slower on these tiny
    matrices; the results do not change (restored after this file)."""
    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VINTAGELM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny char-level run (2 layers x 32 wide, block 32, 60 steps) on a small text."""
    root = tmp_path_factory.mktemp("inspect")
    rng = np.random.default_rng(0)
    text = root / "small.txt"
    text.write_text("\n".join(TEXT_LINES[i] for i in rng.integers(0, len(TEXT_LINES), 400)) + "\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VINTAGELM_CACHE", str(root / "cache"))
        assert cli.main(["train", "--data", str(text), "--max-iters", "60", "--set", "n_layer=2", "--set", "n_embd=32",
                         "--set", "n_head=2", "--set", "block_size=32", "--set", "sample_tokens=0", "--no-progress",
                         "--out", str(root / "run")]) == 0
    return root / "run"


def run_lab(argv, capsys):
    """vintage lab ARGV -> the sentences it printed (all lines before 'wrote ...')."""
    assert cli.main(["lab", *argv, "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("wrote ")
    return lines[:-1]


def check_page(out, figures, sentences, nullable=()):
    """Every figure is a PNG that is not blank, every number in results.json is finite (None
    only under the keys in `nullable`), and index.html holds every sentence -> results."""
    from matplotlib.image import imread

    for name in figures:
        pixels = imread(out / f"{name}.png")
        assert pixels.std() > 0.02, f"{name}.png looks blank"
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    check_numbers(results, "results", nullable)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert len(sentences) >= 2
    for sentence in sentences:
        assert html.escape(sentence, quote=True) in page
    return results


def check_numbers(value, where, nullable):
    if value is None:
        assert where.rsplit(".", 1)[-1] in nullable, f"{where} is None"
    elif isinstance(value, float):
        assert math.isfinite(value), f"{where} = {value}"
    elif isinstance(value, dict):
        for k, v in value.items():
            check_numbers(v, f"{where}.{k}", nullable)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_numbers(v, f"{where}[{i}]", nullable)


# ------------------------------------------------------------------------------------ kv-cache
def test_kv_cache_quick(tmp_path, cache_dir, capsys):
    out = tmp_path / "kv"
    sentences = run_lab(["kv-cache", "--quick", "--out", str(out)], capsys)
    r = check_page(out, ["time_per_token", "cache_bytes"], sentences)
    t, m = r["timing"], r["memory"]
    assert len(t["cache_ms"]) == len(t["no_cache_ms"]) == r["model"]["block_size"]
    assert t["cache_ms"][-1] < t["no_cache_ms"][-1], "the cache must be faster at the longest position"
    assert r["max_logit_difference"] < 1e-4  # both paths compute the same logits
    assert m["nbytes"] == m["formula_bytes"]
    # what NumPy allocated: the two arrays, plus a few hundred bytes of Python objects around them
    assert all(0 <= a - n < 4096 for a, n in zip(m["allocated_bytes"], m["nbytes"]))
    assert 0.98 < m["exponent"] < 1.02
    cfg = r["model"]
    assert m["model_cache_bytes"] == m["model_cache_formula_bytes"] == 2 * cfg["n_layer"] * cfg["block_size"] * cfg["n_embd"] * 4


# ------------------------------------------------------------------------------ attention-maps
def test_attention_maps_page(run_dir, tmp_path, cache_dir, capsys):
    out = tmp_path / "maps"
    sentences = run_lab(["attention-maps", str(run_dir), "--prompt", PROMPT, "--quick", "--out", str(out)], capsys)
    r = check_page(out, ["attention_maps", "head_numbers"], sentences)
    assert len(r["heads"]) == 2 and all(len(layer) == 2 for layer in r["heads"].values())
    T = len(r["tokens"])
    assert T == 32 and r["cut_tokens"] == len(PROMPT) - 32  # a char model of block 32 sees the last 32
    assert r["check_max_difference"] < 1e-5
    for layer in r["heads"].values():
        for n in layer.values():
            assert n["entropy_bits"][0] == 0.0 and n["distance"][0] == 0.0  # row 0 can only see itself
            assert all(0 <= e <= math.log2(t + 1) + 1e-9 for t, e in enumerate(n["entropy_bits"]))
            assert all(0 <= d <= t for t, d in enumerate(n["distance"]))
            assert 0 < n["entropy_share_of_uniform"] <= 1 + 1e-9


def test_attention_weights_are_the_models_own(run_dir):
    """The extracted weights are probabilities over the past only, and they are what the model's
    own (reference) forward computed: equal to its attention cache, and weights @ v gives the
    attention output it fed to c_proj."""
    from vintagelm.checkpoint import load_checkpoint
    from vintagelm.lab.trained_gpt import attention_weights
    from vintagelm.nn.attention import merge_heads

    ckpt = load_checkpoint(run_dir, with_optimizer=False, backend="reference")
    model, ids = ckpt.model.eval(), ckpt.tokenizer.encode(PROMPT)[:32]
    maps, gap = attention_weights(model, ids)
    model.forward(np.asarray([ids]), np.asarray([ids]))  # with targets the forward keeps its caches
    blocks = model._cache["blocks"]
    assert len(maps) == len(blocks) == 2 and gap < 1e-5
    for P, block in zip(maps, blocks):
        assert P.shape == (2, 32, 32)
        np.testing.assert_allclose(P.sum(axis=-1), 1.0, atol=1e-12)
        assert np.all(np.triu(P, k=1) == 0.0)  # nothing from the future
        own = block["attn"]
        own = getattr(own, "attn", own)  # today's block: the attention op's cache inside HeadsCache
        assert own.chunks == [(0, 32)]  # T = 32 fits one query block of the model's attention
        np.testing.assert_allclose(P, own.att[0][0], atol=1e-6)
        np.testing.assert_allclose(merge_heads(P[None] @ own.v), block["attn_proj"].x, atol=1e-5)


# ---------------------------------------------------------------------------------- embeddings
def test_embeddings_page(run_dir, tmp_path, cache_dir, capsys):
    out = tmp_path / "emb"
    sentences = run_lab(["embeddings", str(run_dir), "--quick", "--tokens", "a", "e", "T", "\\s", "\\n",
                         "--out", str(out)], capsys)
    r = check_page(out, ["pca", "variance"], sentences, nullable=("vowels", "case_pairs", "case_axis"))
    assert list(r["neighbours"]) == ["a", "e", "T", "␣", "\\n"]
    assert all(len(row) == 5 for row in r["neighbours"].values())
    for row in r["neighbours"].values():
        cosines = [x["cosine"] for x in row]
        assert cosines == sorted(cosines, reverse=True) and all(-1 - 1e-9 <= c <= 1 + 1e-9 for c in cosines)
    assert r["readings"]["vowels"]["vowels"] == ["a", "e", "i", "o", "u"]

    # the PCA against an independent computation on the checkpoint's own embeddings
    from vintagelm.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run_dir, with_optimizer=False)
    E = np.asarray(ckpt.model.params["wte.weight"][: ckpt.tokenizer.n_ordinary], dtype=np.float64)
    eigenvalues = np.linalg.eigvalsh(np.cov(E, rowvar=False))[::-1]
    np.testing.assert_allclose(r["pca"]["explained_share"], eigenvalues[:2] / eigenvalues.sum(), rtol=1e-6)
    assert r["tokens"] == E.shape[0] and len(r["pca"]["points"]) == E.shape[0]


def test_pca_against_eigh_of_the_covariance():
    """pca (an SVD of the centred rows) agrees with the eigen-decomposition of the covariance:
    orthonormal components, the same directions and eigenvalues, and each eigenvalue is the
    variance of the data projected on its component."""
    from vintagelm.lab.embeddings import pca

    rng = np.random.default_rng(3)
    X = rng.standard_normal((70, 12)) @ rng.standard_normal((12, 12)) + 5.0  # correlated, off-centre
    p = pca(X, 2)
    values, vectors = np.linalg.eigh(np.cov(X, rowvar=False))
    values, vectors = values[::-1], vectors[:, ::-1]  # largest first
    C = p["components"]  # (2, 12)
    np.testing.assert_allclose(C @ C.T, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(np.abs(C @ vectors[:, :2]), np.eye(2), atol=1e-8)  # same directions, up to sign
    np.testing.assert_allclose(p["variance"], values[:2], rtol=1e-10)
    np.testing.assert_allclose(np.var(p["projected"], axis=0, ddof=1), values[:2], rtol=1e-10)
    np.testing.assert_allclose(p["share"], values[:2] / np.trace(np.cov(X, rowvar=False)), rtol=1e-10)
    assert np.all(C[np.arange(2), np.argmax(np.abs(C), axis=1)] > 0)  # the sign rule


# ------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("experiment", ["attention-maps", "embeddings"])
def test_a_bad_run_path_is_one_line(experiment, tmp_path, cache_dir, capsys):
    code = cli.main(["lab", experiment, str(tmp_path / "no-such-run"), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "not found" in err and "Traceback" not in err


def test_a_token_that_is_not_one_token_is_one_line(run_dir, tmp_path, cache_dir, capsys):
    code = cli.main(["lab", "embeddings", str(run_dir), "--tokens", "ab", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'ab'" in err
