"""The OpenAI wire format, as clients send and read it: request bodies checked field by field
into plain dataclasses, and the JSON objects of responses and stream chunks. The sampling
fields of a request become one generate.SamplingSettings here, which the reply is given whole.

Every mistake in a request is an ApiError that names the field (`param`), so a client sees
{"error": {"message", "type", "param", "code"}} with a 4xx, never a 500. Fields a client may
send that change nothing here (`user`, penalties of 0, an empty `tools` list, ...) are accepted
and ignored; a field that asks for what this server does not do (a nonzero penalty, tools, a
response format, logit_bias, best_of, suffix) is a 400 that names it, never silently ignored.
"""
import json
import numbers
import secrets
import time
from dataclasses import dataclass

from vintagelm.chat.format import ROLES, Message
from vintagelm.generate import SamplingSettings

MAX_STOPS = 4  # as OpenAI: up to 4 stop strings
MAX_MESSAGES = 2048  # as OpenAI; far more than any context here holds (each turn takes 2 tokens at least)
PENALTIES = ("presence_penalty", "frequency_penalty")
# what this server does not do, each with the values that ask for nothing (those are accepted)
UNSUPPORTED = {
    "logit_bias": [{}],
    "tools": [[]], "tool_choice": ["none", "auto"], "functions": [[]], "function_call": ["none", "auto"],
    "response_format": [{"type": "text"}],
    "best_of": [1], "suffix": [""],
}
UNSUPPORTED_CHAT = ("logit_bias", "tools", "tool_choice", "functions", "function_call", "response_format")
UNSUPPORTED_COMPLETIONS = ("logit_bias", "best_of", "suffix")
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
    prompt: str
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
    value = doc.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ApiError(400, "stop must be a string or a list of strings", "stop")
    if len(value) > MAX_STOPS:
        raise ApiError(400, f"stop takes at most {MAX_STOPS} strings, got {len(value)}", "stop")
    return value


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


def shared_fields(doc, max_tokens, max_tokens_cap, logprobs):
    """The fields both endpoints read -> the keyword arguments of a Request: the sampling ones
    made into one SamplingSettings (every field checked here first, so that a mistake is a 400
    naming the request's own field)."""
    if doc.get("n") is not None and doc.get("n") != 1:
        raise ApiError(400, f"n must be 1 (one reply per request), got {doc.get('n')!r}", "n")
    options = doc.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    if max_tokens > max_tokens_cap:
        raise ApiError(400, f"max_tokens must be at most {max_tokens_cap} on this server, got {max_tokens}", "max_tokens")
    sampling = SamplingSettings(
        max_new_tokens=max_tokens,
        temperature=number(doc, "temperature", 1.0, 0.0, 2.0),
        top_k=integer(doc, "top_k", None, 1),
        top_p=number(doc, "top_p", None, 0.0, 1.0, low_open=True),
        seed=integer(doc, "seed", None, 0, 2**63 - 1),
        stop=stop_strings(doc),
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


def chat_request(doc, name, default_max_tokens, max_tokens_cap):
    """A /v1/chat/completions body (parsed JSON) -> ChatRequest."""
    if not isinstance(doc, dict):
        raise ApiError(400, "the request body must be a JSON object")
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
    return ChatRequest(messages=messages, **shared_fields(doc, max_tokens, max_tokens_cap, logprobs))


def completion_request(doc, name, max_tokens_cap):
    """A /v1/completions body (parsed JSON) -> CompletionRequest."""
    if not isinstance(doc, dict):
        raise ApiError(400, "the request body must be a JSON object")
    check_model(doc, name)
    prompt = doc.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch of one
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (one prompt per request)", "prompt")
    refuse_unsupported(doc, UNSUPPORTED_COMPLETIONS)
    echo = boolean(doc, "echo")
    max_tokens = integer(doc, "max_tokens", 16, 0)
    if max_tokens == 0 and not echo:
        raise ApiError(400, "max_tokens must be at least 1 (0 only with echo, to score a prompt)", "max_tokens")
    logprobs = integer(doc, "logprobs", None, 0, MAX_TOP_LOGPROBS["completions"])
    shared = shared_fields(doc, max_tokens, max_tokens_cap, logprobs)
    return CompletionRequest(prompt=prompt, echo=echo, **shared,
                             truncate_prompt_tokens=integer(doc, "truncate_prompt_tokens", None, 1))


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
