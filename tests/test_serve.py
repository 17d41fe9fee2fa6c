"""`vintage serve` against its contract and the OpenAI protocol, as real clients use it.

A tiny character-level model (and a tiny byte-level BPE one, for characters split over
tokens) is trained on a small text written here, and real servers are started as
subprocesses on free ports:
    main     default limits, a small --max-tokens-cap and --max-body-bytes
    auth     --api-key
    busy     --parallel 1 --queue 0, a huge --max-tokens-cap (long generations)
    bpe      the BPE run
and one more, of its own, that the SIGTERM test stops. Every process uses one BLAS thread: the
models are tiny, and on a busy machine more threads only wait for each other.
The protocol tests talk through the official `openai` client; malformed requests and the raw
event stream go through httpx. Expected values are never hard-coded model outputs: they come
from another request (the stream against the non-stream answer, a greedy answer against the
same answer with a stop string) or from the checkpoint itself (usage against the prompt the
library builds, log-probabilities against a direct forward pass).

    pytest tests/test_serve.py -q
"""
import json
import math
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from threadpoolctl import threadpool_limits

from vintagelm.chat.format import Message
from vintagelm.chat.reply import ChatModel, log_softmax
from vintagelm.checkpoint import load_checkpoint
from vintagelm.cli import main
from vintagelm.generate import SamplingSettings, encode_prompt, generate
from vintagelm.serve import protocol

CHAR_RUN = "tinychar"  # the run folder's name is the served model's name
CHAR_ITERS = 150
BPE_RUN = "tinybpe"
BLOCK_SIZE = 64
CAP = 100  # --max-tokens-cap of the main server: below the default max_tokens of 200
MAX_BODY = 20_000  # --max-body-bytes of the main server
API_KEY = "s3cret-key"
TINY = ["--set", "n_layer=1", "--set", "n_embd=32", "--set", "n_head=2", "--set", f"block_size={BLOCK_SIZE}",
        "--set", "sample_tokens=0", "--no-progress"]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "Hello."}]
LONG_PROMPT = "the king doth speak of love " * 5  # 140 characters: more than the context of 64

WORDS = "the king doth speak of love and night where shall we meet again my lord fair sweet good morrow".split()
# every character a test types is in the text, so the char tokenizer knows it
ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:?!'-"
MULTI_BYTE_WORDS = "café naïve — über résumé 🎉 crème brûlée 😀 the king doth speak of love".split()


