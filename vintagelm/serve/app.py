"""`vintage serve`: the chat page and an OpenAI-compatible API over one model (FastAPI).

Routes: GET / (the page), GET /health, GET /v1/models, GET /v1/models/{id} and GET /tokenizer_info
(each also HEAD), POST /v1/chat/completions and POST /v1/completions, and the tokenizer's own
POST /tokenize and POST /detokenize at the root, where vLLM has them and lm-evaluation-harness
looks for them (protocol.py holds the wire format). How requests share one model:
  * a request takes its place (or gets a 503 with Retry-After) before any work on its prompt;
    the prompt is then tokenized, and the reply generated one piece of text per call, in worker
    threads, so the event loop stays free to accept, stream and notice a client that went away;
  * at most `parallel` replies run at once (they take turns token by token on the model's lock,
    chat/reply.py); up to `queue` more wait;
  * a request whose client disconnects, streamed or not, is cancelled between two pieces: its
    generation stops and its place goes to the next.
What a web page in the user's browser may do to a server on this machine is limited too: a POST
must say `Content-Type: application/json` (which a page cannot send to another site without
asking first), a Host header must name this server (DNS rebinding), and the chat page cannot
be framed.
"""
import asyncio
import base64
import hashlib
import ipaddress
import json
import re
import secrets
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from importlib.resources import files
from urllib.parse import urlsplit

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from vintagelm.chat.format import special_ids
from vintagelm.chat.reply import Reply
from vintagelm.common import UserError
from vintagelm.export.chat_template import chat_template
from vintagelm.generate import encode_prompt
from vintagelm.serve import protocol
from vintagelm.serve.protocol import ApiError

DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "max_tokens": 200}  # what the page starts with
RETRY_AFTER_S = "2"
# A refused body is still read (and dropped) up to this many bytes: a client that writes its whole
# body before reading the answer (Python's urllib) then gets the 413, not a reset connection.
DISCARD_BYTES = 10_000_000


@dataclass
class Settings:
    api_key: str = None  # when set, every /v1 request needs `Authorization: Bearer <key>`
    parallel: int = 2  # replies generated at once
    queue: int = 16  # requests waiting beyond those
    max_tokens_cap: int = 1024
    max_body_bytes: int = 1_000_000
    default_max_tokens: int = 200  # chat, when a request gives none
    allowed_hosts: tuple = ()  # host names a Host header may give besides localhost and IP addresses


class Admission:
    """Counts the requests in flight and lets `parallel` of them generate at once.

    A request takes its place (`enter`) in the handler, before any await, so that requests
    arriving together cannot all pass the check; it gives it back when its response is done,
    streamed or not, whether or not a stream ever started."""

    def __init__(self, parallel, queue):
        self.parallel, self.queue = parallel, queue
        self.in_flight = self.active = 0
        self._running = None  # asyncio.Semaphore, made inside the server's event loop

    def enter(self):
        """-> a function that gives the place back (calling it again does nothing); 503 when full."""
        if self.in_flight >= self.parallel + self.queue:
            raise ApiError(503, f"the server is busy ({self.in_flight} requests in flight); retry shortly", None,
                           type="server_busy", code="server_busy", headers={"Retry-After": RETRY_AFTER_S})
        self.in_flight += 1
        done = False

        def leave():
            nonlocal done
            if not done:
                done = True
                self.in_flight -= 1
        return leave

    @asynccontextmanager
    async def running(self):
        """Wait for one of the `parallel` places to generate in."""
        if self._running is None:
            self._running = asyncio.Semaphore(self.parallel)
        async with self._running:
            self.active += 1
            try:
                yield
            finally:
                self.active -= 1


class ReleasingStream(StreamingResponse):
    """A stream that calls `release` when it is over: finished, failed, or its client gone
    before the first byte (when the body's generator never even starts)."""

    def __init__(self, content, release, **kwargs):
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


