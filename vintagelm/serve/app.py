"""`vintage serve`: the chat page and an OpenAI-compatible API over one model (FastAPI).

Routes: GET / (the page), GET /health, GET /v1/models, POST /v1/chat/completions and
POST /v1/completions (protocol.py holds the wire format). How requests share one model:
  * a reply is generated in worker threads, one piece of text per call, so the event loop
    stays free to accept, stream and notice a client that went away;
  * at most `parallel` replies run at once (they take turns token by token on the model's lock,
    chat/reply.py); up to `queue` more wait; beyond that a 503 with Retry-After;
  * a stream whose client disconnects is cancelled between two pieces: its generation stops
    and its place goes to the next.
"""
import asyncio
import json
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vintagelm.chat.reply import Reply
from vintagelm.common import UserError
from vintagelm.generate import encode_prompt
from vintagelm.serve import protocol
from vintagelm.serve.protocol import ApiError

DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "max_tokens": 200}  # what the page starts with
RETRY_AFTER_S = "2"


@dataclass
class Settings:
    api_key: str = None  # when set, every /v1 request needs `Authorization: Bearer <key>`
    parallel: int = 2  # replies generated at once
    queue: int = 16  # requests waiting beyond those
    max_tokens_cap: int = 1024
    max_body_bytes: int = 1_000_000
    default_max_tokens: int = 200  # chat, when a request gives none


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