# ---------------------------------------------------------------- the runs and the servers
def verse(words, n_lines, seed, punctuation=True):
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 9)))
        lines.append(line.capitalize() + rng.choice(",.?!") if punctuation else line)
    return "\n".join(lines) + "\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`vintage serve RUN --port P ...` as a subprocess, ready once GET /health answers."""

    def __init__(self, run, logs, *options):
        self.run, self.port = Path(run), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout_path = logs / f"serve_{self.port}.out"
        self.stderr_path = logs / f"serve_{self.port}.err"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            argv = ["--threads", "1", "serve", str(run), "--port", str(self.port), *map(str, options)]
            self.proc = subprocess.Popen([sys.executable, "-m", "vintagelm", *argv], stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, env=env)
        self.wait_ready()

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with status {self.proc.returncode}:\n{self.stderr()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"the server did not answer /health within {timeout} s:\n{self.stderr()}")

    def stderr(self):
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def health(self):
        response = httpx.get(self.url + "/health", timeout=5)
        assert response.status_code == 200, response.text
        return response.json()

    def client(self, api_key="x", timeout=30):
        return OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=timeout)

    def post(self, path, body=None, content=None, headers=None, timeout=30):
        return httpx.post(self.url + path, json=body, content=content, headers=headers, timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny trained runs: a char one (the protocol tests) and a BPE one (split characters)."""
    root = tmp_path_factory.mktemp("serve")
    old_cache = os.environ.get("VINTAGELM_CACHE")
    os.environ["VINTAGELM_CACHE"] = str(root / "cache")
    try:
        with threadpool_limits(1, user_api="blas"):  # tiny models; on a busy machine more threads only wait
            train_runs(root)
    finally:
        if old_cache is None:
            os.environ.pop("VINTAGELM_CACHE", None)
        else:
            os.environ["VINTAGELM_CACHE"] = old_cache
    (root / "logs").mkdir()
    return root


def train_runs(root):
    """The char run (the protocol tests) and the BPE run (characters split over tokens)."""
    (root / "verse.txt").write_text(verse(WORDS, 500, 0) + ALPHABET + "\n", encoding="utf-8")
    # long enough that a greedy answer is more than spaces (a stop string must be found in it)
    assert main(["train", "--data", str(root / "verse.txt"), "--out", str(root / CHAR_RUN),
                 "--set", "learning_rate=1e-2", "--max-iters", str(CHAR_ITERS), *TINY]) == 0
    (root / "multi.txt").write_text(verse(MULTI_BYTE_WORDS, 400, 1, punctuation=False), encoding="utf-8")
    # trained longer than the char run: it must mostly sample valid UTF-8 to be a fair test (the
    # GPT-2 recipe at the rate tuned for it here; the default block at 300 steps samples fewer)
    assert main(["train", "--preset", "gpt2", "--data", str(root / "multi.txt"), "--out", str(root / BPE_RUN),
                 "--tokenizer", "bpe", "--set", "vocab_size=300", "--set", "learning_rate=1e-2", "--max-iters", "300",
                 *TINY]) == 0


def serving(runs, run_name, *options):
    server = Server(runs / run_name, runs / "logs", *options)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(runs):
    yield from serving(runs, CHAR_RUN, "--max-tokens-cap", CAP, "--max-body-bytes", MAX_BODY)


@pytest.fixture(scope="module")
def auth_server(runs):
    yield from serving(runs, CHAR_RUN, "--api-key", API_KEY)


@pytest.fixture(scope="module")
def busy_server(runs):
    yield from serving(runs, CHAR_RUN, "--parallel", 1, "--queue", 0, "--max-tokens-cap", 100_000)


@pytest.fixture(scope="module")
def bpe_server(runs):
    yield from serving(runs, BPE_RUN)


@pytest.fixture(scope="module")
def chat_model(runs):
    return ChatModel.load(runs / CHAR_RUN)


@pytest.fixture(scope="module")
def client(server):
    return server.client()


# ---------------------------------------------------------------- asking, through the openai client
@dataclass
class Answer:
    text: str
    finish_reason: str
    usage: object
    pieces: list = field(default_factory=list)  # the streamed deltas / texts, in order


def ask(client, endpoint, prompt, stream=False, **params):
    """One request through the openai client -> Answer; `prompt` is the user's message on chat."""
    if endpoint == "chat":
        create = client.chat.completions.create
        params["messages"] = [{"role": "user", "content": prompt}]
    else:
        create = client.completions.create
        params["prompt"] = prompt
    if not stream:
        response = create(model=CHAR_RUN, **params)
        choice = response.choices[0]
        text = choice.message.content if endpoint == "chat" else choice.text
        return Answer(text, choice.finish_reason, response.usage)
    pieces, finish, usage = [], None, None
    for chunk in create(model=CHAR_RUN, stream=True, stream_options={"include_usage": True}, **params):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            piece = choice.delta.content if endpoint == "chat" else choice.text
            if piece:
                pieces.append(piece)
            if choice.finish_reason is not None:
                finish = choice.finish_reason
    return Answer("".join(pieces), finish, usage, pieces)


def sse(server, path, body, headers=None):
    """A raw streamed POST -> the payloads of its `data:` lines, in order ("[DONE]" included)."""
    payloads = []
    with httpx.stream("POST", server.url + path, json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                payloads.append(line[len("data:"):].strip())
            else:
                assert line == "" or line.startswith(":"), f"not an event-stream line: {line!r}"
    return payloads


def assert_error(response, status, code=None, type_=None):
    """An error response: the status, and OpenAI's {"error": {message, type, param, code}}."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    error = body["error"]
    assert {"message", "type", "param", "code"} <= error.keys(), error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    if code is not None:
        assert error["code"] == code, error
    if type_ is not None:
        assert error["type"] == type_, error
    return error


def wait_until_idle(server, seconds):
    """Poll /health until nothing is active -> True, or False after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.health()["active"] == 0:
            return True
        time.sleep(0.1)
    return False


def greedy_stop(text):
    """A stop string from the middle of `text`: 3 characters (3 tokens of a char tokenizer) with a
    letter in them, whose first occurrence leaves some text before it -> (stop, text before it)."""
    for start in range(len(text) // 3, len(text) - 3):
        stop = text[start:start + 3]
        first = text.find(stop)
        if first >= 3 and any(c.isalpha() for c in stop):
            return stop, text[:first]
    pytest.fail(f"no usable stop string in the greedy answer {text!r}")


# ---------------------------------------------------------------- start-up, health, models, page
def test_startup_line_names_the_model_the_checkpoint_and_the_address(server):
    deadline = time.monotonic() + 5  # /health already answers: the line must be out by now
    while not server.stdout_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    out = server.stdout_path.read_text()
    m = re.search(rf"serving {CHAR_RUN} \(checkpoint (.+)\) on http://127\.0\.0\.1:{server.port}\b", out)
    assert m, f"no start-up line in stdout (printed but not flushed?): {out!r}"
    assert Path(m.group(1)).name == f"step_{CHAR_ITERS:06d}"


def test_health_reports_the_model_the_context_and_the_limits(server):
    health = server.health()
    assert health["status"] == "ok"
    assert health["model"] == CHAR_RUN
    assert health["context_length"] == BLOCK_SIZE
    assert health["active"] == 0 and health["waiting"] == 0
    assert health["max_tokens_cap"] == CAP
    assert health["api_key_required"] is False
    assert health["defaults"] == {"temperature": 0.8, "top_p": 0.95, "max_tokens": 200}


def test_models_lists_the_one_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [CHAR_RUN]
    raw = httpx.get(str(client.base_url).rstrip("/") + "/models", timeout=5).json()
    assert raw["object"] == "list"
    entry = raw["data"][0]
    assert entry["object"] == "model" and entry["owned_by"] == "vintagelm"
    assert isinstance(entry["created"], int) and entry["context_length"] == BLOCK_SIZE


def test_the_chat_page_is_self_contained_html(server):
    response = httpx.get(server.url + "/", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", response.text), "the page loads external resources"


# ---------------------------------------------------------------- answers, streamed and not
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_the_stream_says_what_the_plain_answer_says_for_the_same_seed(client, endpoint):
    params = dict(max_tokens=30, temperature=1.0, seed=11, extra_body={"top_k": 20})
    plain = ask(client, endpoint, "Good morrow, my lord.", **params)
    streamed = ask(client, endpoint, "Good morrow, my lord.", stream=True, **params)
    assert plain.text, "an empty answer proves nothing"
    assert streamed.text == plain.text
    assert streamed.finish_reason == plain.finish_reason
    assert streamed.usage is not None, "stream_options.include_usage gave no usage chunk"
    assert streamed.usage.model_dump() == plain.usage.model_dump()


def test_a_different_seed_gives_a_different_answer(client):
    answers = {ask(client, "chat", "Good morrow.", max_tokens=30, temperature=1.0, seed=s).text for s in range(3)}
    assert len(answers) > 1, "the seed changes nothing: is it ignored?"


def test_a_request_becomes_one_sampling_settings_field_by_field():
    doc = {"messages": HELLO, "max_tokens": 7, "temperature": 0.5, "top_k": 3, "top_p": 0.25, "seed": 9,
           "stop": ["x", "", "x"], "stream": True, "logprobs": True, "top_logprobs": 2,
           "logit_bias": {"12": -100, "3": 2.5}}
    req = protocol.chat_request(doc, CHAR_RUN, default_max_tokens=200, max_tokens_cap=CAP, vocab_size=20)
    assert req.sampling == SamplingSettings(max_new_tokens=7, temperature=0.5, top_k=3, top_p=0.25, seed=9, stop=["x"],
                                            logit_bias={3: 2.5, 12: -100.0})
    assert (req.stream, req.include_usage, req.logprobs) == (True, False, 2)
    req = protocol.completion_request({"prompt": "Good", "top_k": 4}, CHAR_RUN, max_tokens_cap=CAP, vocab_size=20)
    assert req.sampling == SamplingSettings(max_new_tokens=16, top_k=4)  # OpenAI's defaults: 16 tokens, temperature 1


def test_a_seeded_request_gets_what_generate_samples_with_its_settings(client, chat_model):
    """Every sampling field reaches the sampler, each as itself: the answer is the text the plain
    generate function samples, given the same model, prompt, seed and settings one by one."""
    prompt = "Good morrow, my lord."
    response = client.completions.create(model=CHAR_RUN, prompt=prompt, max_tokens=40, temperature=1.3, top_p=0.9,
                                         seed=21, extra_body={"top_k": 12})
    banned, stops = chat_model.text_rules()
    want = list(generate(chat_model.model, encode_prompt(chat_model.tokenizer, prompt), 40, np.random.default_rng(21),
                         temperature=1.3, top_k=12, top_p=0.9, banned_ids=banned, stop_ids=stops))
    assert len(want) > 10, "a short answer proves little"
    assert response.choices[0].text == chat_model.tokenizer.decode(want)


def test_chat_stream_chunks_have_the_openai_shape(server):
    body = {"model": CHAR_RUN, "messages": [{"role": "user", "content": "Where shall we meet?"}], "max_tokens": 20,
            "temperature": 1.0, "seed": 3, "stream": True, "stream_options": {"include_usage": True}}
    payloads = sse(server, "/v1/chat/completions", body)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    *choice_chunks, usage_chunk = chunks
    assert len(choice_chunks) >= 3, "expected a role chunk, content and a final chunk"
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert isinstance(c["created"], int) and c["model"] == CHAR_RUN
    for c in choice_chunks:
        [choice] = c["choices"]
        assert choice["index"] == 0
        assert {"delta", "logprobs", "finish_reason"} <= choice.keys()
    first, *middle, last = [c["choices"][0] for c in choice_chunks]
    assert first["delta"] == {"role": "assistant", "content": ""} and first["finish_reason"] is None
    for choice in middle:
        assert choice["finish_reason"] is None
        assert isinstance(choice["delta"].get("content"), str) and choice["delta"]["content"]
    assert last["delta"] == {} and last["finish_reason"] in ("stop", "length")
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    text = "".join(c["delta"]["content"] for c in middle)
    assert usage["completion_tokens"] <= 20
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert len(text) <= usage["completion_tokens"]  # a char tokenizer: at most one character per token


def test_completions_stream_chunks_have_the_openai_shape(server):
    body = {"prompt": "The king doth", "max_tokens": 12, "temperature": 1.0, "seed": 4, "stream": True,
            "stream_options": {"include_usage": True}}
    payloads = sse(server, "/v1/completions", body)
    assert payloads[-1] == "[DONE]"
    *choice_chunks, usage_chunk = [json.loads(p) for p in payloads[:-1]]
    for c in choice_chunks:
        assert c["object"] == "text_completion" and c["model"] == CHAR_RUN and isinstance(c["created"], int)
        [choice] = c["choices"]
        assert choice["index"] == 0 and isinstance(choice["text"], str)
        assert {"logprobs", "finish_reason"} <= choice.keys()
    reasons = [c["choices"][0]["finish_reason"] for c in choice_chunks]
    assert all(r is None for r in reasons[:-1]) and reasons[-1] in ("stop", "length")
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] <= 12


def test_chat_content_may_come_as_text_parts(client):
    as_parts = client.chat.completions.create(
        model=CHAR_RUN, messages=[{"role": "user", "content": [{"type": "text", "text": "Good "},
                                                              {"type": "text", "text": "morrow."}]}],
        max_tokens=10, temperature=0)
    as_string = client.chat.completions.create(model=CHAR_RUN, messages=[{"role": "user", "content": "Good morrow."}],
                                               max_tokens=10, temperature=0)
    assert as_parts.choices[0].message.content == as_string.choices[0].message.content
    assert as_parts.usage.prompt_tokens == as_string.usage.prompt_tokens


def test_a_stream_without_include_usage_sends_no_usage_chunk(server):
    body = {"messages": [{"role": "user", "content": "Fair night."}], "max_tokens": 5, "stream": True}
    payloads = sse(server, "/v1/chat/completions", body)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["choices"] for c in chunks), "a chunk with no choices, though include_usage was not asked"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_plain_chat_answer_has_the_openai_shape(server):
    body = {"messages": [{"role": "user", "content": "Good morrow."}], "max_tokens": 10, "seed": 1}
    response = server.post("/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["id"].startswith("chatcmpl-") and doc["object"] == "chat.completion"
    assert isinstance(doc["created"], int) and doc["model"] == CHAR_RUN
    [choice] = doc["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")


# ---------------------------------------------------------------- usage and finish reasons
def test_chat_usage_counts_the_prompt_the_server_builds(client, chat_model):
    messages = [Message("system", "A king."), Message("user", "Where?"), Message("assistant", "At night."),
                Message("user", "Good.")]
    response = client.chat.completions.create(
        model=CHAR_RUN, messages=[{"role": m.role, "content": m.content} for m in messages], max_tokens=15, seed=2)
    ids, left_out, dropped = chat_model.chat_prompt(messages, reserve=15)
    assert left_out == 0 and dropped == ""  # short enough that trimming plays no part
    usage = response.usage
    assert usage.prompt_tokens == len(ids)
    assert 1 <= usage.completion_tokens <= 15
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_completions_usage_counts_the_prompt_tokens(client, chat_model):
    prompt = "Shall we meet again, my lord?"
    response = client.completions.create(model=CHAR_RUN, prompt=prompt, max_tokens=9, seed=2)
    usage = response.usage
    assert usage.prompt_tokens == len(chat_model.tokenizer.encode(prompt))
    assert usage.completion_tokens <= 9 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert len(response.choices[0].text) <= usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_a_small_max_tokens_ends_with_length(client, endpoint, stream):
    answer = ask(client, endpoint, "The king doth speak", stream=stream, max_tokens=3, temperature=0, seed=0)
    assert answer.finish_reason == "length"
    assert answer.usage.completion_tokens == 3
    assert len(answer.text) == 3  # three tokens of a char tokenizer, no stop string to hold any back


def test_a_request_without_max_tokens_is_answered_when_the_cap_is_below_the_default(client):
    """The server's own default (200) must not make a request that names no max_tokens fail on a
    server started with a smaller --max-tokens-cap: the reply is at most the cap."""
    response = client.chat.completions.create(model=CHAR_RUN, messages=HELLO, temperature=0)
    assert response.usage.completion_tokens <= CAP


def test_max_completion_tokens_is_the_chat_limit_too(client):
    response = client.chat.completions.create(model=CHAR_RUN, messages=[{"role": "user", "content": "Hello."}],
                                              max_completion_tokens=4, temperature=0)
    assert response.choices[0].finish_reason == "length" and response.usage.completion_tokens == 4


def test_a_conversation_longer_than_the_context_is_trimmed_not_refused(client):
    long_turn = "the king doth speak of love and night " * 4  # > 64 tokens
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": long_turn},
                {"role": "assistant", "content": long_turn}, {"role": "user", "content": "Good night."}]
    response = client.chat.completions.create(model=CHAR_RUN, messages=messages, max_tokens=10, seed=0)
    assert response.usage.prompt_tokens < BLOCK_SIZE
    assert response.choices[0].finish_reason in ("stop", "length")


# ---------------------------------------------------------------- stop strings
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_a_stop_string_cuts_the_greedy_answer_just_before_it(client, endpoint, stream):
    prompt, limit = "The king doth speak of love", 60
    greedy = ask(client, endpoint, prompt, max_tokens=limit, temperature=0, seed=5)
    assert greedy.finish_reason == "length", "the greedy answer must run to max_tokens for this test"
    stop, before = greedy_stop(greedy.text)
    cut = ask(client, endpoint, prompt, stream=stream, max_tokens=limit, temperature=0, seed=5,
              stop=[stop, "zzzz"])
    assert cut.text == before, f"stop {stop!r}: expected {before!r}, got {cut.text!r}"
    assert cut.finish_reason == "stop"
    assert len(before) + len(stop) <= cut.usage.completion_tokens <= limit  # the stop had to be generated
    if stream:  # nothing past the cut was ever sent, not even the start of the stop string
        assert "".join(cut.pieces) == before
        assert not any(stop in piece for piece in cut.pieces)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_the_earliest_of_several_stop_strings_wins(client, endpoint):
    prompt = "Fair sweet lord"
    greedy = ask(client, endpoint, prompt, max_tokens=60, temperature=0).text
    stop, before = greedy_stop(greedy)
    other = greedy[len(before) + 1:len(before) + 4]  # overlaps the first stop, one character on
    stops = [other, stop]  # listed first is not what decides
    cut = min(greedy.find(s) for s in stops)
    answer = ask(client, endpoint, prompt, stream=True, max_tokens=60, temperature=0, stop=stops)
    assert answer.text == greedy[:cut], f"stops {stops!r}"
    assert answer.finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_text_held_back_for_a_stop_string_that_never_completes_is_sent_at_the_end(client, stream):
    plain = ask(client, "chat", "Good morrow.", max_tokens=40, temperature=0)
    never = plain.text[-2:] + "QZ"  # the answer ends with the start of this stop string
    assert never not in plain.text
    stopped = ask(client, "chat", "Good morrow.", stream=stream, max_tokens=40, temperature=0, stop=[never, "Zq!"])
    assert stopped.text == plain.text and stopped.finish_reason == "length"


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_a_stop_string_at_the_very_start_gives_an_empty_answer(client, endpoint):
    greedy = ask(client, endpoint, "Fair night", max_tokens=20, temperature=0).text
    for stream in (False, True):
        answer = ask(client, endpoint, "Fair night", stream=stream, max_tokens=20, temperature=0, stop=greedy[:2])
        assert answer.text == "" and answer.finish_reason == "stop", f"stream={stream}"


# ---------------------------------------------------------------- log-probabilities
def direct_logprobs(run, ids):
    """(T, V) float64 log-probabilities of the next token after each prefix, by one forward pass."""
    ckpt = load_checkpoint(run, with_optimizer=False)
    ckpt.model.eval()
    logits, _ = ckpt.model.forward(np.asarray([ids], dtype=np.int64))  # (1, T, V)
    return log_softmax(np.asarray(logits[0], dtype=np.float64))


def test_echo_logprobs_of_a_prompt_are_the_models_own(client, runs, chat_model):
    prompt = "The king doth speak of love, my lord."
    tok = chat_model.tokenizer
    ids = tok.encode(prompt)
    response = client.completions.create(model=CHAR_RUN, prompt=prompt, max_tokens=0, echo=True, logprobs=3)
    choice = response.choices[0]
    assert choice.text == prompt
    lp = choice.logprobs
    assert lp.tokens == [tok.decode([i]) for i in ids]
    assert "".join(lp.tokens) == prompt
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(ids))]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    logp = direct_logprobs(runs / CHAR_RUN, ids)  # (T, V)
    for t in range(1, len(ids)):
        assert lp.token_logprobs[t] == pytest.approx(logp[t - 1, ids[t]], abs=1e-4), f"token {t}"
        best = np.argsort(-logp[t - 1], kind="stable")[:3]
        expected = {tok.decode([int(i)]): float(logp[t - 1, i]) for i in best}
        got = lp.top_logprobs[t]
        assert got.keys() == expected.keys(), f"token {t}"
        for text, value in expected.items():
            assert got[text] == pytest.approx(value, abs=1e-4)
    assert response.usage.prompt_tokens == len(ids) and response.usage.completion_tokens == 0


