"""The OpenAI wire format, as clients send and read it: request bodies checked field by field
into plain dataclasses, and the JSON objects of responses and stream chunks. The sampling
fields of a request become one generate.SamplingSettings here, which the reply is given whole.

Every mistake in a request is an ApiError that names the field (`param`), so a client sees
{"error": {"message", "type", "param", "code"}} with a 4xx, never a 500. Nothing a client sends
is silently ignored: a field that asks for what this server does not do (a nonzero penalty,
tools, a response format, best_of, suffix) is a 400 that names it, and so is any field this
server does not know; only values that ask for nothing (a penalty of 0, an empty `tools` list,
n of 1, `user`, a label) are accepted and change nothing.

/v1/completions also speaks the dialect that vLLM established and lm-evaluation-harness uses: a
prompt may be token ids ([int]) or a batch (a list of strings or of id lists), answered with
one choice per prompt, each with its `index`; the tokenizer's own endpoints (tokenize_request,
detokenize_request) sit at the server root.
"""
import json
import numbers
import secrets
import time
from dataclasses import dataclass

from vintagelm.chat.format import ROLES, Message
from vintagelm.generate import SamplingSettings

MAX_MESSAGES = 2048  # as OpenAI; far more than any context here holds (each turn takes 2 tokens at least)
MAX_PROMPTS = 2048  # prompts in one /v1/completions batch, as OpenAI
MAX_BIAS = 100  # logit_bias values lie in [-100, 100], as OpenAI's
PENALTIES = ("presence_penalty", "frequency_penalty")
# what this server does not do, each with the values that ask for nothing (those are accepted)
UNSUPPORTED = {
    "tools": [[]], "tool_choice": ["none", "auto"], "functions": [[]], "function_call": ["none", "auto"],
    "response_format": [{"type": "text"}],
    "best_of": [1], "suffix": [""],
}
UNSUPPORTED_CHAT = ("tools", "tool_choice", "functions", "function_call", "response_format")
UNSUPPORTED_COMPLETIONS = ("best_of", "suffix")
# every field each endpoint reads; any other is refused by name
SHARED_FIELDS = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options",
                 "logprobs", "n", "user", "logit_bias", *PENALTIES}
CHAT_FIELDS = SHARED_FIELDS | {"messages", "max_completion_tokens", "top_logprobs", *UNSUPPORTED_CHAT}
COMPLETION_FIELDS = SHARED_FIELDS | {"prompt", "echo", "truncate_prompt_tokens", *UNSUPPORTED_COMPLETIONS}
MESSAGE_FIELDS = {"role", "content"}
STREAM_OPTIONS = {"include_usage"}
TOKENIZE_FIELDS = {"model", "prompt", "add_special_tokens"}
DETOKENIZE_FIELDS = {"model", "tokens"}
MAX_TOP_LOGPROBS = {"chat": 20, "completions": 5}


