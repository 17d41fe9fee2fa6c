"""Hugging Face `tokenizers` loads our exported tokenizer.json and gives identical ids.

HF is a test-only oracle (never imported by the package). HF always splits special tokens
out of the text, so its `encode` is compared with ours under allowed_special="all".
Run: pytest -q tests/test_tokenizer_hf.py
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_tokenizers import CORPUS, EDGE_TEXTS, SPECIALS, make_corpus
from vintagelm import BPETokenizer, CharTokenizer

hf_tokenizers = pytest.importorskip("tokenizers")

TEXTS = EDGE_TEXTS + [
    CORPUS,
    make_corpus(50, seed=9),
    "I'll've DON'T they're WE'VE it's o'er 'tis",
    "Price: $12,345.67 on 2024-01-31 at 10:45pm; call 555-0100 or +44 20 7946 0958!!!",
    "def f(x):\n    return x**2  # square\n\n\tif x != 0 {\r\n}",
    "...;;;!!!???---***",
    "   leading and trailing   ",
    "the king<|endoftext|>the queen<|user|>hi<|end|>",
    "<|endoftext|><|endoftext|>",
    "<|endoftext|", "<|user|> <|assistant|>\n<|system|>",
    "Ελληνικά, русский, עברית, العربية, हिन्दी, ไทย",
]


def hf_load(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.export_hf(path)
    return hf_tokenizers.Tokenizer.from_file(str(path))


@pytest.fixture(scope="module", params=["gpt2", "gpt4"])
def bpe_pair(request, tmp_path_factory):
    tok = BPETokenizer.train(CORPUS, vocab_size=420, special_tokens=SPECIALS, pattern=request.param)
    return tok, hf_load(tok, tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("text", TEXTS)
def test_bpe_ids_identical_to_hf(bpe_pair, text):
    tok, hf = bpe_pair
    ours = tok.encode(text, allowed_special="all")
    assert hf.encode(text).ids == ours
    assert hf.decode(ours, skip_special_tokens=False) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec="utf-8", categories=["L", "M", "N", "P", "S", "Zs", "Cc"]), max_size=80))
def test_bpe_ids_identical_to_hf_on_generated_text(bpe_pair, text):
    tok, hf = bpe_pair
    assert hf.encode(text).ids == tok.encode(text, allowed_special="all")


def test_bpe_ordinary_encoding_matches_hf_with_specials_as_text(bpe_pair):
    tok, hf = bpe_pair
    if not hasattr(hf, "encode_special_tokens"):
        pytest.skip("this tokenizers version cannot treat special tokens as text")
    hf.encode_special_tokens = True
    try:
        text = "the king<|endoftext|>the queen<|user|>"
        assert hf.encode(text).ids == tok.encode_ordinary(text)
    finally:
        hf.encode_special_tokens = False


def test_bpe_with_duplicate_route_merges_matches_hf(tmp_path):
    # two merges that both spell "abc" share one id here and in HF
    tok = BPETokenizer([(98, 99), (97, 256), (97, 98), (258, 99)], special_tokens=[])
    hf = hf_load(tok, tmp_path)
    for text in ["abc", "abd abc", "ababcbc", "cab abcabc"]:
        assert hf.encode(text).ids == tok.encode(text)


@pytest.mark.parametrize("unknown", ["error", "reserve"])
def test_char_ids_identical_to_hf(tmp_path, unknown):
    tok = CharTokenizer.train(CORPUS, unknown=unknown, special_tokens=SPECIALS)
    hf = hf_load(tok, tmp_path)
    known = "".join(c for c in "the king, thou art 東京 🌹\r\n\tExeunt." if c in tok.chars)
    texts = [known, CORPUS[:3000], known + "<|endoftext|>" + known + "<|end|>"]
    if unknown == "reserve":
        texts += ["zebra ∑ 🎭 unseen", "<|unk|>"]  # unseen characters (and the unk's own text)
    for text in texts:
        ours = tok.encode(text, allowed_special="all")
        assert hf.encode(text).ids == ours
        assert hf.decode(ours, skip_special_tokens=False) == tok.decode(ours)


@pytest.mark.parametrize("unknown", ["error", "reserve"])
def test_auto_tokenizer_reads_an_export_beside_save_hf_as_ours(tmp_path, unknown):
    # the folder a user makes with save_hf and export_hf: transformers used to pick GPT2Tokenizer
    # for it (from config.json's model_type), which dropped every space of a char tokenizer
    transformers = pytest.importorskip("transformers")
    from vintagelm import GPT, GPTConfig

    tok = CharTokenizer.train(CORPUS, unknown=unknown, special_tokens=SPECIALS)
    GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=4)).save_hf(tmp_path)
    tok.export_hf(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "the king, thou art\r\n\tExeunt.<|endoftext|>"
    assert hf(text)["input_ids"] == tok.encode(text, allowed_special="all")
    assert hf.decode(tok.encode(text, allowed_special="all")) == text
    eot = tok.special_tokens["<|endoftext|>"]
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (eot, eot, eot)
    assert hf.unk_token == ("<|unk|>" if unknown == "reserve" else None)


def test_export_hf_to_a_file_writes_that_file_alone(tmp_path):
    tok = CharTokenizer.train(CORPUS, special_tokens=SPECIALS)
    tok.export_hf(tmp_path / "tok.json")
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]


def test_tokenizer_config_carries_the_chat_template_and_context(tmp_path):
    import json

    tok = BPETokenizer.train(CORPUS, vocab_size=300, special_tokens=SPECIALS)
    tok.export_hf(tmp_path, chat_template="{{ messages }}", model_max_length=256)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["chat_template"], config["model_max_length"]) == ("{{ messages }}", 256)
    assert config["add_bos_token"] is config["add_eos_token"] is config["clean_up_tokenization_spaces"] is False
