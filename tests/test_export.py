"""`vintage export`, checked with the software people run exported models in, which nobody here
wrote: transformers loads the hf folder with AutoModelForCausalLM/AutoTokenizer, llama.cpp
(through llama-cpp-python) runs the GGUF file, and the gguf package's own reader reads its keys.

Runs: GPT-2-shaped, one per tokenizer kind (char; byte-level BPE with the GPT-2 split; BPE with
the GPT-4 split, fine-tuned for chat), and Llama-shaped (RMSNorm, RoPE, SwiGLU): char with grouped
KV heads and biases, BPE with one KV head and a tied head, and BPE with QK-norm (Qwen3 in
transformers and llama.cpp), fine-tuned for chat. Each is a small GPT with random weights large
enough that every block moves the logits and a greedy continuation does not hang on a near tie.
The truths are our own forward pass, encoder and chat prompt. llama.cpp tests are skipped only
where llama_cpp is not importable (CI installs it).
Run: pytest -q tests/test_export.py
"""
import argparse
import hashlib
import json
import random

import numpy as np
import pytest

from test_tokenizers import CORPUS, EDGE_TEXTS
from vintagelm import GPT, BPETokenizer, CharTokenizer, GPTConfig
from vintagelm.checkpoint import save_checkpoint
from vintagelm.commands import export as export_command
from vintagelm.common import UserError
from vintagelm.optim import AdamW

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

BLOCK = 64
# text beyond CORPUS: multi-byte characters of 2, 3 and 4 bytes, so the char tokenizer's GGUF
# needs its byte merges, and scripts the BPE split patterns treat differently
EXTRA = "café naïve — «Ελληνικά» русский 漢字かな 한국어 🌹 e\u0301 it's I'LL 1234567 3.14\r\n\t  x\n\n\n"
PIECES = [  # what varied_texts strings are made of, beside words of the corpus
    "'s", "'T", "'ll", "'VE", "'re", "'d", "'M", "1", "12", "1234567", "3.14", "...", "?!", "—", "«", "»", "--",
    "\n", "\r\n", "  ", "\t", " \n ", "\n\n\n", "\u00a0", "\u3000", "   x", "café", "naïve", "Ελληνικά", "русский",
    "漢字", "한국어", "🌹", "👨‍👩‍👧", "e\u0301", "\u0915\u094d\u0937", "<|endoftext|>", "<|user|>", "<|end|>", "<|end",
    "|>", "<|", "<|unk|>", "",
]
LLAMA = {"norm_type": "rms", "pos": "rope", "activation": "swiglu", "bias": False, "tie_weights": False,
         "n_head": 4, "n_kv_head": 2}  # the spec's Llama-shaped model, 4 heads of 8 sharing 2 KV heads
RUNS = {  # name -> (tokenizer maker, fine-tuned for chat, GPTConfig switches, architecture exported)
    "char": (lambda: CharTokenizer.train(CORPUS + EXTRA + "<|>"), False, {}, "gpt2"),
    "bpe-gpt2": (lambda: BPETokenizer.train(CORPUS + EXTRA, vocab_size=420, pattern="gpt2"), False, {}, "gpt2"),
    "bpe-gpt4": (lambda: BPETokenizer.train(CORPUS + EXTRA, vocab_size=420, pattern="gpt4"), True, {}, "gpt2"),
    "llama-char": (lambda: CharTokenizer.train(CORPUS + EXTRA + "<|>"), False, {**LLAMA, "bias": True}, "llama"),
    "llama-bpe-tied": (lambda: BPETokenizer.train(CORPUS + EXTRA, vocab_size=420, pattern="gpt2"), False,
                       {**LLAMA, "n_kv_head": 1, "tie_weights": True}, "llama"),
    "qwen3-bpe": (lambda: BPETokenizer.train(CORPUS + EXTRA, vocab_size=420, pattern="gpt4"), True,
                  {**LLAMA, "qk_norm": True}, "qwen3"),
}
HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
GAINS = ("ln_1.weight", "ln_2.weight", "ln_f.weight", "q_norm.weight", "k_norm.weight")