class ApiError(Exception):
    """An error response: HTTP status, message, and OpenAI's type / param / code."""

    def __init__(self, status, message, param=None, type="invalid_request_error", code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers or {}

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(kw_only=True)
class Request:
    """What both endpoints share: how to sample, and how the answer is sent."""
    sampling: SamplingSettings  # passed whole to the reply (chat.reply.Reply)
    stream: bool = False
    include_usage: bool = False
    logprobs: int = None  # None: no log-probabilities; k: with the k most likely alternatives


@dataclass(kw_only=True)
class ChatRequest(Request):
    messages: list  # [Message, ...]


@dataclass(kw_only=True)
class CompletionRequest(Request):
    prompts: list  # [str or [int], ...]: one choice each, in this order
    echo: bool = False
    truncate_prompt_tokens: int = None


# ---------------------------------------------------------------- checking fields
def number(doc, name, default, low, high, low_open=False):
    value = doc.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ApiError(400, f"{name} must be a number, got {value!r}", name)
    if not (low < value if low_open else low <= value) or value > high:
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ApiError(400, f"{name} must be in {bound}, got {value}", name)
    return float(value)


def integer(doc, name, default, low, high=None):
    value = doc.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer, got {value!r}", name)
    if value < low or (high is not None and value > high):
        limit = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(400, f"{name} must be {limit}, got {value}", name)
    return value


def boolean(doc, name, default=False):
    value = doc.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, got {value!r}", name)
    return value


def stop_strings(doc):
    """As many stop strings as the client sends (the body limit bounds them), each once."""
    value = doc.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ApiError(400, "stop must be a string or a list of strings", "stop")
    return list(dict.fromkeys(value))


def token_ids(value, vocab_size, name):
    """A list of token ids, each an integer in [0, vocab_size) -> the list; a 400 naming `name`."""
    if not isinstance(value, list) or not all(type(i) is int for i in value):
        raise ApiError(400, f"{name} must be a list of token ids (integers)", name)
    bad = next((i for i in value if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise ApiError(400, f"{name} holds the token id {bad}; this model's ids are 0..{vocab_size - 1}", name)
    return value


def logit_bias(doc, vocab_size):
    """{"token id": bias, ...} -> {id: bias}: JSON keys are strings, so ids come as decimal text."""
    value = doc.get("logit_bias")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, 'logit_bias must be an object of token ids and biases, as {"50256": -100}', "logit_bias")
    biases = {}
    for key, bias in value.items():
        if not (key.isascii() and key.isdigit()) or int(key) >= vocab_size:
            raise ApiError(400, f"logit_bias: {key!r} is not a token id of this model (0..{vocab_size - 1})",
                           "logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, numbers.Real) or not -MAX_BIAS <= bias <= MAX_BIAS:
            raise ApiError(400, f"logit_bias: the bias of token {key} must be a number in [-{MAX_BIAS}, {MAX_BIAS}], "
                                f"got {bias!r}", "logit_bias")
        biases[int(key)] = float(bias)
    return biases


def refuse_unknown(doc, known, where=""):
    """A 400 naming the first field of the object `doc` that is not in `known`: a field this
    server does not read would otherwise be silently ignored."""
    for name in doc:
        if name not in known:
            raise ApiError(400, f"{where}{name} is not a field this server knows or implements: leave it out",
                           f"{where}{name}", code="unknown_field")


def refuse_unsupported(doc, names):
    """A 400 for a nonzero penalty, or for the first of `names` (fields of UNSUPPORTED) that asks
    for something this server does not do."""
    for name in PENALTIES:
        value = doc.get(name)
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, type(None))):
            raise ApiError(400, f"{name} must be a number, got {value!r}", name)
        if value:  # NaN too
            raise ApiError(400, f"{name} is not supported by this server: leave it out or send 0, got {value}", name)
    for name in names:
        value = doc.get(name)
        neutral = UNSUPPORTED[name]
        if value is not None and not any(type(value) is type(v) and value == v for v in neutral):
            accepted = " or ".join(json.dumps(v) for v in neutral)
            raise ApiError(400, f"{name} is not supported by this server: leave it out or send {accepted}", name)


def shared_fields(doc, max_tokens, max_tokens_cap, logprobs, vocab_size):
    """The fields both endpoints read -> the keyword arguments of a Request: the sampling ones
    made into one SamplingSettings (every field checked here first, so that a mistake is a 400
    naming the request's own field)."""
    if doc.get("n") is not None and doc.get("n") != 1:
        raise ApiError(400, f"n must be 1 (one reply per request), got {doc.get('n')!r}", "n")
    if doc.get("user") is not None and not isinstance(doc.get("user"), str):
        raise ApiError(400, "user must be a string", "user")
    options = doc.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    refuse_unknown(options or {}, STREAM_OPTIONS, "stream_options.")
    if max_tokens > max_tokens_cap:
        raise ApiError(400, f"max_tokens must be at most {max_tokens_cap} on this server, got {max_tokens}", "max_tokens")
    sampling = SamplingSettings(
        max_new_tokens=max_tokens,
        temperature=number(doc, "temperature", 1.0, 0.0, 2.0),
        top_k=integer(doc, "top_k", None, 1),
        top_p=number(doc, "top_p", None, 0.0, 1.0, low_open=True),
        seed=integer(doc, "seed", None, 0, 2**63 - 1),
        stop=stop_strings(doc),
        logit_bias=logit_bias(doc, vocab_size),
    )
    return dict(sampling=sampling, stream=boolean(doc, "stream"), include_usage=boolean(options or {}, "include_usage"),
                logprobs=logprobs)


def check_model(doc, name):
    model = doc.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "model must be a string", "model")
    if model not in (None, "", name):
        raise ApiError(404, f"the model {model!r} does not exist; this server has {name!r}", "model",
                       code="model_not_found")


def json_object(doc, known):
    """A request body (parsed JSON) that must be an object holding only the `known` fields."""
    if not isinstance(doc, dict):
        raise ApiError(400, "the request body must be a JSON object")
    refuse_unknown(doc, known)


def chat_request(doc, name, default_max_tokens, max_tokens_cap, vocab_size):
    """A /v1/chat/completions body (parsed JSON) -> ChatRequest."""
    json_object(doc, CHAT_FIELDS)
    check_model(doc, name)
    raw = doc.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    if len(raw) > MAX_MESSAGES:
        raise ApiError(400, f"messages holds {len(raw)} messages, more than this server's limit of {MAX_MESSAGES}",
                       "messages")
    refuse_unsupported(doc, UNSUPPORTED_CHAT)
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        refuse_unknown(m, MESSAGE_FIELDS, f"messages[{i}].")
        content = m.get("content")
        if isinstance(content, list):  # the content-parts form: [{"type": "text", "text": ...}]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", f"messages[{i}].content")
        messages.append(Message(m["role"], content))
    limit = "max_completion_tokens" if doc.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = integer(doc, limit, default_max_tokens, 1)
    logprobs = None
    if boolean(doc, "logprobs"):
        logprobs = integer(doc, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS["chat"])
    elif doc.get("top_logprobs") is not None:
        raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    return ChatRequest(messages=messages, **shared_fields(doc, max_tokens, max_tokens_cap, logprobs, vocab_size))