class HostCheck:
    """ASGI middleware: a request whose Host header names another site is a 400. A web page the
    user visits can make its own name resolve to 127.0.0.1 (DNS rebinding) and then read this
    server's answers as its own; its requests still carry its name in Host."""

    def __init__(self, app, allowed_hosts):
        self.app, self.allowed_hosts = app, {h.lower().rstrip(".") for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host and not self.allowed(host):
                error = ApiError(400, f"this server does not answer to the host name in `Host: {host}`; start it "
                                      "with --allowed-host NAME to allow a name", code="invalid_host")
                await JSONResponse(error.body(), status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def allowed(self, host):
        """An IP address (no name to rebind), a localhost name (browsers resolve those to this
        machine themselves), or a name given to the server."""
        try:
            name = urlsplit("//" + host).hostname
        except ValueError:
            return False
        if not name:
            return False
        name = name.rstrip(".")
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return name == "localhost" or name.endswith(".localhost") or name in self.allowed_hosts


def page_headers(page):
    """The chat page's headers: it may not be framed (it keeps the API key), and it may run only
    its own inline script and style (allowed by their hashes) and talk only to this server."""
    def hashes(tag):
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies)

    policy = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
              "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": policy, "X-Frame-Options": "DENY"}


def create_app(chat_model, settings=None):
    """The ASGI app serving `chat_model` (a chat.reply.ChatModel)."""
    settings = settings or Settings()
    admission = Admission(settings.parallel, settings.queue)
    name, tokenizer = chat_model.name, chat_model.tokenizer
    page = files("vintagelm.serve").joinpath("page.html").read_text(encoding="utf-8")
    headers_of_page = page_headers(page)
    # no /docs, /redoc or /openapi.json: they load their scripts from a CDN
    app = FastAPI(title="vintagelm", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(HostCheck, allowed_hosts=settings.allowed_hosts)

    @app.exception_handler(ApiError)
    async def api_error(request, e):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request, e):  # nobody reads this answer, and nothing is logged
        return Response(status_code=499)  # nginx's "client closed request"

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e):
        message = {404: f"no route {request.method} {request.url.path}", 405: f"{request.method} is not allowed on "
                   f"{request.url.path}"}.get(e.status_code, str(e.detail))
        return JSONResponse(ApiError(e.status_code, message, code="not_found" if e.status_code == 404 else None).body(),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request, e):  # a bug: say so in the protocol's shape; the server lives on
        return JSONResponse(ApiError(500, f"internal error: {type(e).__name__}: {e}", type="server_error").body(),
                            status_code=500)

    def authorize(request):
        """The `Authorization: Bearer KEY` check: the scheme in any case (RFC 7235), the key exactly."""
        if settings.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        # compare_digest on the key, whatever the scheme, so that timing tells nothing about it
        key_ok = secrets.compare_digest(given.strip().encode(), settings.api_key.encode())
        if not (key_ok and scheme.lower() == "bearer"):
            raise ApiError(401, "missing or wrong API key: send the header `Authorization: Bearer <key>`",
                           type="authentication_error", code="invalid_api_key")

    async def read_body(request):
        """An authorized POST's JSON. Refused before its body is read: a wrong key, a Content-Type
        other than JSON, and a Content-Length over max_body_bytes; a body that grows past that
        limit is refused as soon as it does. The rest of a refused body is then read and dropped
        (when it is at most DISCARD_BYTES), so that a client still writing it sees the refusal."""
        chunks = request.stream()
        length = request.headers.get("content-length", "")
        declared = int(length) if length.isdigit() else None
        try:
            authorize(request)
            check_json_content_type(request)
            body = await read_limited(chunks, declared, settings.max_body_bytes)
        except ApiError:
            if declared is None or declared <= DISCARD_BYTES:
                await discard(chunks)
            raise
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None

    async def admitted(build):
        """Take a place (or a 503), then run `build` (tokenizing a prompt: CPU work, as long as
        the prompt) in a worker thread -> (its result, the function that gives the place back)."""
        leave = admission.enter()
        try:
            return await anyio.to_thread.run_sync(build), leave
        except BaseException:
            leave()
            raise

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page, headers=headers_of_page)

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        return {"status": "ok", "model": name, "context_length": chat_model.block_size, "active": admission.active,
                "waiting": admission.in_flight - admission.active, "max_tokens_cap": settings.max_tokens_cap,
                "api_key_required": settings.api_key is not None, "defaults": DEFAULTS}

    def model_entry():
        return {"id": name, "object": "model", "created": started, "owned_by": "vintagelm",
                "context_length": chat_model.block_size}

    @app.api_route("/v1/models", methods=["GET", "HEAD"])
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [model_entry()]}

    @app.api_route("/v1/models/{model_id:path}", methods=["GET", "HEAD"])
    async def model(request: Request, model_id: str):
        authorize(request)
        if model_id != name:
            raise ApiError(404, f"the model {model_id!r} does not exist; this server has {name!r}", "model",
                           code="model_not_found")
        return model_entry()

    # ---------------------------------------------------------------- the tokenizer, at the root
    # what a client needs to tokenize as the model does: the special tokens' roles (lm-eval's
    # rolling perplexity starts every document from eos_token), the chat template, the context
    tokenizer_info_doc = {**tokenizer.hf_tokenizer_config(chat_template=template_of(tokenizer),
                                                          model_max_length=chat_model.block_size),
                          "vocab_size": tokenizer.vocab_size}

    @app.api_route("/tokenizer_info", methods=["GET", "HEAD"])
    async def tokenizer_info(request: Request):
        authorize(request)
        return tokenizer_info_doc

    @app.post("/tokenize")
    async def tokenize(request: Request):
        text = protocol.tokenize_request(await read_body(request), name)

        def encode():
            try:
                return tokenizer.encode(text, allowed_special="all")
            except UserError as e:
                raise ApiError(400, f"the prompt cannot be encoded: {e}", "prompt") from None

        ids, leave = await admitted(encode)
        leave()
        return {"tokens": ids, "count": len(ids), "max_model_len": chat_model.block_size}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        ids = protocol.detokenize_request(await read_body(request), name, tokenizer.vocab_size)
        text, leave = await admitted(lambda: tokenizer.decode(ids))
        leave()
        return {"prompt": text}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = protocol.chat_request(await read_body(request), name, settings.default_max_tokens, settings.max_tokens_cap,
                                    tokenizer.vocab_size)

        def chat_reply():
            try:
                reserve = min(req.sampling.max_new_tokens, chat_model.block_size // 2)
                prompt, _, _ = chat_model.chat_prompt(req.messages, reserve=reserve)
            except UserError as e:  # a tokenizer without the role tokens: this model cannot chat
                raise ApiError(400, str(e), "model") from None
            return Reply(chat_model, prompt, req.sampling, rules=chat_model.chat_rules(), logprobs=req.logprobs)

        reply, leave = await admitted(chat_reply)
        meta = {"id": protocol.new_id("chatcmpl"), "created": protocol.now(), "model": name}
        if req.stream:
            return event_stream(chat_chunks(reply, req, meta), leave)
        try:
            text = await generated(request, lambda: whole_text(reply))
        finally:
            leave()
        logprobs = protocol.chat_logprobs(tokenizer, reply.tokens) if req.logprobs is not None else None
        return {**meta, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                             "finish_reason": reply.finish_reason}],
                "usage": protocol.usage(reply.prompt_tokens, reply.completion_tokens)}

    async def generated(request, work):
        """-> await work() (a coroutine function that generates) in one of the `parallel` places;
        ClientDisconnect as soon as the client leaves, waiting or generating (`work` is cancelled,
        which stops a generation between two pieces)."""
        async def in_place():
            async with admission.running():
                return await work()
        return await unless_client_leaves(request, in_place())

    async def chat_chunks(reply, req, meta):
        """The events of one streamed chat reply (see protocol.py for the shape)."""
        def chunk(delta, finish_reason=None, logprobs=None):
            return {**meta, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}

        async with admission.running():
            yield chunk({"role": "assistant", "content": ""})
            shown = 0  # tokens whose log-probabilities were sent
            async for piece in pieces(reply):
                logprobs = None
                if req.logprobs is not None:
                    logprobs = protocol.chat_logprobs(tokenizer, reply.tokens[shown:])
                    shown = len(reply.tokens)
                yield chunk({"content": piece}, logprobs=logprobs)
            yield chunk({}, reply.finish_reason)
            if req.include_usage:
                yield {**meta, "object": "chat.completion.chunk", "choices": [],
                       "usage": protocol.usage(reply.prompt_tokens, reply.completion_tokens)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = protocol.completion_request(await read_body(request), name, settings.max_tokens_cap, tokenizer.vocab_size)

        def batch():
            """One Completion per prompt, in order; a prompt the model cannot take is a 400 naming it."""
            out = []
            for i, prompt in enumerate(req.prompts):
                ids = prompt_ids(prompt, "prompt" if len(req.prompts) == 1 else f"prompt[{i}]")
                # an empty prompt is generated from <|endoftext|> (encode_prompt), which the client never sent
                echoed = tokenizer.decode(ids) if req.echo and prompt else ""
                reply = Reply(chat_model, ids, req.sampling, rules=chat_model.text_rules(), logprobs=req.logprobs)
                out.append(Completion(i, ids, echoed, reply))
            return out

        def prompt_ids(prompt, param):
            if isinstance(prompt, str):
                try:
                    ids = encode_prompt(tokenizer, prompt)
                except UserError as e:
                    raise ApiError(400, str(e), param) from None
            else:
                ids = prompt
            if req.truncate_prompt_tokens is not None:
                ids = ids[-req.truncate_prompt_tokens:]
            if len(ids) > chat_model.block_size:
                raise ApiError(400, f"{param} has {len(ids)} tokens, more than the model's context of "
                                    f"{chat_model.block_size}; shorten it or pass truncate_prompt_tokens", param,
                               code="context_length_exceeded")
            return ids

        answers, leave = await admitted(batch)
        meta = {"id": protocol.new_id("cmpl"), "created": protocol.now(), "model": name}
        if req.stream:
            return event_stream(completion_chunks(answers, req, meta), leave)

        async def every_choice():
            return [await whole_choice(a, req.logprobs) for a in answers]

        try:
            choices = await generated(request, every_choice)
        finally:
            leave()
        return {**meta, "object": "text_completion", "choices": choices,
                "usage": protocol.usage(sum(a.reply.prompt_tokens for a in answers),
                                        sum(a.reply.completion_tokens for a in answers))}

    async def whole_choice(answer, top_n):
        """One prompt's choice: its echo, the prompt scored, then the continuation generated."""
        prompt_entries = await scored_prompt(answer.ids, top_n, answer.echoed)
        text = await whole_text(answer.reply)
        logprobs = None
        if top_n is not None:
            logprobs = protocol.completion_logprobs(prompt_entries + generated_entries(answer.reply, answer.echoed))
        return {"index": answer.index, "text": answer.echoed + text, "logprobs": logprobs,
                "finish_reason": answer.reply.finish_reason}

    async def scored_prompt(ids, top_n, echoed):
        """With echo and logprobs (top_n alternatives): the prompt's own tokens, each with its
        log-probability."""
        if not (echoed and top_n is not None):
            return []
        scored = await anyio.to_thread.run_sync(chat_model.prompt_logprobs, ids, top_n)
        entries, offset = [], 0
        for token_id, (logprob, top) in zip(ids, scored):
            text = chat_model.token_text(token_id)
            entries.append((text, logprob, None if logprob is None else top, offset))
            offset += len(text)
        return entries

    async def completion_chunks(answers, req, meta):
        """The events of a streamed completion: each prompt's choice in turn (its echo, its
        pieces, a last chunk with its finish_reason), then the usage of all of them."""
        def chunk(index, text, finish_reason=None, logprobs=None):
            return {**meta, "object": "text_completion",
                    "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}

        def logprobs_of(entries):
            return protocol.completion_logprobs(entries) if req.logprobs is not None else None

        async with admission.running():
            for a in answers:
                if a.echoed:
                    entries = await scored_prompt(a.ids, req.logprobs, a.echoed)
                    yield chunk(a.index, a.echoed, logprobs=protocol.completion_logprobs(entries) if entries else None)
                shown = 0
                async for piece in pieces(a.reply):
                    yield chunk(a.index, piece,
                                logprobs=logprobs_of(generated_entries(a.reply, a.echoed, shown, with_end=False)))
                    shown = len(a.reply.tokens)
                yield chunk(a.index, "", a.reply.finish_reason,
                            logprobs=logprobs_of(generated_entries(a.reply, a.echoed, shown)) if a.reply.end else None)
            if req.include_usage:
                yield {**meta, "object": "text_completion", "choices": [],
                       "usage": protocol.usage(sum(a.reply.prompt_tokens for a in answers),
                                               sum(a.reply.completion_tokens for a in answers))}

    def generated_entries(reply, echoed, first=0, with_end=True):
        """The log-probability entries of a reply's tokens from the first-th on, after the echoed
        prompt; with_end: and the stop token that ended it, if one did."""
        tokens = reply.tokens[first:] + ([reply.end] if with_end and reply.end else [])
        return [(t.text, t.logprob, t.top, len(echoed) + t.offset) for t in tokens]

    started = protocol.now()
    return app


@dataclass
class Completion:
    """One prompt of a /v1/completions request, on its way to being its choice."""
    index: int  # its place in the request's batch
    ids: list  # the prompt's token ids
    echoed: str  # the prompt's text, when echo asks for it
    reply: Reply


def template_of(tokenizer):
    """The chat template of the conversations this server renders (chat/format.py), or None when
    the tokenizer has no role tokens, so that /v1/chat/completions cannot serve this model."""
    try:
        special_ids(tokenizer)
    except UserError:
        return None
    return chat_template()


def check_json_content_type(request):
    """A POST body must be declared JSON: a web page can send another site a text/plain POST
    without asking, but not an application/json one (the browser asks the site first)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, "the request body must be JSON sent with `Content-Type: application/json`, not "
                            f"{media_type or 'no Content-Type'}", code="unsupported_media_type")


async def read_limited(chunks, declared, limit):
    """The body from its chunks (request.stream()) -> bytes; a 413 when its declared length or
    what arrives is over `limit` bytes, as soon as that is known."""
    if declared is not None and declared > limit:
        raise ApiError(413, f"the request body has {declared} bytes, more than this server's limit of {limit}",
                       code="request_too_large")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request body is larger than this server's limit of {limit} bytes",
                           code="request_too_large")
    return body


async def discard(chunks):
    """Read and drop what is left of a body (request.stream()), at most DISCARD_BYTES of it."""
    dropped = 0
    with suppress(ClientDisconnect):  # then the refusal goes to nobody: fine
        async for chunk in chunks:
            dropped += len(chunk)
            if dropped > DISCARD_BYTES:
                return


async def whole_text(reply):
    return "".join([piece async for piece in pieces(reply)])


async def unless_client_leaves(request, work):
    """-> the result of the coroutine `work`, or ClientDisconnect as soon as the client leaves;
    `work` is then cancelled and waited for (a piece being generated in a worker thread ends
    first), so that its places are given back before the request is over."""
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientDisconnect()
    return task.result()


async def disconnected(request):
    """Return once the client has gone (the request's body must have been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def pieces(reply):
    """The reply's pieces of text, each computed in a worker thread (the model is NumPy: the event
    loop must not wait on it). Cancelling between two pieces stops the generation."""
    stream = iter(reply)
    while True:
        piece = await anyio.to_thread.run_sync(next, stream, None)
        if piece is None:
            return
        yield piece


def event_stream(events, release):
    """Server-sent events: `data: {json}` per event, then `data: [DONE]`; `release` when over."""
    async def body():
        async for event in events:
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    return ReleasingStream(body(), release, media_type="text/event-stream",
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