def vintage_export(*argv):
    """`vintage export ARGV`, through the command module's own parser and run()."""
    parser = argparse.ArgumentParser(prog="vintage export")
    export_command.add_arguments(parser)
    return export_command.run(parser.parse_args([str(a) for a in argv]))


def make_run(folder, tok, chat, seed=0, **config):
    shape = {"block_size": BLOCK, "n_layer": 2, "n_head": 2, "n_embd": 32, **config}
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **shape), seed=seed, backend="reference")
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():  # weights that matter: every block changes the logits
        if p.ndim == 2:
            p[...] = rng.normal(0.0, 0.3, p.shape)
        else:  # norm gains around 1, biases around 0
            p[...] = (1.0 if name.endswith(GAINS) else 0.0) + rng.normal(0.0, 0.1, p.shape)
    train_state = {"train_config": {"data": "chat:builtin" if chat else "builtin:shakespeare"}}
    save_checkpoint(folder, 7, model, AdamW(model.params, lr=0.0), train_state, tokenizer=tok)
    return model


class Run:
    """A saved run, its model and tokenizer, and its exports, made once each on demand."""

    def __init__(self, name, folder):
        make_tokenizer, self.chat, config, self.arch = RUNS[name]
        self.name, self.folder, self.tok = name, folder, make_tokenizer()
        self.model = make_run(folder / "run", self.tok, self.chat, seed=len(name), **config)
        self.exports = {}

    def export(self, fmt, dtype="f32"):
        if (fmt, dtype) not in self.exports:
            out = self.folder / (f"{dtype}.gguf" if fmt == "gguf" else f"hf-{dtype}")
            assert vintage_export(self.folder / "run", "--format", fmt, "--out", out, "--dtype", dtype) == 0
            self.exports[fmt, dtype] = out
        return self.exports[fmt, dtype]

    def logits(self, ids):
        logits, _ = self.model.forward(np.asarray([ids], dtype=np.int64))
        return logits[0]  # (T, V)

    def texts(self, n=200, seed=0):
        """n varied strings this tokenizer can encode: corpus slices, edge texts and random
        mixtures of PIECES, words, specials and stray characters (for a char tokenizer, only
        of characters it knows)."""
        rng = random.Random(seed)
        words = CORPUS.split()
        chars = getattr(self.tok, "chars", None)
        texts = [t for t in EDGE_TEXTS if self.encodable(t)][:20]
        while len(texts) < n:
            parts = []
            for _ in range(rng.randint(1, 12)):
                kind = rng.random()
                if kind < 0.4:
                    parts.append(rng.choice(PIECES))
                elif kind < 0.7:
                    parts.append(rng.choice(words) + rng.choice(["", " ", ",", ".\n", "'s", "  "]))
                elif kind < 0.85:
                    start = rng.randrange(len(CORPUS) - 200)
                    parts.append(CORPUS[start:start + rng.randint(1, 200)])
                else:
                    parts.append("".join(rng.choice(chars) if chars else chr(rng.randrange(0x20, 0x3000))
                                         for _ in range(rng.randint(1, 8))))
            text = "".join(parts)
            if self.encodable(text):
                texts.append(text)
        return texts

    def encodable(self, text):
        try:
            self.tok.encode(text, allowed_special="all")
        except UserError:
            return False
        return True


