"""`vintage serve` against hostile or careless clients: the server findings of the second fuzz
round (H1, H2, S1, U4, C8, C10, K3-K6), one test per finding, and a client that writes a whole
oversized body before it reads the answer.

Most tests serve an untrained model (random weights, or a stand-in that never stops talking) with
the app built here, under uvicorn in a thread on a free loopback port: no training, and the test
can reach into the model, the tokenizer and the server's log. The CLI's own checks run `main`,
and one test starts the real `vintage serve` on a tiny trained run.

    pytest tests/test_serve_hostile.py -q
"""
import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from hashlib import sha256

import httpx
import numpy as np
import pytest
import uvicorn

from test_chat_reply import Scripted
from test_serve import TINY, WORDS, Server, assert_error, verse
from vintagelm import GPT, GPTConfig
from vintagelm.chat.format import Message, parse_rendered
from vintagelm.chat.reply import ChatModel
from vintagelm.cli import main
from vintagelm.serve.app import DISCARD_BYTES, Settings, create_app
from vintagelm.serve.protocol import MAX_MESSAGES
from vintagelm.tokenizers import CharTokenizer

TEXT = "Good morrow, my lord. What news from the court? None, my liege; the king is well. You are Hamlet."
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "Good morrow."}]
ENDLESS = 1_000_000  # max_tokens of a reply that, left alone, would run for minutes


# ---------------------------------------------------------------- models and a server in a thread
def random_chat_model(block_size=48):
    tok = CharTokenizer.train(TEXT)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)
    return ChatModel(GPT(config, seed=0, dtype=np.float64, backend="reference"), tok, "random")


class Endless(Scripted):
    """A stand-in model that always puts all its mass on one ordinary token, so a reply runs to
    max_tokens; it counts its forward passes and says when a generation is under way."""

    def __init__(self, config, token):
        super().__init__(config, config.vocab_size, [token])
        self.generating = threading.Event()

    def forward(self, idx, kv_cache=None):
        if self.calls >= 2:
            self.generating.set()
        return super().forward(idx, kv_cache)


def endless_chat_model():
    chat = random_chat_model()
    return ChatModel(Endless(chat.model.config, chat.tokenizer.encode("o")[0]), chat.tokenizer, "endless")


