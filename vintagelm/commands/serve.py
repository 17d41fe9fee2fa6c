"""`vintage serve RUN`: a chat page at http://127.0.0.1:8000/ and an OpenAI-compatible API
(/v1/chat/completions, /v1/completions, /v1/models, and vLLM's /tokenizer_info, /tokenize and
/detokenize, which lm-evaluation-harness uses) over the run's latest checkpoint."""
import argparse

HELP = "serve a model: a chat page in the browser and an OpenAI-compatible API (chat and completions)"


def port(text):
    """argparse type: a TCP port, 0 to 65535 (0: any free one)."""
    from vintagelm.commands import non_negative

    value = non_negative(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {value}")
    return value


def api_key(text):
    """argparse type: a key a client can send. HTTP drops spaces around a header's value, so an
    empty key, or one that starts or ends with a space, could never be given."""
    if not text or text != text.strip():
        raise argparse.ArgumentTypeError("must be a non-empty key without spaces at its ends "
                                         "(no client could ever send it)")
    return text


def host_name(text):
    """argparse type: a bare host name for --allowed-host (no scheme, port or path)."""
    name = text.strip().lower().rstrip(".")
    if not name or any(c in name for c in ":/@[] "):
        raise argparse.ArgumentTypeError(f"must be a host name such as my-box.lan (no scheme or port), got {text!r}")
    return name


def add_arguments(p):
    from vintagelm.commands import non_negative, positive

    p.add_argument("run", metavar="RUN", help="a run directory (its latest checkpoint) or a checkpoint directory")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the "
                        "network, so give --api-key too)")
    p.add_argument("--port", type=port, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--name", help="the model's name in the API (default: the run folder's name)")
    p.add_argument("--api-key", metavar="KEY", type=api_key,
                   help="require `Authorization: Bearer KEY` on every API request (/v1/..., /tokenizer_info, "
                        "/tokenize, /detokenize)")
    p.add_argument("--allowed-host", metavar="NAME", type=host_name, action="append", default=[],
                   help="a host name clients may reach this server by (repeatable). Requests whose Host header "
                        "names another site are refused, against DNS rebinding; localhost, IP addresses and "
                        "--host are always allowed")
    p.add_argument("--parallel", type=positive, default=2, help="replies generated at once (default 2)")
    p.add_argument("--queue", type=non_negative, default=16,
                   help="requests that may wait beyond those; more get 503 with Retry-After (default 16)")
    p.add_argument("--max-tokens-cap", type=positive, default=1024, help="largest max_tokens a request may ask (default 1024)")
    p.add_argument("--max-body-bytes", type=positive, default=1_000_000, help="largest request body (default 1 MB)")
    p.add_argument("--backend", choices=["auto", "reference", "fast"], default="auto",
                   help="implementation of the model (default auto: fast when numba is installed)")


def run(args):
    import socket

    try:
        import uvicorn

        from vintagelm.serve.app import Settings, create_app
    except ImportError as e:
        from vintagelm.common import UserError

        raise UserError(f"vintage serve needs the serve extra ({e.name} is missing): pip install 'vintagelm[serve]'") from None
    from vintagelm.chat.reply import ChatModel
    from vintagelm.common import UserError

    chat_model = ChatModel.load(args.run, name=args.name, backend=args.backend)
    settings = Settings(api_key=args.api_key, parallel=args.parallel, queue=args.queue,
                        max_tokens_cap=args.max_tokens_cap, max_body_bytes=args.max_body_bytes,
                        default_max_tokens=min(200, args.max_tokens_cap),
                        allowed_hosts=(args.host, *args.allowed_host))
    app = create_app(chat_model, settings)
    # bind first, so the address printed is one that already accepts connections (and --port 0 works)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    # named TCP, not left 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that
    # say they are TCP, and with it on, every answer on a kept-alive connection waited ~40 ms for
    # the client's delayed ACK between its headers and its body
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror}; choose another --port") from None
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    if args.host not in ("127.0.0.1", "localhost", "::1") and args.api_key is None:
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach this machine can use the model")
    print(f"serving {chat_model.name} (checkpoint {chat_model.path}) on http://{shown}:{port}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3))
    server.run(sockets=[sock])
    return 0