@pytest.fixture(scope="module", params=list(RUNS))
def run(request, tmp_path_factory):
    return Run(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    name = next(name for name, (_, chat, _, _) in RUNS.items() if chat)
    return Run(name, tmp_path_factory.mktemp("chat"))


def prompt_ids(run):
    return run.tok.encode("<|endoftext|>" + CORPUS[:12], allowed_special="all")


# ---- transformers ----


def hf_model(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()  # (T, V)


def test_hf_folder_gives_our_logits(run):
    folder = run.export("hf")
    ids = run.tok.encode(run.texts(1, seed=5)[0] + CORPUS[:200], allowed_special="all")[:BLOCK]
    ours = run.logits(ids)
    model = hf_model(folder)
    assert type(model).__name__ == HF_CLASSES[run.arch]
    rel = np.abs(hf_logits(model, ids) - ours).max() / np.abs(ours).max()
    print(f"{run.name}: hf f32 max relative logit diff {rel:.2e} (logits up to {np.abs(ours).max():.1f})")
    assert rel < 1e-5  # float32 rounding, two orders of summation


def test_hf_folder_f16_weights_give_our_logits_within_f16(run):
    folder = run.export("hf", "f16")
    from safetensors.numpy import load_file

    assert {t.dtype for t in load_file(folder / "model.safetensors").values()} == {np.dtype(np.float16)}
    ids = prompt_ids(run)
    ours = run.logits(ids)
    rel = np.abs(hf_logits(hf_model(folder), ids) - ours).max() / np.abs(ours).max()
    print(f"{run.name}: hf f16 max relative logit diff {rel:.2e}")
    assert rel < 2e-2


def test_hf_tokenizer_gives_our_ids_for_every_text(run):
    hf = transformers.AutoTokenizer.from_pretrained(run.export("hf"))
    assert not isinstance(hf, transformers.GPT2Tokenizer)  # which rebuilds GPT-2's pipeline, losing ours
    texts = run.texts()
    agree = sum(hf(t)["input_ids"] == run.tok.encode(t, allowed_special="all") for t in texts)
    print(f"{run.name}: AutoTokenizer ids equal ours for {agree}/{len(texts)} texts")
    assert agree == len(texts)
    for text in texts[:50]:
        assert hf.decode(run.tok.encode(text, allowed_special="all")) == text


def test_hf_tokenizer_names_its_special_tokens(run):
    hf = transformers.AutoTokenizer.from_pretrained(run.export("hf"))
    eot = run.tok.special_tokens["<|endoftext|>"]
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (eot, eot, eot)
    assert hf.model_max_length == BLOCK
    generation = json.loads((run.export("hf") / "generation_config.json").read_text())
    end = run.tok.special_tokens["<|end|>"]
    assert generation["eos_token_id"] == ([end, eot] if run.chat else eot)
    assert (hf.chat_template is not None) == run.chat


def test_hf_chat_template_renders_our_chat_prompt(chat_run):
    run = chat_run
    from vintagelm.chat.format import Message
    from vintagelm.chat.reply import ChatModel

    hf = transformers.AutoTokenizer.from_pretrained(run.export("hf"))
    for messages in CONVERSATIONS:
        ours, _, _ = ChatModel(run.model, run.tok, "t").chat_prompt([Message(**m) for m in messages], reserve=1)
        rendered = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert hf(rendered)["input_ids"] == ours


CONVERSATIONS = [
    [{"role": "user", "content": "Good morrow."}],
    [{"role": "system", "content": "Speak as Hamlet."}, {"role": "user", "content": "Who's there?"},
     {"role": "assistant", "content": "Nay, answer me."}, {"role": "user", "content": "Long live the king!"}],
]


# ---- the gguf package's reader ----

def read_gguf(path):
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items()}, {t.name: t for t in reader.tensors}


def test_gguf_hyperparameters_read_back(run):
    fields, _ = read_gguf(run.export("gguf"))
    cfg, arch = run.model.config, run.arch
    assert fields["general.architecture"] == arch
    expected = {"context_length": BLOCK, "embedding_length": 32, "block_count": 2, "attention.head_count": cfg.n_head}
    if arch == "gpt2":
        expected.update({"feed_forward_length": 128, "attention.layer_norm_epsilon": 1e-5})
    else:  # SwiGLU's default width 8 * ceil(32 / 3); RoPE over each head of 32 / 4 channels
        expected.update({"feed_forward_length": 88, "attention.head_count_kv": cfg.n_kv_head,
                         "attention.layer_norm_rms_epsilon": 1e-5, "rope.freq_base": 10000.0,
                         "rope.dimension_count": 8, "vocab_size": cfg.vocab_size})
    assert {key: fields[f"{arch}.{key}"] for key in expected} == pytest.approx(expected)


def test_gguf_tokenizer_keys_read_back(run):
    from vintagelm.tokenizers.pretokenize import GPT4_PATTERN

    fields, _ = read_gguf(run.export("gguf"))
    tok = run.tok
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == ("dbrx" if getattr(tok, "pattern", None) == GPT4_PATTERN else "gpt-2")
    assert len(fields["tokenizer.ggml.tokens"]) == run.model.config.vocab_size
    specials = list(tok.special_tokens)
    assert fields["tokenizer.ggml.tokens"][tok.n_ordinary:] == specials
    assert fields["tokenizer.ggml.token_type"][tok.n_ordinary:] == [gguf.TokenType.CONTROL] * len(specials)
    assert set(fields["tokenizer.ggml.token_type"][:tok.n_ordinary]) == {gguf.TokenType.NORMAL}
    if tok.type_name == "bpe":
        assert len(fields["tokenizer.ggml.merges"]) == len(tok.merges)
    eot, end = tok.special_tokens["<|endoftext|>"], tok.special_tokens["<|end|>"]
    assert fields["tokenizer.ggml.bos_token_id"] == eot
    assert fields["tokenizer.ggml.eos_token_id"] == (end if run.chat else eot)
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert ("tokenizer.chat_template" in fields) == run.chat


def interleaved_pairs(w, n_head):
    """w (n_head * D, C), each head's rows paired (i, i + D/2) as HF's rotate_half pairs them ->
    the rows reordered so pair i is rows (2i, 2i + 1), the pairing of llama.cpp's `llama` RoPE:
    interleaved row j of a head is half-split row j // 2 + (j % 2) * D / 2."""
    D = w.shape[0] // n_head
    return w[[h * D + j // 2 + (j % 2) * (D // 2) for h in range(n_head) for j in range(D)]]


def test_gguf_tensors_are_our_weights_under_llama_cpp_names(run):
    _, tensors = read_gguf(run.export("gguf"))
    cfg, params = run.model.config, run.model.params
    data = {name: np.asarray(t.data) for name, t in tensors.items()}  # (out, in): GGUF's dims reversed
    # every tensor is one llama.cpp's architecture knows
    known = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH[run.arch.upper()]]}
    assert {name.replace("blk.0.", "blk.{bid}.").replace("blk.1.", "blk.{bid}.").rsplit(".", 1)[0]
            for name in tensors} <= known
    assert list(tensors["token_embd.weight"].shape) == [32, cfg.vocab_size]
    np.testing.assert_array_equal(data["token_embd.weight"], params["wte.weight"])
    assert ("output.weight" in data) == (not cfg.tie_weights)  # llama.cpp ties a head it does not find
    c_attn = params["h.1.attn.c_attn.weight"]
    if run.arch == "gpt2":
        assert len(tensors) == len(params)
        assert list(tensors["blk.1.attn_qkv.weight"].shape) == [32, 96]
        np.testing.assert_array_equal(data["blk.1.attn_qkv.weight"], c_attn.T)
        return
    # c_attn [q | k | v] is three tensors (and its bias, when there is one, three more)
    assert len(tensors) == len(params) + 2 * cfg.n_layer * (2 if cfg.bias else 1)
    H, Hkv, D = cfg.n_head, cfg.n_kv_head, 8
    q, k, v = c_attn[:, :H * D].T, c_attn[:, H * D:(H + Hkv) * D].T, c_attn[:, (H + Hkv) * D:].T
    if run.arch == "llama":  # NORMAL-mode RoPE: q and k rows in interleaved pairs
        q, k = interleaved_pairs(q, H), interleaved_pairs(k, Hkv)
    else:
        assert list(tensors["blk.1.attn_q_norm.weight"].shape) == [D]
    for name, expected in (("attn_q", q), ("attn_k", k), ("attn_v", v)):
        np.testing.assert_array_equal(data[f"blk.1.{name}.weight"], expected)
    np.testing.assert_array_equal(data["blk.0.ffn_gate.weight"], params["h.0.mlp.c_gate.weight"].T)


def test_gguf_f16_stores_matrices_in_half_and_vectors_in_single_precision(run):
    fields, tensors = read_gguf(run.export("gguf", "f16"))
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    for name, t in tensors.items():
        expected = gguf.GGMLQuantizationType.F16 if len(t.shape) > 1 else gguf.GGMLQuantizationType.F32
        assert t.tensor_type == expected, name


# ---- llama.cpp ----

def llama_cpp_module():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (a test extra)")


def llama(path, **kw):
    return llama_cpp_module().Llama(model_path=str(path), n_ctx=BLOCK, n_threads=2, verbose=False, **kw)


def llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)])  # (T, V)