def create_app(chat_model, settings=None):
    """The ASGI app serving `chat_model` (a chat.reply.ChatModel)."""
    settings = settings or Settings()
    admission = Admission(settings.parallel, settings.queue)
    name, tokenizer = chat_model.name, chat_model.tokenizer
    page = files("vintagelm.serve").joinpath("page.html").read_text(encoding="utf-8")
    # no /docs, /redoc or /openapi.json: they load their scripts from a CDN
    app = FastAPI(title="vintagelm", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request, e):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

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
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise ApiError(401, "missing or wrong API key: send the header `Authorization: Bearer <key>`",
                           type="authentication_error", code="invalid_api_key")

    async def read_body(request):
        """The request's JSON, refusing a body over max_body_bytes before reading all of it."""
        limit = settings.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise ApiError(413, f"the request body has {length} bytes, more than this server's limit of {limit}",
                           code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"the request body is larger than this server's limit of {limit} bytes",
                               code="request_too_large")
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "context_length": chat_model.block_size, "active": admission.active,
                "waiting": admission.in_flight - admission.active, "max_tokens_cap": settings.max_tokens_cap,
                "api_key_required": settings.api_key is not None, "defaults": DEFAULTS}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started, "owned_by": "vintagelm",
                                            "context_length": chat_model.block_size}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        req = protocol.chat_request(await read_body(request), name, settings.default_max_tokens, settings.max_tokens_cap)
        s = req.sampling
        try:
            prompt, _, _ = chat_model.chat_prompt(req.messages, reserve=min(s.max_tokens, chat_model.block_size // 2))
            reply = make_reply(prompt, s, chat_model.chat_rules())
        except UserError as e:  # a tokenizer without the role tokens: this model cannot chat
            raise ApiError(400, str(e), "model") from None
        meta = {"id": protocol.new_id("chatcmpl"), "created": protocol.now(), "model": name}
        leave = admission.enter()
        if s.stream:
            return event_stream(chat_chunks(reply, s, meta), leave)
        try:
            async with admission.running():
                text = await anyio.to_thread.run_sync(lambda: "".join(reply))
        finally:
            leave()
        logprobs = protocol.chat_logprobs(tokenizer, reply.tokens) if s.logprobs is not None else None
        return {**meta, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                             "finish_reason": reply.finish_reason}],
                "usage": protocol.usage(reply.prompt_tokens, reply.completion_tokens)}

    async def chat_chunks(reply, s, meta):
        """The events of one streamed chat reply (see protocol.py for the shape)."""
        def chunk(delta, finish_reason=None, logprobs=None):
            return {**meta, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}

        async with admission.running():
            yield chunk({"role": "assistant", "content": ""})
            shown = 0  # tokens whose log-probabilities were sent
            async for piece in pieces(reply):
                logprobs = None
                if s.logprobs is not None:
                    logprobs = protocol.chat_logprobs(tokenizer, reply.tokens[shown:])
                    shown = len(reply.tokens)
                yield chunk({"content": piece}, logprobs=logprobs)
            yield chunk({}, reply.finish_reason)
            if s.include_usage:
                yield {**meta, "object": "chat.completion.chunk", "choices": [],
                       "usage": protocol.usage(reply.prompt_tokens, reply.completion_tokens)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        req = protocol.completion_request(await read_body(request), name, settings.max_tokens_cap)
        s = req.sampling
        try:
            ids = encode_prompt(tokenizer, req.prompt)
        except UserError as e:
            raise ApiError(400, str(e), "prompt") from None
        if req.truncate_prompt_tokens is not None:
            ids = ids[-req.truncate_prompt_tokens:]
        if len(ids) > chat_model.block_size:
            raise ApiError(400, f"the prompt has {len(ids)} tokens, more than the model's context of "
                                f"{chat_model.block_size}; shorten it or pass truncate_prompt_tokens", "prompt",
                           code="context_length_exceeded")
        echoed = tokenizer.decode(ids) if req.echo else ""
        reply = make_reply(ids, s, chat_model.text_rules())
        meta = {"id": protocol.new_id("cmpl"), "created": protocol.now(), "model": name}
        leave = admission.enter()
        if s.stream:
            return event_stream(completion_chunks(reply, s, meta, ids, echoed), leave)
        try:
            async with admission.running():
                prompt_entries = await scored_prompt(ids, s, echoed)
                text = await anyio.to_thread.run_sync(lambda: "".join(reply))
        finally:
            leave()
        logprobs = None
        if s.logprobs is not None:
            logprobs = protocol.completion_logprobs(prompt_entries + generated_entries(reply.tokens, len(echoed)))
        return {**meta, "object": "text_completion",
                "choices": [{"index": 0, "text": echoed + text, "logprobs": logprobs,
                             "finish_reason": reply.finish_reason}],
                "usage": protocol.usage(reply.prompt_tokens, reply.completion_tokens)}

    async def scored_prompt(ids, s, echoed):
        """With echo and logprobs: the prompt's own tokens, each with its log-probability."""
        if not (echoed and s.logprobs is not None):
            return []
        scored = await anyio.to_thread.run_sync(chat_model.prompt_logprobs, ids, s.logprobs)
        entries, offset = [], 0
        for token_id, (logprob, top) in zip(ids, scored):
            text = chat_model.token_text(token_id)
            entries.append((text, logprob, None if logprob is None else top, offset))
            offset += len(text)
        return entries

    async def completion_chunks(reply, s, meta, ids, echoed):
        def chunk(text, finish_reason=None, logprobs=None):
            return {**meta, "object": "text_completion",
                    "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}

        async with admission.running():
            if echoed:
                entries = await scored_prompt(ids, s, echoed)
                yield chunk(echoed, logprobs=protocol.completion_logprobs(entries) if entries else None)
            shown = 0
            async for piece in pieces(reply):
                logprobs = None
                if s.logprobs is not None:
                    logprobs = protocol.completion_logprobs(generated_entries(reply.tokens[shown:], len(echoed)))
                    shown = len(reply.tokens)
                yield chunk(piece, logprobs=logprobs)
            yield chunk("", reply.finish_reason)
            if s.include_usage:
                yield {**meta, "object": "text_completion", "choices": [],
                       "usage": protocol.usage(reply.prompt_tokens, reply.completion_tokens)}

    def make_reply(prompt_ids, s, rules):
        return Reply(chat_model, prompt_ids, s.max_tokens, s.temperature, s.top_p, s.top_k, s.seed, s.stop, rules,
                     s.logprobs)

    def generated_entries(tokens, start):
        return [(t.text, t.logprob, t.top, start + t.offset) for t in tokens]

    started = protocol.now()
    return app


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