def test_echo_with_a_continuation_lists_every_token_with_its_offset(client, chat_model):
    prompt = "Where shall we"
    response = client.completions.create(model=CHAR_RUN, prompt=prompt, max_tokens=8, echo=True, logprobs=2,
                                         temperature=1.0, seed=9)
    choice, usage = response.choices[0], response.usage
    assert choice.text.startswith(prompt)
    lp = choice.logprobs
    # a reply ended by <|endoftext|> lists it last, with its log-probability, though it is no text
    ended = lp.tokens[-1] == "<|endoftext|>"
    assert len(lp.tokens) == usage.prompt_tokens + usage.completion_tokens + ended
    assert "".join(lp.tokens[:len(lp.tokens) - ended]) == choice.text
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    for value, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert math.isfinite(value) and value <= 0
        assert len(top) == 2 and max(top.values()) >= value - 1e-6


def test_completion_logprobs_list_the_generated_tokens(client):
    response = client.completions.create(model=CHAR_RUN, prompt="Good", max_tokens=10, logprobs=1, temperature=0)
    choice = response.choices[0]
    assert "".join(choice.logprobs.tokens) == choice.text
    assert len(choice.logprobs.tokens) == response.usage.completion_tokens == 10
    for value, top in zip(choice.logprobs.token_logprobs, choice.logprobs.top_logprobs):
        assert len(top) == 1 and list(top.values())[0] == pytest.approx(value, abs=1e-6)  # greedy: the best