def test_llama_cpp_tokenizes_every_text_as_we_do(run):
    llm = llama(run.export("gguf"), vocab_only=True)
    texts = run.texts()
    agree = sum(llm.tokenize(t.encode(), add_bos=False, special=True) == run.tok.encode(t, allowed_special="all")
                for t in texts)
    ordinary = sum(llm.tokenize(t.encode(), add_bos=False, special=False) == run.tok.encode_ordinary(t)
                   for t in texts)
    print(f"{run.name}: llama.cpp ids equal ours for {agree}/{len(texts)} texts (specials parsed), "
          f"{ordinary}/{len(texts)} (specials as text)")
    assert agree == ordinary == len(texts)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_llama_cpp_merges_a_chunk_that_is_a_token_as_we_do(tmp_path, pattern):
    # "abc" is a token (a + bc), but merging by rank gives ab + c first and no merge joins those:
    # a pre-tokenizer that takes a chunk found in the vocabulary whole (llama3's) would give "abc"
    tok = BPETokenizer([(97, 98), (98, 99), (97, 257)], pattern=pattern)
    make_run(tmp_path / "run", tok, chat=False)
    vintage_export(tmp_path / "run", "--format", "gguf", "--out", tmp_path / "m.gguf")
    llm = llama(tmp_path / "m.gguf", vocab_only=True)
    for text in ["abc", "xabc abc", "bcabc"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text)
    assert tok.encode("abc") == [256, 99]