class Live:
    """A server running in this process: its URL and the uvicorn.Server behind it."""

    def __init__(self, server, port):
        self.server, self.port, self.url = server, port, f"http://127.0.0.1:{port}"

    def post(self, path, body, **kwargs):
        return httpx.post(self.url + path, json=body, timeout=30, **kwargs)

    def health(self):
        response = httpx.get(self.url + "/health", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for_health(self, condition, seconds=30):
        """Poll /health until `condition(health)` -> True, or False after `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition(self.health()):
                return True
            time.sleep(0.05)
        return False

    def wait_for_tasks(self, busy, seconds=30):
        """Wait until the server is handling some request (busy) or none -> True, or False."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if bool(self.server.server_state.tasks) == busy:
                return True
            time.sleep(0.01)
        return False

    def raw_post(self, path, body):
        """A POST sent on a socket of our own, whose answer is never read -> the socket, open."""
        data = json.dumps(body).encode()
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        return sock


@contextmanager
def live(chat_model, settings=None):
    """create_app(chat_model, settings) under uvicorn, in a thread, on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    # log_config=None: uvicorn leaves the logging set-up alone, and its records reach our handlers
    config = uvicorn.Config(create_app(chat_model, settings), log_level="warning", log_config=None,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield Live(server, sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def server():
    with live(random_chat_model()) as running:
        yield running


@contextmanager
def logged(name):
    """The records a logger emits meanwhile -> a list that fills."""
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def gate_encode(tokenizer, marker):
    """Make tokenizer.encode stop on text holding `marker` until released -> (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    encode = tokenizer.encode

    def gated(text, *args, **kwargs):
        if marker in text:
            entered.set()
            release.wait(60)
        return encode(text, *args, **kwargs)

    tokenizer.encode = gated
    return entered, release


# ---------------------------------------------------------------- H1: a huge conversation
def test_h1_a_conversation_over_the_message_cap_is_a_400_that_names_the_cap(server):
    """H1: the number of messages is capped; more is a 400 naming the field and the cap."""
    too_many = [{"role": "user", "content": ""}] * (MAX_MESSAGES + 1)
    error = assert_error(server.post(CHAT, {"messages": too_many, "max_tokens": 1}), 400)
    assert error["param"] == "messages" and str(MAX_MESSAGES) in error["message"], error
    at_cap = [{"role": "user", "content": ""}] * MAX_MESSAGES
    assert server.post(CHAT, {"messages": at_cap, "max_tokens": 1}).status_code == 200


def test_h1_trimming_encodes_only_the_turns_it_keeps():
    """H1: the prompt of a long conversation is built from the newest turn back, encoding each
    turn once and never the ones that cannot fit: the work does not grow with the conversation
    (it was quadratic). Counted in calls to the tokenizer's encode, not in time."""
    chat = random_chat_model(block_size=128)
    calls = []
    encode = chat.tokenizer.encode
    chat.tokenizer.encode = lambda text, *a, **k: calls.append(text) or encode(text, *a, **k)
    messages = [Message("system", "You are Hamlet.")]
    messages += [Message("user" if i % 2 == 0 else "assistant", "What news?") for i in range(MAX_MESSAGES - 2)]
    messages.append(Message("user", "Good morrow."))
    ids, left_out, _ = chat.chat_prompt(messages, reserve=8)
    kept = parse_rendered(chat.tokenizer, ids)
    assert kept[0] == messages[0] and kept[1:] == messages[len(messages) - len(kept) + 1:] and len(kept) >= 5
    assert left_out == len(messages) - len(kept)
    # the kept turns, and the one that did not fit: nothing older
    assert len(calls) <= len(kept) + 1, f"{len(calls)} encode calls for a prompt of {len(kept)} turns"


@pytest.mark.parametrize("path, body", [
    (CHAT, {"messages": [{"role": "user", "content": "the king is well"}], "max_tokens": 2}),
    (COMPLETIONS, {"prompt": "the king is well", "max_tokens": 2}),
], ids=["chat", "completions"])
def test_h1_a_prompt_is_tokenized_after_admission_and_off_the_event_loop(path, body):
    """H1: while a prompt is being tokenized (here: held there), the request already holds its
    place (--parallel 1 --queue 0: the next one is a 503) and the event loop answers /health."""
    chat = random_chat_model()
    entered, release = gate_encode(chat.tokenizer, "the king is well")
    with live(chat, Settings(parallel=1, queue=0)) as server, ThreadPoolExecutor(1) as pool:
        first = pool.submit(server.post, path, body)
        try:
            assert entered.wait(30), "the prompt was never tokenized"
            health = server.health()  # the event loop is free
            assert health["waiting"] == 1, f"the request was not admitted before its prompt was built: {health}"
            assert_error(server.post(path, body), 503)
        finally:
            release.set()
        assert first.result(60).status_code == 200


# ---------------------------------------------------------------- H2: a client that leaves, not streaming
def test_h2_a_plain_request_whose_client_leaves_stops_and_frees_its_place():
    """H2: a non-streamed request whose client disconnects stops generating, whether it was
    generating or waiting in the queue, and its place goes to the next."""
    chat = endless_chat_model()
    with live(chat, Settings(parallel=1, queue=1, max_tokens_cap=ENDLESS)) as server:
        generating = server.raw_post(COMPLETIONS, {"prompt": "Good", "max_tokens": ENDLESS})
        assert chat.model.generating.wait(30), "the first request never started generating"
        queued = server.raw_post(CHAT, {"messages": HELLO, "max_tokens": ENDLESS})
        assert server.wait_for_health(lambda h: h["active"] == 1 and h["waiting"] == 1)
        queued.close()
        assert server.wait_for_health(lambda h: h["waiting"] == 0), "a request whose client left kept its place"
        generating.close()
        assert server.wait_for_health(lambda h: h["active"] == 0 and h["waiting"] == 0), "generation went on"
        assert chat.model.calls < ENDLESS, "the reply was generated to its end for nobody"
        assert server.post(COMPLETIONS, {"prompt": "Good", "max_tokens": 2}).status_code == 200


# ---------------------------------------------------------------- C10: a client that leaves mid-body
def test_c10_a_client_that_leaves_in_the_middle_of_its_body_logs_nothing():
    """C10: a body cut short by a disconnect is not an 'Exception in ASGI application'."""
    with live(random_chat_model()) as server, logged("uvicorn.error") as records:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b'Content-Length: 100\r\n\r\n{"prompt":')
        assert server.wait_for_tasks(busy=True), "the request never reached the app"
        sock.close()
        assert server.wait_for_tasks(busy=False), "the request was still being handled"
        assert server.health()["status"] == "ok"
    problems = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert not problems, problems


# ---------------------------------------------------------------- S1: what a web page may do
@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
def test_s1_a_post_must_be_declared_json(server, content_type):
    """S1: a POST whose Content-Type is not application/json (a "simple" cross-origin request a
    web page may send without asking) is a 415, not a generation."""
    body = json.dumps({"prompt": "Good", "max_tokens": 2})
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(server.url + COMPLETIONS, content=body, headers=headers, timeout=30)
    assert_error(response, 415, code="unsupported_media_type")
    ok = httpx.post(server.url + COMPLETIONS, content=body, timeout=30,
                    headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200, ok.text


def test_s1_a_host_header_naming_another_site_is_refused():
    """S1: DNS rebinding: a request whose Host is a name other than localhost or a name given
    with --allowed-host is a 400 on every route; IP addresses and localhost names are fine."""
    with live(random_chat_model(), Settings(allowed_hosts=("my-box.lan",))) as server:
        def get(path, host):
            return httpx.get(server.url + path, headers={"Host": host}, timeout=30)

        for path in ["/", "/health", "/v1/models"]:
            for host in ["evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example", "localhost.evil"]:
                assert_error(get(path, host), 400, code="invalid_host")
            for host in [f"127.0.0.1:{server.port}", f"localhost:{server.port}", "LOCALHOST", "app.localhost",
                         f"[::1]:{server.port}", "10.0.0.7", f"my-box.lan:{server.port}", "My-Box.LAN."]:
                assert get(path, host).status_code == 200, (path, host)
        assert_error(httpx.post(server.url + CHAT, json={"messages": HELLO, "max_tokens": 2},
                                headers={"Host": "evil.example"}, timeout=30), 400, code="invalid_host")


def test_s1_the_page_cannot_be_framed_and_runs_only_its_own_script(server):
    """S1: GET / says X-Frame-Options: DENY and a Content-Security-Policy that forbids framing,
    lets in the page's own inline script and style (by hash) and requests to this server only."""
    response = httpx.get(server.url + "/", timeout=30)
    assert response.status_code == 200 and response.headers["x-frame-options"] == "DENY"
    policy = dict(d.strip().split(" ", 1) for d in response.headers["content-security-policy"].split(";"))
    assert policy["frame-ancestors"] == "'none'" and policy["connect-src"] == "'self'"
    assert policy["default-src"] == "'none'"
    for tag, directive in [("script", "script-src"), ("style", "style-src")]:
        inline = re.findall(rf"<{tag}>(.*?)</{tag}>", response.text, flags=re.DOTALL)
        assert inline, f"the page has no inline {tag}"
        digests = {f"'sha256-{b64encode(sha256(t.encode()).digest()).decode()}'" for t in inline}
        assert set(policy[directive].split()) == digests, directive


# ---------------------------------------------------------------- U4, C8: the command line
@pytest.mark.parametrize("key", ["", " ", " s3cret", "s3cret "])
def test_u4_an_api_key_no_client_could_send_is_refused_at_start(tmp_path, capsys, key):
    """U4: an empty --api-key (or one with spaces at its ends, which HTTP strips) could never be
    matched: the server refuses to start, before loading anything."""
    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(tmp_path / "no-such-run"), "--api-key", key])
    assert exit_.value.code == 2
    assert "--api-key" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["70000", "65536"])