def test_echo_streams_the_prompt_first_then_the_same_continuation(client):
    plain = ask(client, "completions", "The king", max_tokens=10, temperature=1.0, seed=8, echo=True)
    streamed = ask(client, "completions", "The king", stream=True, max_tokens=10, temperature=1.0, seed=8, echo=True)
    assert plain.text.startswith("The king") and streamed.pieces[0] == "The king"
    assert streamed.text == plain.text


def test_chat_logprobs_are_the_models_and_list_sorted_alternatives(client, runs, chat_model):
    messages = [Message("user", "Good morrow, my lord.")]
    response = client.chat.completions.create(
        model=CHAR_RUN, messages=[{"role": "user", "content": messages[0].content}], max_tokens=20,
        temperature=1.0, seed=5, logprobs=True, top_logprobs=3)
    choice = response.choices[0]
    content = choice.logprobs.content
    assert content, "no log-probabilities"
    assert "".join(t.token for t in content) == choice.message.content
    for t in content:
        assert math.isfinite(t.logprob) and t.logprob <= 0
        assert t.bytes == list(t.token.encode("utf-8"))
        assert len(t.top_logprobs) == 3
        values = [alt.logprob for alt in t.top_logprobs]
        assert values == sorted(values, reverse=True) and all(math.isfinite(v) and v <= 0 for v in values)
        assert t.logprob <= values[0] + 1e-6
    # and they are the model's own: a forward pass over the prompt and the tokens sampled
    prompt_ids, _, _ = chat_model.chat_prompt(messages, reserve=20)
    reply_ids = chat_model.tokenizer.encode(choice.message.content)
    ids = prompt_ids + reply_ids
    assert len(ids) <= BLOCK_SIZE  # one window: no sliding, the same positions as the server's
    logp = direct_logprobs(runs / CHAR_RUN, ids)
    for k, t in enumerate(content):
        position = len(prompt_ids) + k
        assert t.logprob == pytest.approx(logp[position - 1, ids[position]], abs=1e-4), f"token {k} {t.token!r}"