def test_llama_cpp_with_a_char_tokenizer_that_reserves_unk(tmp_path):
    tok = CharTokenizer.train(CORPUS + EXTRA + "<|>", unknown="reserve")
    make_run(tmp_path / "run", tok, chat=False)
    vintage_export(tmp_path / "run", "--format", "gguf", "--out", tmp_path / "m.gguf")
    llm = llama(tmp_path / "m.gguf", vocab_only=True)
    for text in [CORPUS[:300] + EXTRA, "<|unk|>", "café<|end|>—<|unk|>"]:  # <|unk|> typed is text, in both
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text, allowed_special="all")
    # the one difference (gguf_vocab.py): a character the model never saw is <|unk|> for us, dropped by llama.cpp
    ours = tok.encode("the ∑ king", allowed_special="all")
    assert tok.unk_id in ours
    assert llm.tokenize("the ∑ king".encode(), add_bos=False, special=True) == [i for i in ours if i != tok.unk_id]


@pytest.mark.parametrize("dtype, cache, tolerance", [("f32", "f32", 1e-3), ("f32", "f16", 2e-3), ("f16", "f16", 2e-2)])
def test_llama_cpp_logits_match_ours(run, dtype, cache, tolerance):
    """llama.cpp keeps its KV cache in f16 unless told otherwise, which alone costs up to 1e-3
    of the logits' scale; with an f32 cache, what remains (~3e-4) is its GELU, looked up in a
    table of f16 values (our logits with GELU's input and output rounded to f16 match llama.cpp's
    to 2e-6). An f32 file is held to 1e-3 with an f32 cache, 2e-3 with the default. Llama-shaped
    runs have no GELU: llama.cpp's RoPE (NORMAL mode for llama, with q and k rows permuted; NEOX
    for qwen3) and SwiGLU agree with ours to float32 rounding."""
    llama_cpp = llama_cpp_module()
    kv = {"f32": llama_cpp.GGML_TYPE_F32, "f16": llama_cpp.GGML_TYPE_F16}[cache]
    llm = llama(run.export("gguf", dtype), logits_all=True, type_k=kv, type_v=kv)
    ids = prompt_ids(run)
    ours = run.logits(ids)
    rel = np.abs(llama_logits(llm, ids) - ours).max() / np.abs(ours).max()
    print(f"{run.name}: llama.cpp {dtype} file, {cache} KV cache: max relative logit diff {rel:.2e}")
    assert rel < tolerance