def test_c8_a_port_out_of_range_is_an_argument_error(tmp_path, capsys, port):
    """C8: --port is checked by argparse (0-65535), not by bind() with a traceback."""
    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(tmp_path / "no-such-run"), "--port", port])
    assert exit_.value.code == 2
    assert "argument --port" in capsys.readouterr().err


# ---------------------------------------------------------------- K3-K6
def test_k3_head_works_wherever_get_does(server):
    """K3: HEAD / (and /health, /v1/models) is a 200 without a body, not a 405."""
    for path in ["/", "/health", "/v1/models"]:
        response = httpx.head(server.url + path, timeout=30)
        assert response.status_code == 200 and response.content == b"", path
    assert httpx.head(server.url + "/", timeout=30).headers["content-type"].startswith("text/html")


def test_k4_the_bearer_scheme_is_case_insensitive_and_the_key_is_not():
    """K4: `bearer KEY` and `BEARER KEY` open the API (RFC 7235); a key in another case does not."""
    with live(random_chat_model(), Settings(api_key="Open-Sesame")) as server:
        def models(authorization):
            return httpx.get(server.url + "/v1/models", headers={"Authorization": authorization}, timeout=30)

        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"]:
            assert models(f"{scheme} Open-Sesame").status_code == 200, scheme
        for wrong in ["Bearer open-sesame", "Basic Open-Sesame", "Open-Sesame", "Bearer", "BearerOpen-Sesame"]:
            assert_error(models(wrong), 401, code="invalid_api_key")