def test_chat_logprobs_arrive_in_the_stream_too(client):
    tokens, text = [], []
    for chunk in client.chat.completions.create(model=CHAR_RUN, messages=[{"role": "user", "content": "Hello."}],
                                                max_tokens=12, seed=1, logprobs=True, top_logprobs=2, stream=True):
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            if choice.logprobs and choice.logprobs.content:
                tokens += choice.logprobs.content
    assert "".join(t.token for t in tokens) == "".join(text)
    assert all(len(t.top_logprobs) == 2 for t in tokens)


# ---------------------------------------------------------------- malformed and out-of-range requests
BAD_REQUESTS = {
    # name: (path, body (bytes are sent as they are), expected status, expected code)
    "body not JSON": (CHAT, b"{this is not json", 400, None),
    "body not UTF-8": (CHAT, b'{"messages": "\xff\xfe"}', 400, None),
    "JSON not an object": (CHAT, b"[1, 2, 3]", 400, None),
    "JSON a string": (COMPLETIONS, b'"prompt"', 400, None),
    "messages missing": (CHAT, {"model": CHAR_RUN}, 400, None),
    "messages empty": (CHAT, {"messages": []}, 400, None),
    "messages not a list": (CHAT, {"messages": "Hello."}, 400, None),
    "a message not an object": (CHAT, {"messages": ["Hello."]}, 400, None),
    "a bad role": (CHAT, {"messages": [{"role": "wizard", "content": "Hello."}]}, 400, None),
    "no role": (CHAT, {"messages": [{"content": "Hello."}]}, 400, None),
    "content a number": (CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, None),
    "content missing": (CHAT, {"messages": [{"role": "user"}]}, 400, None),
    "temperature -1": (CHAT, {"messages": HELLO, "temperature": -1}, 400, None),
    "temperature hot": (CHAT, {"messages": HELLO, "temperature": "hot"}, 400, None),
    "temperature 3": (CHAT, {"messages": HELLO, "temperature": 3}, 400, None),
    "temperature NaN": (CHAT, b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}', 400, None),
    "top_p Infinity": (CHAT, b'{"messages": [{"role": "user", "content": "Hi"}], "top_p": Infinity}', 400, None),
    "JSON nested too deep": (CHAT, b"[" * 5000 + b"]" * 5000, 400, None),
    "max_tokens 0 on chat": (CHAT, {"messages": HELLO, "max_tokens": 0}, 400, None),
    "max_tokens above the cap": (CHAT, {"messages": HELLO, "max_tokens": CAP + 1}, 400, None),
    "max_tokens a float": (CHAT, {"messages": HELLO, "max_tokens": 2.5}, 400, None),
    "max_tokens negative on completions": (COMPLETIONS, {"prompt": "The", "max_tokens": -1}, 400, None),
    "max_tokens above the cap on completions": (COMPLETIONS, {"prompt": "The", "max_tokens": CAP + 1}, 400, None),
    "top_p 0": (CHAT, {"messages": HELLO, "top_p": 0}, 400, None),
    "top_p above 1": (CHAT, {"messages": HELLO, "top_p": 1.5}, 400, None),
    "top_k 0": (CHAT, {"messages": HELLO, "top_k": 0}, 400, None),
    "n 2": (CHAT, {"messages": HELLO, "n": 2}, 400, None),
    "n 2 on completions": (COMPLETIONS, {"prompt": "The", "n": 2}, 400, None),
    "stop a number": (CHAT, {"messages": HELLO, "stop": 7}, 400, None),
    "stop a list with a number": (CHAT, {"messages": HELLO, "stop": ["a", 7]}, 400, None),
    "seed a string": (CHAT, {"messages": HELLO, "seed": "lucky"}, 400, None),
    "stream a string": (CHAT, {"messages": HELLO, "stream": "yes"}, 400, None),
    "stream_options not an object": (CHAT, {"messages": HELLO, "stream": True, "stream_options": 1}, 400, None),
    "top_logprobs 21": (CHAT, {"messages": HELLO, "logprobs": True, "top_logprobs": 21}, 400, None),
    "completions logprobs 6": (COMPLETIONS, {"prompt": "The", "logprobs": 6}, 400, None),
    "prompt missing": (COMPLETIONS, {"max_tokens": 5}, 400, None),
    "prompt a number": (COMPLETIONS, {"prompt": 12}, 400, None),
    "max_tokens 0 without echo": (COMPLETIONS, {"prompt": "The", "max_tokens": 0}, 400, None),
    "a prompt longer than the context": (COMPLETIONS, {"prompt": LONG_PROMPT, "max_tokens": 4}, 400, None),
    "truncate_prompt_tokens 0": (COMPLETIONS, {"prompt": "The", "truncate_prompt_tokens": 0}, 400, None),
    "unknown model on chat": (CHAT, {"model": "gpt-4o", "messages": HELLO}, 404, "model_not_found"),
    "unknown model on completions": (COMPLETIONS, {"model": "gpt-4o", "prompt": "The"}, 404, "model_not_found"),
    "unknown route": ("/v1/embeddings", {"input": "The"}, 404, None),
    "unknown route outside /v1": ("/nothing/here", {}, 404, None),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_a_4xx_with_the_error_shape_and_the_server_lives_on(server, case):
    path, body, status, code = BAD_REQUESTS[case]
    if isinstance(body, bytes):
        response = server.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = server.post(path, body)
    error = assert_error(response, status, code)
    if status == 400:
        assert error["type"] == "invalid_request_error"
    assert server.health()["status"] == "ok"


def test_a_wrong_method_is_405_with_the_error_shape(server):
    assert_error(httpx.get(server.url + CHAT, timeout=5), 405)
    assert_error(httpx.delete(server.url + "/v1/models", timeout=5), 405)


def test_a_body_larger_than_max_body_bytes_is_413(server):
    big = {"messages": [{"role": "user", "content": "a" * (MAX_BODY + 1000)}], "max_tokens": 1}
    assert_error(server.post(CHAT, big), 413)
    assert server.health()["status"] == "ok"


def test_a_large_body_without_content_length_is_413_too(server):
    def chunks():  # chunked transfer encoding: the server cannot trust a length header
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY // 1000 + 2):
            yield b"a" * 1000
        yield b'"}], "max_tokens": 1}'

    assert_error(server.post(CHAT, content=chunks(), headers={"content-type": "application/json"}), 413)
    assert server.health()["status"] == "ok"


def test_the_openai_client_sees_a_bad_request_as_its_own_error(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=CHAR_RUN, messages=HELLO, temperature=-1)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=HELLO)


