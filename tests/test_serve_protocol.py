"""`vintage serve` speaking the dialect of OpenAI's API that vLLM established and that
lm-evaluation-harness relies on: token-id prompts, batches answered one choice per prompt,
the tokenizer's endpoints at the root (/tokenizer_info, /tokenize, /detokenize), any number of
stop strings, logit_bias, a 400 for every field the server does not implement, HEAD wherever
GET works, and GET /v1/models/{id}.

Untrained models (random weights) served in this process, as in test_serve_hostile.py: a
character-level one and a byte-level BPE one. Expected values come from elsewhere: an id prompt
against the same prompt as text, a batch against each prompt asked alone, tokenize against the
tokenizer, log-probabilities against a direct forward pass, the chat template against the
prompt the server builds itself.

    pytest tests/test_serve_protocol.py -q
"""
import json

import httpx
import jinja2
import numpy as np
import pytest

from test_serve import assert_error
from test_serve_hostile import TEXT, live, random_chat_model
from vintagelm import GPT, GPTConfig
from vintagelm.chat.format import Message
from vintagelm.chat.reply import ChatModel, log_softmax
from vintagelm.serve.app import Settings, create_app
from vintagelm.tokenizers import BPETokenizer, CharTokenizer

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
PROMPT = "Good morrow, my lord."
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def char_chat():
    return random_chat_model()


@pytest.fixture(scope="module")
def server(char_chat):
    with live(char_chat) as running:
        yield running


@pytest.fixture(scope="module")
def bpe_chat():
    tok = BPETokenizer.train((TEXT + " café crème brûlée 🎉 ") * 10, vocab_size=300)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=16)
    return ChatModel(GPT(config, seed=1, dtype=np.float64, backend="reference"), tok, "random-bpe")


@pytest.fixture(scope="module")
def bpe_server(bpe_chat):
    with live(bpe_chat) as running:
        yield running


def ok(response):
    assert response.status_code == 200, response.text
    return response.json()


def direct_logprobs(chat, ids):
    """(T, V) log-probabilities of the next token after each prefix of ids, by one forward pass."""
    logits, _ = chat.model.forward(np.asarray([ids], dtype=np.int64))
    return log_softmax(np.asarray(logits[0], dtype=np.float64))


# ---------------------------------------------------------------- token-id prompts and batches
def test_a_token_id_prompt_is_answered_as_its_text_would_be(server, char_chat):
    ids = char_chat.tokenizer.encode(PROMPT)
    settings = {"max_tokens": 12, "temperature": 1.0, "seed": 3, "echo": True, "logprobs": 2}
    as_text = ok(server.post(COMPLETIONS, {"prompt": PROMPT, **settings}))
    as_ids = ok(server.post(COMPLETIONS, {"prompt": ids, **settings}))
    assert as_ids["choices"] == as_text["choices"] and as_ids["usage"] == as_text["usage"]
    assert as_ids["choices"][0]["text"].startswith(PROMPT)


@pytest.mark.parametrize("form", ["strings", "token ids"])
def test_a_batch_gets_one_choice_per_prompt_each_as_if_asked_alone(server, char_chat, form):
    prompts = ["Good morrow", "What news from the court?", "", "None, my liege"]
    sent = prompts if form == "strings" else [char_chat.tokenizer.encode(p) or [char_chat.tokenizer.eot_id]
                                              for p in prompts]
    settings = {"max_tokens": 6, "temperature": 1.0, "seed": 5, "logprobs": 1}
    batch = ok(server.post(COMPLETIONS, {"prompt": sent, **settings}))
    alone = [ok(server.post(COMPLETIONS, {"prompt": p, **settings})) for p in sent]
    assert [c["index"] for c in batch["choices"]] == list(range(len(prompts)))
    for choice, single in zip(batch["choices"], alone):
        assert {**choice, "index": 0} == single["choices"][0]
    for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert batch["usage"][field] == sum(a["usage"][field] for a in alone)


