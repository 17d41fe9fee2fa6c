"""`vintage chat RUN`: talk to a fine-tuned model in the terminal, its reply streamed as it is
sampled. Commands: /reset, /temp X, /system TEXT, /quit (or Ctrl-D). Ctrl-C stops a reply,
not the program. The conversation is trimmed to the model's context from the oldest turn."""
from vintagelm.commands import non_negative

HELP = "chat with a fine-tuned model in the terminal (streamed replies, /reset /temp /system /quit)"
COMMANDS_HELP = ("/reset forgets the conversation; /temp X sets the temperature; /system TEXT sets the system "
                 "line (/system alone clears it); /quit or Ctrl-D leaves; Ctrl-C stops a reply")


def add_arguments(p):
    p.add_argument("run", metavar="RUN", help="a run directory (its latest checkpoint) or a checkpoint directory")
    p.add_argument("--system", default="", help="the system line, e.g. 'You are Hamlet in Hamlet.' (default none)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the K most likely tokens only")
    p.add_argument("--max-tokens", type=int, default=200, help="longest reply in tokens (default 200)")
    p.add_argument("--seed", type=non_negative, default=1337, help="sampling seed (the nth reply uses seed + n)")
    p.add_argument("--backend", choices=["auto", "reference", "fast"], default="auto")


def run(args):
    import signal
    import sys
    from dataclasses import replace

    from vintagelm.chat.format import Message
    from vintagelm.chat.reply import ChatModel, Reply
    from vintagelm.common import UserError
    from vintagelm.generate import SamplingSettings

    if args.max_tokens < 1:
        raise UserError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    try:
        sampling = SamplingSettings(max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                                    top_p=args.top_p)
    except ValueError as e:
        raise UserError(str(e)) from None
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 are kept as escapes, not a traceback
        sys.stdin.reconfigure(errors="surrogateescape")
    if sys.stdin.isatty():
        # Ctrl-C is how a person at this terminal stops a reply, so take it even when started with
        # SIGINT ignored (what a shell without job control does to a command it runs with &)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    chat = ChatModel.load(args.run, backend=args.backend)
    chat.chat_rules()  # a tokenizer without role tokens fails here, before the first question
    system, history, turn = args.system, [], 0
    print(f"chatting with {chat.name} ({chat.model.num_params():,} parameters, context {chat.block_size} tokens). "
          f"{COMMANDS_HELP}.")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print("\n(/quit or Ctrl-D leaves)")
            continue
        text = line.strip()
        if not text:
            continue
        command, _, rest = text.partition(" ")
        if command == "/quit":
            return 0
        if command == "/reset":
            history = []
            print("(conversation forgotten)")
            continue
        if command == "/system":
            system = rest.strip()
            print(f"(system line: {system!r})" if system else "(no system line)")
            continue
        if command == "/temp":
            try:
                sampling = replace(sampling, temperature=float(rest))
            except ValueError:
                print(f"(/temp takes a number >= 0, e.g. /temp 0.7; still {sampling.temperature})")
                continue
            print(f"(temperature {sampling.temperature})")
            continue
        if command.startswith("/"):
            print(f"(unknown command {command}; {COMMANDS_HELP})")
            continue
        messages = ([Message("system", system)] if system else []) + history + [Message("user", text)]
        prompt, left_out, dropped = chat.chat_prompt(messages, reserve=min(args.max_tokens, chat.block_size // 2))
        if dropped:
            print(f"(left out {describe_left_out(dropped)})")
        if left_out:
            print(f"({left_out} earlier message(s) left out: they no longer fit the context of {chat.block_size} tokens)")
        reply = Reply(chat, prompt, replace(sampling, seed=args.seed + turn))
        turn += 1
        print(f"{chat.name}> ", end="", flush=True)
        try:
            for piece in reply:
                print(piece, end="", flush=True)
            print()
        except KeyboardInterrupt:
            print(" [stopped]")
        history += [Message("user", text), Message("assistant", reply.text)]


def describe_left_out(dropped):
    """Characters the tokenizer could not encode -> how to show them. Input bytes that were not
    UTF-8 reach us as surrogate escapes (U+DC80..U+DCFF, errors="surrogateescape"); they are
    shown as the bytes they were, \\xfe, not as the escapes."""
    chars = sorted(set(dropped))
    raw = [c for c in chars if 0xDC80 <= ord(c) <= 0xDCFF]
    unseen = "".join(c for c in chars if c not in raw)
    parts = ([f"characters the model has never seen: {unseen!r}"] if unseen else []) + (
        ["undecodable bytes " + "".join(f"\\x{ord(c) - 0xDC00:02x}" for c in raw) + " (not UTF-8)"] if raw else [])
    return " and ".join(parts)