def prompts(doc, vocab_size):
    """A completion's `prompt` -> [prompt, ...], each a string or a list of token ids: a string,
    a list of ids (one prompt), or a batch, a list of strings or of id lists."""
    prompt = doc.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    shape = "prompt must be a string, a list of token ids, or a batch: a list of strings or of token-id lists"
    if not isinstance(prompt, list) or not prompt:
        raise ApiError(400, shape, "prompt")
    if all(type(i) is int for i in prompt):
        return [token_ids(prompt, vocab_size, "prompt")]
    if len(prompt) > MAX_PROMPTS:
        raise ApiError(400, f"prompt holds {len(prompt)} prompts, more than this server's limit of {MAX_PROMPTS}",
                       "prompt")
    if all(isinstance(p, str) for p in prompt):
        return prompt
    if not all(isinstance(p, list) and p for p in prompt):
        raise ApiError(400, shape, "prompt")
    return [token_ids(p, vocab_size, f"prompt[{i}]") for i, p in enumerate(prompt)]


def completion_request(doc, name, max_tokens_cap, vocab_size):
    """A /v1/completions body (parsed JSON) -> CompletionRequest."""
    json_object(doc, COMPLETION_FIELDS)
    check_model(doc, name)
    batch = prompts(doc, vocab_size)
    refuse_unsupported(doc, UNSUPPORTED_COMPLETIONS)
    echo = boolean(doc, "echo")
    max_tokens = integer(doc, "max_tokens", 16, 0)
    if max_tokens == 0 and not echo:
        raise ApiError(400, "max_tokens must be at least 1 (0 only with echo, to score a prompt)", "max_tokens")
    logprobs = integer(doc, "logprobs", None, 0, MAX_TOP_LOGPROBS["completions"])
    shared = shared_fields(doc, max_tokens, max_tokens_cap, logprobs, vocab_size)
    return CompletionRequest(prompts=batch, echo=echo, **shared,
                             truncate_prompt_tokens=integer(doc, "truncate_prompt_tokens", None, 1))


def tokenize_request(doc, name):
    """A /tokenize body -> the text to tokenize. `add_special_tokens` is read and changes nothing:
    these tokenizers add no token of their own to a text (as GPT-2's; /tokenizer_info says
    add_bos_token false); special-token strings in the text become their ids either way."""
    json_object(doc, TOKENIZE_FIELDS)
    check_model(doc, name)
    if not isinstance(doc.get("prompt"), str):
        raise ApiError(400, "prompt must be a string", "prompt")
    boolean(doc, "add_special_tokens", True)
    return doc["prompt"]


def detokenize_request(doc, name, vocab_size):
    """A /detokenize body -> the token ids to turn into text."""
    json_object(doc, DETOKENIZE_FIELDS)
    check_model(doc, name)
    return token_ids(doc.get("tokens"), vocab_size, "tokens")


# ---------------------------------------------------------------- responses
def new_id(prefix):
    return f"{prefix}-{secrets.token_hex(12)}"


def now():
    return int(time.time())


def usage(prompt_tokens, completion_tokens):
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def token_bytes(tokenizer, token_id):
    if hasattr(tokenizer, "decode_bytes"):
        return list(tokenizer.decode_bytes([token_id]))
    return list(tokenizer.decode([token_id]).encode("utf-8"))


def chat_logprobs(tokenizer, tokens):
    """chat.reply Tokens -> OpenAI's chat `logprobs` object."""
    def entry(text, logprob, token_id=None):
        raw = token_bytes(tokenizer, token_id) if token_id is not None else list(text.encode("utf-8"))
        return {"token": text, "logprob": logprob, "bytes": raw}

    return {"content": [{**entry(t.text, t.logprob, t.id), "top_logprobs": [entry(s, lp) for s, lp in t.top]}
                        for t in tokens]}


def completion_logprobs(entries):
    """[(token text, logprob or None, [(text, logprob), ...] or None, text offset), ...] -> the legacy
    completions `logprobs` object."""
    return {"tokens": [e[0] for e in entries], "token_logprobs": [e[1] for e in entries],
            "top_logprobs": [None if e[2] is None else dict(e[2]) for e in entries],
            "text_offset": [e[3] for e in entries]}