def test_a_streamed_batch_sends_each_choice_under_its_index(server):
    prompts = ["Good morrow", "What news?"]
    settings = {"max_tokens": 8, "temperature": 1.0, "seed": 2}
    texts, finished = {}, {}
    with httpx.stream("POST", server.url + COMPLETIONS, json={"prompt": prompts, "stream": True, **settings},
                      timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:") and line != "data: [DONE]":
                [choice] = json.loads(line[5:])["choices"]
                texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
                if choice["finish_reason"]:
                    finished[choice["index"]] = choice["finish_reason"]
    plain = ok(server.post(COMPLETIONS, {"prompt": prompts, **settings}))
    assert texts == {c["index"]: c["text"] for c in plain["choices"]}
    assert finished == {c["index"]: c["finish_reason"] for c in plain["choices"]}


@pytest.mark.parametrize("prompt, param", [
    ([], "prompt"),
    ([[]], "prompt"),
    ([1.5, 2], "prompt"),
    ([True], "prompt"),
    (["Good", [3, 4]], "prompt"),
    ([3, 10_000], "prompt"),
    ([[3, 4], [-1]], "prompt[1]"),
    (["Good", "the king " * 10], "prompt[1]"),  # longer than the context of 48
    ([[3] * 49], "prompt"),
], ids=["empty", "empty ids", "floats", "a bool", "mixed", "id out of range", "negative id in a batch",
        "too long in a batch", "ids longer than the context"])
def test_a_bad_prompt_is_a_400_naming_its_place(server, prompt, param):
    error = assert_error(server.post(COMPLETIONS, {"prompt": prompt, "max_tokens": 2}), 400)
    assert error["param"] == param, error


def test_scoring_by_generating_one_token_lists_every_prompt_token_and_the_one_generated(server, char_chat):
    """What lm-eval sends to score a text: echo, logprobs 1, max_tokens 1, temperature 0. The
    answer must list each prompt token and then the generated one, even when that token is the
    end of text (here forced with logit_bias), which ends the reply without text."""
    tok = char_chat.tokenizer
    ids = [tok.eot_id] + tok.encode(PROMPT)
    body = {"prompt": ids, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0,
            "logit_bias": {str(tok.eot_id): 100}}
    choice = ok(server.post(COMPLETIONS, body))["choices"][0]
    assert choice["text"] == EOT + PROMPT and choice["finish_reason"] == "stop"
    lp = choice["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 1 and lp["tokens"][-1] == EOT
    logp = direct_logprobs(char_chat, ids)  # (T, V)
    want = [logp[t - 1, ids[t]] for t in range(1, len(ids))] + [logp[-1, tok.eot_id]]  # the model's own, unbiased
    assert lp["token_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx(want, abs=1e-9)
    for t in range(1, len(ids)):  # the one alternative listed is the most likely token
        assert list(lp["top_logprobs"][t].values()) == pytest.approx([logp[t - 1].max()], abs=1e-9)


# ---------------------------------------------------------------- the tokenizer's endpoints
@pytest.mark.parametrize("which", ["char", "bpe"])
def test_tokenize_and_detokenize_are_the_tokenizers_own(server, bpe_server, char_chat, bpe_chat, which):
    live_server, chat = (server, char_chat) if which == "char" else (bpe_server, bpe_chat)
    text = "Good morrow" + EOT + " my lord." if which == "char" else "café crème" + EOT + " brûlée 🎉"
    want = chat.tokenizer.encode(text, allowed_special="all")
    for add in (True, False):
        answer = ok(live_server.post("/tokenize", {"prompt": text, "add_special_tokens": add}))
        assert answer == {"tokens": want, "count": len(want), "max_model_len": chat.block_size}
    assert ok(live_server.post("/tokenize", {"prompt": ""}))["tokens"] == []
    assert ok(live_server.post("/detokenize", {"tokens": want})) == {"prompt": text}


@pytest.mark.parametrize("path, body, param", [
    ("/tokenize", {"prompt": "Good \u2603"}, "prompt"),  # a character the char tokenizer never saw
    ("/tokenize", {"prompt": 5}, "prompt"),
    ("/tokenize", {"prompt": "Good", "add_special_tokens": "yes"}, "add_special_tokens"),
    ("/tokenize", {"messages": [{"role": "user", "content": "Good"}]}, "messages"),
    ("/detokenize", {"tokens": [1, 10_000]}, "tokens"),
    ("/detokenize", {"tokens": "Good"}, "tokens"),
    ("/detokenize", {"tokens": [1], "skip_special_tokens": True}, "skip_special_tokens"),
])
def test_a_bad_tokenizer_request_is_a_400_naming_the_field(server, path, body, param):
    error = assert_error(server.post(path, body), 400)
    assert error["param"] == param, error


def test_tokenizer_info_names_end_of_text_and_carries_the_chat_template_the_server_renders(server, char_chat):
    info = ok(httpx.get(server.url + "/tokenizer_info", timeout=30))
    assert info["eos_token"] == info["bos_token"] == info["pad_token"] == EOT
    assert info["model_max_length"] == char_chat.block_size and info["add_bos_token"] is False
    messages = [Message("system", "Hamlet"), Message("user", "News?"), Message("assistant", "None."),
                Message("user", "Good.")]  # short enough that the server keeps every turn
    rendered = jinja2.Environment().from_string(info["chat_template"]).render(
        messages=[{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=True)
    ids = ok(server.post("/tokenize", {"prompt": rendered}))["tokens"]
    prompt, left_out, _ = char_chat.chat_prompt(messages, reserve=1)
    assert left_out == 0 and ids == prompt


def test_a_tokenizer_without_role_tokens_has_no_chat_template_and_eot_still_names_the_ends():
    tok = CharTokenizer.train(TEXT, special_tokens=(EOT,))
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    chat = ChatModel(GPT(config, seed=0, dtype=np.float64, backend="reference"), tok, "plain")
    with live(chat) as running:
        info = ok(httpx.get(running.url + "/tokenizer_info", timeout=30))
    assert "chat_template" not in info and info["eos_token"] == EOT


# ---------------------------------------------------------------- stop strings and logit_bias
def test_as_many_stop_strings_as_a_client_sends_each_count(server):
    body = {"prompt": PROMPT, "max_tokens": 30, "temperature": 0}
    greedy = ok(server.post(COMPLETIONS, body))["choices"][0]["text"]
    stop = greedy[10:12]
    never = [f"Q{i}Q" for i in range(2000)]  # "Q" is no character of the model's: none of these can occur
    one = ok(server.post(COMPLETIONS, {**body, "stop": [stop]}))["choices"][0]
    many = ok(server.post(COMPLETIONS, {**body, "stop": never[:1000] + [stop] + never[1000:]}))["choices"][0]
    assert one["text"] == greedy[:greedy.find(stop)] and one["finish_reason"] == "stop"
    assert many == one


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_logit_bias_forces_a_token_with_100_and_bans_it_with_minus_100(server, char_chat, path):
    base = {"messages": [{"role": "user", "content": PROMPT}]} if path == CHAT else {"prompt": PROMPT}
    body = {**base, "max_tokens": 6, "temperature": 0}

    def text(bias):
        doc = ok(server.post(path, {**body, "logit_bias": bias}))
        return doc["choices"][0]["message"]["content"] if path == CHAT else doc["choices"][0]["text"]

    greedy = text({})
    first = str(char_chat.tokenizer.encode(greedy[0])[0])
    forced = next(c for c in "kingdom" if c not in greedy)
    assert text({str(char_chat.tokenizer.encode(forced)[0]): 100}) == forced * 6
    assert text({first: -100})[0] != greedy[0]
    assert text({first: 100}) == greedy[0] * 6


def test_logit_bias_leaves_the_reported_log_probabilities_the_models_own(server, char_chat):
    tok = char_chat.tokenizer
    forced = tok.encode("k")[0]
    choice = ok(server.post(COMPLETIONS, {"prompt": PROMPT, "max_tokens": 1, "temperature": 0, "logprobs": 1,
                                          "logit_bias": {str(forced): 100}}))["choices"][0]
    assert choice["text"] == "k"
    logp = direct_logprobs(char_chat, tok.encode(PROMPT))
    assert choice["logprobs"]["token_logprobs"] == pytest.approx([logp[-1, forced]], abs=1e-9)


@pytest.mark.parametrize("bias", [[1, 2], {"k": 1}, {"-1": 1}, {"10000": 1}, {"3": 101}, {"3": "up"}, {"3": True},
                                  {"\u0663": 1}])
def test_a_bad_logit_bias_is_a_400_naming_it(server, bias):
    error = assert_error(server.post(COMPLETIONS, {"prompt": PROMPT, "max_tokens": 1, "logit_bias": bias}), 400)
    assert error["param"] == "logit_bias", error


# ---------------------------------------------------------------- fields never silently ignored
@pytest.mark.parametrize("path, extra, param", [
    (COMPLETIONS, {"min_p": 0.1}, "min_p"),
    (COMPLETIONS, {"ignore_eos": True}, "ignore_eos"),
    (COMPLETIONS, {"top_logprobs": 2}, "top_logprobs"),  # a chat field
    (CHAT, {"echo": True}, "echo"),  # a completions field
    (CHAT, {"repetition_penalty": 1.1}, "repetition_penalty"),
    (CHAT, {"messages": [{"role": "user", "content": "Hi", "name": "Horatio"}]}, "messages[0].name"),
    (CHAT, {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
     "stream_options.continuous_usage_stats"),
    (CHAT, {"user": 7}, "user"),
])
def test_a_field_the_server_does_not_implement_is_a_400_naming_it(server, path, extra, param):
    base = {"messages": [{"role": "user", "content": "Hi"}]} if path == CHAT else {"prompt": "Good"}
    error = assert_error(server.post(path, {**base, "max_tokens": 2, **extra}), 400)
    assert error["param"] == param, error


def test_fields_that_ask_for_nothing_are_accepted(server):
    chat = server.post(CHAT, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "user": "horatio",
                              "n": 1, "logit_bias": {}, "stream_options": {"include_usage": False}})
    assert chat.status_code == 200, chat.text
    completion = server.post(COMPLETIONS, {"prompt": "Good", "max_tokens": 2, "user": "horatio", "n": 1})
    assert completion.status_code == 200, completion.text


# ---------------------------------------------------------------- HEAD, models by id, the key
def test_head_answers_wherever_get_does(server, char_chat):
    app = create_app(char_chat)
    get_routes = [r.path for r in app.routes if "GET" in getattr(r, "methods", ())]
    assert {"/", "/health", "/v1/models", "/tokenizer_info"} <= set(get_routes)
    for route in app.routes:
        if "GET" in getattr(route, "methods", ()):
            assert "HEAD" in route.methods, route.path
    for path in [p.replace("{model_id:path}", char_chat.name) for p in get_routes]:
        got, head = httpx.get(server.url + path, timeout=30), httpx.head(server.url + path, timeout=30)
        assert got.status_code == head.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"], path


def test_a_model_is_found_by_its_id_and_an_unknown_id_is_404(server, char_chat):
    listed = ok(httpx.get(server.url + "/v1/models", timeout=30))["data"]
    assert ok(httpx.get(server.url + f"/v1/models/{char_chat.name}", timeout=30)) == listed[0]
    error = assert_error(httpx.get(server.url + "/v1/models/gpt-4o", timeout=30), 404, code="model_not_found")
    assert "gpt-4o" in error["message"]
    assert_error(httpx.get(server.url + "/v1/models/org/gpt-4o", timeout=30), 404, code="model_not_found")


def test_the_api_key_guards_the_tokenizer_and_the_model_entry_too(char_chat):
    with live(char_chat, Settings(api_key="Open-Sesame")) as running:
        requests = [("GET", "/tokenizer_info", None), ("GET", f"/v1/models/{char_chat.name}", None),
                    ("POST", "/tokenize", {"prompt": "Good"}), ("POST", "/detokenize", {"tokens": [1]})]
        for method, path, body in requests:
            for headers in ({}, {"Authorization": "Bearer Open-Sesame"}):
                response = httpx.request(method, running.url + path, json=body, headers=headers, timeout=30)
                if headers:
                    assert response.status_code == 200, (path, response.text)
                else:
                    assert_error(response, 401, code="invalid_api_key")