def test_truncate_prompt_tokens_keeps_the_end_of_a_long_prompt(client):
    response = client.completions.create(model=CHAR_RUN, prompt=LONG_PROMPT, max_tokens=4, seed=0,
                                         extra_body={"truncate_prompt_tokens": 32})
    assert response.usage.prompt_tokens == 32
    assert response.usage.completion_tokens <= 4


def test_characters_the_tokenizer_never_saw_are_never_a_500(server):
    chat = server.post(CHAT, {"messages": [{"role": "user", "content": "Good \u201cmorrow\u201d \u2603"}],
                              "max_tokens": 3})
    assert chat.status_code in (200, 400), chat.text
    if chat.status_code == 400:
        assert_error(chat, 400)
    completion = server.post(COMPLETIONS, {"prompt": "Good \u201cmorrow\u201d \u2603", "max_tokens": 3})
    assert completion.status_code in (200, 400), completion.text
    if completion.status_code == 400:
        assert_error(completion, 400)
    assert server.health()["status"] == "ok"


@pytest.mark.parametrize("path, body", [
    (CHAT, b'{"messages": [{"role": "user", "content": "Good \\ud800 morrow"}], "max_tokens": 2}'),
    (CHAT, b'{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stop": ["\\udfff"]}'),
    (CHAT, b'{"model": "\\ud800", "messages": [{"role": "user", "content": "Hi"}]}'),
    (COMPLETIONS, b'{"prompt": "The \\ud800", "max_tokens": 2}'),
], ids=["chat content", "stop string", "model", "prompt"])
def test_a_lone_surrogate_in_a_request_is_never_a_500(server, path, body):
    response = server.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 404), response.text
    if response.status_code != 200:
        assert_error(response, response.status_code)
    assert server.health()["status"] == "ok"