def test_k5_echo_of_an_empty_prompt_is_empty(server):
    """K5: echo echoes what the client sent: "" for an empty prompt, not <|endoftext|>."""
    for logprobs in [None, 5]:
        response = server.post(COMPLETIONS, {"prompt": "", "echo": True, "logprobs": logprobs, "max_tokens": 0})
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        assert choice["text"] == ""
        if logprobs is not None:
            assert choice["logprobs"]["tokens"] == [] and choice["logprobs"]["text_offset"] == []


UNSUPPORTED = {
    # name: (path, extra fields, the field the error must name)
    "presence_penalty 5": (CHAT, {"presence_penalty": 5}, "presence_penalty"),
    "presence_penalty a string": (CHAT, {"presence_penalty": "x"}, "presence_penalty"),
    "frequency_penalty -0.5": (COMPLETIONS, {"frequency_penalty": -0.5}, "frequency_penalty"),
    "tools": (CHAT, {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    "tool_choice required": (CHAT, {"tool_choice": "required"}, "tool_choice"),
    "response_format json": (CHAT, {"response_format": {"type": "json_object"}}, "response_format"),
    "a field no one implements": (CHAT, {"repetition_penalty": 1.2}, "repetition_penalty"),
    "a field no one implements on completions": (COMPLETIONS, {"min_tokens": 5}, "min_tokens"),
    "best_of 2": (COMPLETIONS, {"best_of": 2}, "best_of"),
    "suffix": (COMPLETIONS, {"suffix": " and so farewell."}, "suffix"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_k6_a_field_asking_for_what_the_server_does_not_do_is_a_400_naming_it(server, case):
    """K6: never silently ignored: a nonzero penalty, tools, a response format, best_of, suffix
    and any field the server does not know are each a 400 whose `param` names the field."""
    path, extra, field = UNSUPPORTED[case]
    base = {"messages": HELLO} if path == CHAT else {"prompt": "Good"}
    error = assert_error(server.post(path, {**base, "max_tokens": 2, **extra}), 400)
    assert error["param"] == field, error


def test_k6_the_same_fields_asking_for_nothing_are_accepted(server):
    """K6's control: the values that change nothing (what many clients send) are a 200."""
    neutral = {"presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}}
    chat = server.post(CHAT, {"messages": HELLO, "max_tokens": 2, "tools": [], "tool_choice": "none",
                              "response_format": {"type": "text"}, **neutral})
    assert chat.status_code == 200, chat.text
    completion = server.post(COMPLETIONS, {"prompt": "Good", "max_tokens": 2, "best_of": 1, "suffix": "", **neutral})
    assert completion.status_code == 200, completion.text


# ---------------------------------------------------------------- a client that writes before it reads
def test_an_oversized_body_written_whole_before_reading_still_gets_its_413():
    """Python's urllib writes the whole body before it reads: the server reads and drops a
    refused body (up to DISCARD_BYTES) instead of closing on it, so the client sees the 413, not
    a reset connection. Several MB: more than the sockets' buffers hold."""
    size = DISCARD_BYTES - 1_000_000
    with live(random_chat_model(), Settings(max_body_bytes=20_000)) as server:
        request = urllib.request.Request(server.url + COMPLETIONS, data=b" " * size,
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 413
        assert json.loads(refused.value.read())["error"]["code"] == "request_too_large"
        assert server.health()["status"] == "ok"


# ---------------------------------------------------------------- the real command
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    (root / "verse.txt").write_text(verse(WORDS, 200, 0), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VINTAGELM_CACHE", str(root / "cache"))
        assert main(["train", "--data", str(root / "verse.txt"), "--out", str(root / "tiny"), "--max-iters", "2",
                     *TINY]) == 0
    (root / "logs").mkdir()
    return root


def test_s1_vintage_serve_allows_the_hosts_given_with_allowed_host(tiny_run):
    """S1 through the CLI: --allowed-host adds a name (any case); other names are refused."""
    server = Server(tiny_run / "tiny", tiny_run / "logs", "--allowed-host", "My-Box.lan", "--allowed-host", "other")
    try:
        def status(host):
            return httpx.get(server.url + "/health", headers={"Host": host}, timeout=30).status_code

        assert status(f"my-box.lan:{server.port}") == status("other") == status("localhost") == 200
        assert status("evil.example") == status("my-box.lan.evil") == 400
    finally:
        server.stop()