def test_llama_cpp_greedy_continuation_is_ours(run):
    """In f32: an f32 file and an f32 KV cache. (llama.cpp's default f16 cache moves logits by up
    to 1e-3 of their scale, enough to flip a step whose two best tokens are that close: the
    llama-char run has one, 8.7e-4 apart, at step 32.)"""
    from vintagelm.generate import generate

    f32 = llama_cpp_module().GGML_TYPE_F32
    llm = llama(run.export("gguf"), logits_all=True, type_k=f32, type_v=f32)
    ids = prompt_ids(run)
    ours = list(generate(run.model, ids, 50, np.random.default_rng(0), temperature=0.0))
    llm.reset()
    llm.eval(ids)
    theirs = []
    for _ in range(50):
        theirs.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([theirs[-1]])
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
    print(f"{run.name}: greedy continuations agree on {same}/50 tokens")
    assert theirs == ours


def test_llama_cpp_python_renders_our_chat_prompt(chat_run):
    run = chat_run
    llm = llama(run.export("gguf"), vocab_only=True)
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from vintagelm.chat.format import Message
    from vintagelm.chat.reply import ChatModel

    template = llm.metadata["tokenizer.chat_template"]
    formatter = Jinja2ChatFormatter(template, eos_token="<|end|>", bos_token="<|endoftext|>")
    for messages in CONVERSATIONS:
        ours, _, _ = ChatModel(run.model, run.tok, "t").chat_prompt([Message(**m) for m in messages], reserve=1)
        prompt = formatter(messages=messages).prompt
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ours


# ---- what is refused, and what is never lost ----

def digest(path):
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()} if path.is_dir() else path.read_bytes()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    make_run(folder, CharTokenizer.train(CORPUS), chat=False)
    return folder