# ---------------------------------------------------------------- many clients, a busy server, a client gone
def test_eight_concurrent_streams_all_finish_with_their_own_answers(server):
    n, params = 8, dict(max_tokens=40, temperature=1.0)
    results, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def talk(i):
        try:
            client = server.client()
            barrier.wait(10)
            results[i] = ask(client, "chat", "Good morrow, my lord.", stream=True, seed=100 + i, **params)
        except Exception as e:  # noqa: BLE001 - reported below, with the thread that failed
            errors.append(f"client {i}: {e!r}")

    threads = [threading.Thread(target=talk, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    client = server.client()
    for i, streamed in enumerate(results):
        assert streamed is not None, f"client {i} never finished"
        assert streamed.finish_reason in ("stop", "length"), f"client {i} got no finish_reason"
        assert streamed.usage is not None and streamed.usage.completion_tokens <= 40
        alone = ask(client, "chat", "Good morrow, my lord.", seed=100 + i, **params)
        assert streamed.text == alone.text, f"client {i}: another request's tokens leaked into its answer"
    assert wait_until_idle(server, 5)


def open_long_stream(server, http):
    """Start a greedy generation of up to 100,000 tokens (tens of seconds) and read a few of its
    chunks -> (response, its line iterator). Keep the iterator: an iterator of httpx's that is
    garbage-collected closes the connection, which is the very disconnect tested here."""
    body = {"messages": [{"role": "user", "content": "The king doth speak"}], "max_tokens": 100_000,
            "temperature": 0, "stream": True}
    request = http.build_request("POST", server.url + CHAT, json=body, timeout=30)
    response = http.send(request, stream=True)
    assert response.status_code == 200, response.read()
    lines, data = response.iter_lines(), 0
    while data < 5:
        data += next(lines).startswith("data:")
    return response, lines


def test_a_busy_server_answers_503_with_retry_after(busy_server):
    with httpx.Client() as http:
        response, lines = open_long_stream(busy_server, http)
        try:
            refused = busy_server.post(CHAT, {"messages": HELLO, "max_tokens": 2})
            assert_error(refused, 503)
            assert re.fullmatch(r"\d+", refused.headers.get("retry-after", "")), refused.headers
            with pytest.raises(openai.APIStatusError) as info:
                busy_server.client().completions.create(model=CHAR_RUN, prompt="The", max_tokens=2)
            assert info.value.status_code == 503
        finally:
            response.close()
    assert wait_until_idle(busy_server, 5), "the generation went on after its client left"
    ok = busy_server.post(CHAT, {"messages": HELLO, "max_tokens": 2})
    assert ok.status_code == 200, ok.text


def test_a_client_that_disconnects_mid_stream_stops_its_generation(busy_server):
    with httpx.Client() as http:
        response, lines = open_long_stream(busy_server, http)
        try:
            assert busy_server.health()["active"] == 1
            time.sleep(1.5)
            assert busy_server.health()["active"] == 1, "the control failed: the generation was not long"
        finally:
            response.close()
    assert wait_until_idle(busy_server, 5), "active did not drop back to 0 after the client disconnected"
    ok = busy_server.post(COMPLETIONS, {"prompt": "The", "max_tokens": 2})
    assert ok.status_code == 200, ok.text



def test_simultaneous_streams_on_a_busy_server_get_one_slot_and_503s(busy_server):
    """--parallel 1 --queue 0 admits one request at a time, however close together they come:
    a burst of streams gets one 200 and 503s, never streams queued beyond the limit (a few
    rounds, since a race shows only sometimes)."""
    n = 8
    body = {"messages": [{"role": "user", "content": "The king doth speak"}], "max_tokens": 100_000,
            "temperature": 0, "stream": True}
    for round_ in range(10):
        barrier, done = threading.Barrier(n), threading.Event()
        statuses, errors = [None] * n, []

        def knock(i):
            try:
                with httpx.Client(timeout=30) as http:
                    request = http.build_request("POST", busy_server.url + CHAT, json=body)
                    barrier.wait(10)
                    response = http.send(request, stream=True)
                    statuses[i] = response.status_code
                    done.wait(30)  # hold the connection (and its slot) until every request is answered
                    response.close()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"client {i}: {e!r}")

        threads = [threading.Thread(target=knock, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while None in statuses and not errors and time.monotonic() < deadline:
            time.sleep(0.05)
        answered, health = list(statuses), busy_server.health()
        done.set()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert sorted(answered) == [200] + [503] * (n - 1), (
            f"round {round_}: statuses of {n} simultaneous streams {answered}; /health then said "
            f"active {health['active']}, waiting {health['waiting']} (--queue 0)")
        assert wait_until_idle(busy_server, 5)


# ---------------------------------------------------------------- --api-key
def test_an_api_key_is_required_on_every_v1_route(auth_server):
    wrong_headers = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY},
                     {"Authorization": f"Basic {API_KEY}"}]
    for headers in wrong_headers:
        get = httpx.get(auth_server.url + "/v1/models", headers=headers, timeout=5)
        assert_error(get, 401, code="invalid_api_key", type_="authentication_error")
        for path, body in [(CHAT, {"messages": HELLO, "max_tokens": 2}), (COMPLETIONS, {"prompt": "The"})]:
            assert_error(auth_server.post(path, body, headers=headers), 401, code="invalid_api_key",
                         type_="authentication_error")
    with pytest.raises(openai.AuthenticationError):
        auth_server.client(api_key="wrong").chat.completions.create(model=CHAR_RUN, messages=HELLO, max_tokens=2)


def test_the_right_api_key_opens_every_v1_route(auth_server):
    client = auth_server.client(api_key=API_KEY)
    assert [m.id for m in client.models.list().data] == [CHAR_RUN]
    assert client.chat.completions.create(model=CHAR_RUN, messages=HELLO, max_tokens=2).usage.completion_tokens <= 2
    streamed = ask(client, "completions", "The king", stream=True, max_tokens=3, temperature=0)
    assert streamed.finish_reason == "length"


def test_health_and_the_page_need_no_api_key(auth_server):
    health = auth_server.health()
    assert health["status"] == "ok" and health["api_key_required"] is True
    assert httpx.get(auth_server.url + "/", timeout=5).status_code == 200


# ---------------------------------------------------------------- characters split over BPE tokens
def is_utf8(raw):
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_a_character_split_over_bpe_tokens_never_reaches_the_client_as_a_replacement(bpe_server):
    client = OpenAI(base_url=bpe_server.url + "/v1", api_key="x", max_retries=0, timeout=30)
    split_seen, clean_answers = 0, 0
    for seed in range(8):
        deltas, tokens = [], []
        for chunk in client.chat.completions.create(
                model=BPE_RUN, messages=[{"role": "user", "content": "café 🎉 — 😀 crème brûlée"}],
                max_tokens=40, temperature=0.8, top_p=0.9, seed=seed, stream=True, logprobs=True):
            for choice in chunk.choices:
                if choice.delta.content:
                    deltas.append(choice.delta.content)
                if choice.logprobs and choice.logprobs.content:
                    tokens += choice.logprobs.content
        raw = b"".join(bytes(t.bytes) for t in tokens)
        # the text is the tokens' bytes decoded whole; U+FFFD only for bytes that form no character
        assert "".join(deltas) == raw.decode("utf-8", errors="replace"), f"seed {seed}"
        if is_utf8(raw):
            clean_answers += 1
            assert not any("\ufffd" in d for d in deltas), f"seed {seed}: {deltas}"
            split_seen += sum(not is_utf8(bytes(t.bytes)) for t in tokens)
    assert clean_answers >= 4, "the model rarely samples valid UTF-8: the test proves little"
    assert split_seen > 0, "no character was split over tokens: the test proves nothing"


# ---------------------------------------------------------------- stopping
def test_sigterm_stops_the_server_even_during_a_long_stream(runs):
    server = Server(runs / CHAR_RUN, runs / "logs", "--max-tokens-cap", 100_000)
    try:
        with httpx.Client() as http:
            response, lines = open_long_stream(server, http)
            server.proc.terminate()
            try:
                server.proc.wait(15)
            except subprocess.TimeoutExpired:
                pytest.fail("the server was still running 15 s after SIGTERM")
            response.close()
    finally:
        server.stop()


# ---------------------------------------------------------------- the museum's models behind the same API
MUSEUM = {"ngram": ["--set", "order=3"], "lstm": ["--set", "n_embd=32", "--max-iters", "60"]}


@pytest.fixture(scope="module", params=list(MUSEUM))
def museum_server(runs, request):
    """An n-gram (a count model: no KV cache, its context is its order) and an LSTM (its state is
    the cache), trained on the char run's text and served like any run."""
    arch, name = request.param, f"museum-{request.param}"
    if not (runs / name).exists():
        with threadpool_limits(1, user_api="blas"):
            assert main(["train", "--arch", arch, "--data", str(runs / "verse.txt"), "--out", str(runs / name),
                         "--set", f"block_size={BLOCK_SIZE}", "--set", "sample_tokens=0", "--no-progress",
                         *MUSEUM[arch]]) == 0
    yield from serving(runs, name)


def test_a_museum_model_is_served_and_scored_like_the_gpt(museum_server):
    name = museum_server.run.name
    assert museum_server.health()["model"] == name
    client = museum_server.client()
    # a stream that runs to its limit, and the same answer without streaming, for one seed
    chunks = list(client.chat.completions.create(model=name, messages=HELLO, max_tokens=12, seed=4, stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    plain = client.chat.completions.create(model=name, messages=HELLO, max_tokens=12, seed=4)
    assert plain.choices[0].message.content == streamed and finals == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens <= 12
    # echo + logprobs: the model's own log-probabilities of the prompt, by one direct forward pass
    prompt = "Where shall we meet again, my lord?"
    ids = ChatModel.load(museum_server.run).tokenizer.encode(prompt)
    lp = client.completions.create(model=name, prompt=prompt, max_tokens=0, echo=True, logprobs=1).choices[0].logprobs
    logp = direct_logprobs(museum_server.run, ids)
    assert lp.token_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx([logp[t - 1, ids[t]] for t in range(1, len(ids))], abs=1e-4)