def test_a_missing_run_is_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="not found"):
        vintage_export(tmp_path / "nothing", "--format", "gguf", "--out", tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_says_a_refusal_in_one_line(tmp_path, monkeypatch, capsys):
    from vintagelm import cli

    monkeypatch.setitem(cli.COMMANDS, "export", "export")  # (the lead wires it into cli.COMMANDS)
    assert cli.main(["export", str(tmp_path / "nothing"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vintage export: error: ") and err.count("\n") == 1


def test_a_museum_run_is_refused(tmp_path):
    from vintagelm.museum.mlp import MLPLM, MLPConfig

    tok = CharTokenizer.train(CORPUS)
    model = MLPLM(MLPConfig(vocab_size=tok.vocab_size, block_size=8, n_embd=4, hidden=8))
    save_checkpoint(tmp_path / "run", 1, model, AdamW(model.params, lr=0.0), {}, tokenizer=tok)
    for fmt in ("hf", "gguf"):
        with pytest.raises(UserError, match="museum"):
            vintage_export(tmp_path / "run", "--format", fmt, "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config, message", [
    ({"norm": "post"}, "norm='post' \\(a GPT-2-shaped model has 'pre'\\)"),
    ({"pos": "sinusoidal"}, "pos='sinusoidal' \\(a GPT-2-shaped model has 'learned'\\)"),
    ({"norm_type": "rms"}, "norm_type='rms' \\(a GPT-2-shaped model has 'layer'\\)"),
    ({"n_kv_head": 1}, "n_kv_head=1 \\(a GPT-2-shaped model has 2\\)"),
    ({**LLAMA, "norm_type": "layer"}, "norm_type='layer' \\(a Llama-shaped model has 'rms'\\)"),
    ({**LLAMA, "pos": "none"}, "pos='none' \\(a Llama-shaped model has 'rope'\\)"),
    ({**LLAMA, "activation": "gelu"}, "activation='gelu' \\(a Llama-shaped model has 'swiglu'\\)"),
    ({**LLAMA, "norm": "post"}, "norm='post' \\(a Llama-shaped model has 'pre'\\)"),
    ({**LLAMA, "qk_norm": True, "bias": True}, "qk_norm=True and bias=True"),
])
@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_models_the_clients_compute_differently_are_refused(tmp_path, config, message, fmt):
    make_run(tmp_path / "run", CharTokenizer.train(CORPUS), chat=False, **config)
    with pytest.raises(UserError, match=message) as refusal:
        vintage_export(tmp_path / "run", "--format", fmt, "--out", tmp_path / "out")
    assert "\n" not in str(refusal.value)
    assert not (tmp_path / "out").exists()


def test_a_relu_gpt2_is_refused_for_gguf_only(tmp_path):
    make_run(tmp_path / "run", CharTokenizer.train(CORPUS), chat=False, activation="relu")
    with pytest.raises(UserError, match="relu, and llama.cpp's gpt2 graph applies gelu"):
        vintage_export(tmp_path / "run", "--format", "gguf", "--out", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
    assert vintage_export(tmp_path / "run", "--format", "hf", "--out", tmp_path / "hf") == 0  # GPT-2's relu


def test_a_bpe_split_llama_cpp_does_not_know_is_refused_for_gguf(tmp_path):
    tok = BPETokenizer.train(CORPUS, vocab_size=300, pattern=r"\w+|\s+|[^\w\s]+")
    make_run(tmp_path / "run", tok, chat=False)
    with pytest.raises(UserError, match="--pattern gpt2 or gpt4"):
        vintage_export(tmp_path / "run", "--format", "gguf", "--out", tmp_path / "m.gguf")
    assert vintage_export(tmp_path / "run", "--format", "hf", "--out", tmp_path / "hf") == 0  # HF runs any regex


def test_a_folder_of_the_users_is_never_written_into(small_run, tmp_path):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    (users / "config.json").write_text("{}")
    before = digest(users)
    with pytest.raises(UserError, match="did not write"):
        vintage_export(small_run, "--format", "hf", "--out", users)
    assert digest(users) == before


def test_a_file_of_the_users_is_never_replaced_by_a_gguf(small_run, tmp_path):
    users = tmp_path / "model.gguf"
    users.write_bytes(b"GGUF but not ours")
    with pytest.raises(UserError, match="did not write"):
        vintage_export(small_run, "--format", "gguf", "--out", users)
    assert users.read_bytes() == b"GGUF but not ours"
    with pytest.raises(UserError, match="is a folder"):
        vintage_export(small_run, "--format", "gguf", "--out", tmp_path)


def test_an_earlier_export_is_replaced_whole(small_run, tmp_path):
    for fmt, out in (("hf", tmp_path / "hf"), ("gguf", tmp_path / "m.gguf")):
        assert vintage_export(small_run, "--format", fmt, "--out", out, "--dtype", "f16") == 0
        first = digest(out)
        assert vintage_export(small_run, "--format", fmt, "--out", out) == 0
        assert digest(out) != first  # f32 now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m.gguf"]  # no temporaries left


def test_a_failed_export_leaves_the_earlier_one_untouched(small_run, tmp_path, monkeypatch):
    out = tmp_path / "m.gguf"
    vintage_export(small_run, "--format", "gguf", "--out", out)
    before = digest(out)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(UserError, match="No space left"):
        vintage_export(small_run, "--format", "gguf", "--out", out)
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
