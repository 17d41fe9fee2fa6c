"""Conversations as data: read them from JSON lines, render them as token ids with a loss mask,
parse rendered ids back, and cut them into training windows at turn boundaries.

One conversation per line of a JSONL file:
    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
Rendered with the tokenizer's special tokens, each message is its role token, its content as
ordinary text, and <|end|>; the whole conversation starts with <|endoftext|> (a fresh document):
    <|endoftext|> <|user|> Good morrow. <|end|> <|assistant|> And to you. <|end|>
The loss mask is 1 on the assistant's content AND its <|end|>, 0 everywhere else: fine-tuning
learns to answer and to stop, never to write the user's lines (nor to predict a role token,
which the program, not the model, puts there). Shape legend: T tokens.
"""
import codecs
import json
from dataclasses import dataclass

from vintagelm.common import UserError, regular_file

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END = "<|end|>"
BAD_LINES_SHOWN = 5  # how many bad lines an error lists by number


class BadLine(ValueError):
    """A line that is no usable conversation, for a reason whose advice is said once however
    many lines share it."""

    def __init__(self, reason, advice):
        super().__init__(reason)
        self.advice = advice


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str


def parse_conversation(record):
    """A JSON value -> [Message, ...]; ValueError saying what is wrong with it."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise ValueError('expected an object with a "messages" list')
    messages = []
    for i, m in enumerate(record["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f'message {i} needs "role" ({", ".join(ROLES)}) and "content" (text)')
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError as e:  # JSON's "\ud800" escape on its own: no character at all
            raise ValueError(f"message {i} has a lone surrogate {e.object[e.start]!r} (a \\u escape that is half "
                             "of a pair), which is not text; fix or remove that escape") from None
        messages.append(Message(m["role"], m["content"]))
    if not any(m.role == "assistant" for m in messages):
        raise ValueError("no assistant message: nothing to learn from")
    return messages


def read_conversations(path, skip_bad=False, tokenizer=None):
    """A JSONL file -> ([conversation, ...], number of bad lines skipped). A bad line is an error
    that lists the first few by line number, unless skip_bad, which skips and counts them.

    With a tokenizer, each conversation comes back rendered, as (ids, mask), and one the
    tokenizer cannot encode is a bad line too. Each line is decoded strictly as UTF-8 here
    (json.loads of bytes would guess another encoding line by line); a file that looks like
    UTF-16 is refused at its first line, since every line of it is bad the same way."""
    conversations, bad, advice = [], [], {}  # advice: a dict, as an ordered set
    with open(regular_file(path, "chat file"), "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if looks_like_utf16(raw):
                raise UserError(f"{path}: line {lineno} is not UTF-8 (the file looks like UTF-16); "
                                "save it as UTF-8")
            try:
                line = decode_line(raw, first=lineno == 1)
                if not line.strip():
                    continue
                messages = parse_conversation(json.loads(line))
                conversations.append(messages if tokenizer is None else render_encodable(tokenizer, messages))
            except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
                bad.append(f"line {lineno}: {e}")
                if isinstance(e, BadLine):
                    advice[e.advice] = None
    if bad and not skip_bad:
        shown = "; ".join(bad[:BAD_LINES_SHOWN]) + (f"; and {len(bad) - BAD_LINES_SHOWN} more" if len(bad) > BAD_LINES_SHOWN else "")
        raise UserError(f"{path}: {len(bad)} bad line(s): {shown}{''.join(f'; {a}' for a in advice)} "
                        "(--skip-bad skips them)")
    return conversations, len(bad)


def looks_like_utf16(raw):
    """True for a line of bytes that is UTF-16 text: its byte-order mark, or ASCII with a NUL
    in every other byte (a line of NULs alone is no text at all, and not taken for UTF-16)."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return True
    body = raw.rstrip(b"\r\n")
    if len(body) < 2:
        return False
    shares = sorted(half.count(0) / len(half) for half in (body[0::2], body[1::2]))
    return shares[0] < 0.1 and shares[1] > 0.5


def decode_line(raw, first):
    """A line's bytes -> str; ValueError saying why it is no JSON text: not UTF-8, or NUL
    bytes. The first line may begin with UTF-8's byte-order mark."""
    try:
        line = raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as e:
        raise BadLine(f"not UTF-8 (byte {raw[e.start]:#04x} at byte {e.start})", "save the file as UTF-8") from None
    if "\0" in line:
        raise ValueError("holds NUL bytes, which a line of JSON text never has")
    return line


def special_ids(tokenizer):
    """{role: id} and the <|end|> id; a UserError when the tokenizer lacks any of them."""
    missing = [t for t in (*ROLE_TOKENS.values(), END) if t not in tokenizer.special_tokens]
    if missing:
        raise UserError(f"the tokenizer has no {', '.join(missing)}; chat needs a tokenizer trained with the "
                        "default special tokens")
    return {role: tokenizer.special_tokens[t] for role, t in ROLE_TOKENS.items()}, tokenizer.special_tokens[END]


def render(tokenizer, messages):
    """[Message, ...] -> (ids, mask), two lists of length T; mask[t] is 1 where token t is one
    the model learns to produce (assistant content and its <|end|>)."""
    roles, end = special_ids(tokenizer)
    ids, mask = [tokenizer.eot_id], [0]
    for m in messages:
        content = tokenizer.encode(m.content, allowed_special="none")  # "<|end|>" typed by a user is text
        learn = 1 if m.role == "assistant" else 0
        ids += [roles[m.role], *content, end]
        mask += [0] + [learn] * (len(content) + 1)
    return ids, mask


def render_encodable(tokenizer, messages):
    """render(), with a BadLine that names the characters the tokenizer cannot encode (a char
    tokenizer has only those of the text it was trained on)."""
    special_ids(tokenizer)  # a tokenizer without the chat's tokens is refused as a whole, not line by line
    try:
        return render(tokenizer, messages)
    except UserError:
        unseen = sorted({c for m in messages for c in set(m.content) if not encodable(tokenizer, c)})
        raise BadLine(f"characters the base model's tokenizer never saw: {''.join(unseen)!r}",
                      "remove those characters, or fine-tune a base run trained on text that has them") from None


def encodable(tokenizer, text):
    try:
        tokenizer.encode(text, allowed_special="none")
    except UserError:
        return False
    return True


def parse_rendered(tokenizer, ids):
    """render's ids -> [Message, ...] (the inverse of render)."""
    roles, end = special_ids(tokenizer)
    role_of = {i: r for r, i in roles.items()}
    messages, role, content = [], None, []
    for i in ids:
        if i in role_of and role is None:
            role, content = role_of[i], []
        elif i == end and role is not None:
            messages.append(Message(role, tokenizer.decode(content)))
            role = None
        elif role is not None:
            content.append(i)
    return messages


def turn_starts(ids, tokenizer):
    """Positions where a message begins (its role token)."""
    roles, _ = special_ids(tokenizer)
    role_ids = set(roles.values())
    return [t for t, i in enumerate(ids) if i in role_ids]


def windows(tokenizer, ids, mask, block_size):
    """Cut one rendered conversation into pieces of at most block_size + 1 tokens (a window's
    inputs and targets), each made of whole turns -> ([(ids, mask), ...], turns dropped).

    No turn is ever cut in the middle: consecutive turns share a piece while they fit. A turn
    too long for any window is dropped and counted, never truncated in silence, and so are the
    answers that follow it (they would answer a question the model never saw). A piece with
    nothing to learn (no assistant token among its targets) is left out."""
    limit = block_size + 1
    starts = turn_starts(ids, tokenizer)
    bounds = [0] + starts[1:] + [len(ids)]  # the first turn keeps the leading <|endoftext|>
    answer = special_ids(tokenizer)[0]["assistant"]
    pieces, dropped, current = [], 0, None  # current: the [a, b) span being filled
    orphaned = False  # a turn before this one was dropped
    for start, a, b in zip(starts, bounds, bounds[1:]):
        if b - a > limit or (orphaned and ids[start] == answer):
            dropped += 1
            orphaned = True
            pieces.append(current)
            current = None
            continue
        orphaned = False
        if current is not None and b - current[0] <= limit:
            current = (current[0], b)
        else:
            pieces.append(current)
            current = (a, b)
    pieces.append(current)
    spans = [s for s in pieces if s is not None and any(mask[s[0] + 1 : s[1]])]
    return [(ids[a:b], mask[a:b]) for a, b in spans], dropped


def training_arrays(pieces, block_size, pad_id):
    """[(ids, mask), ...] from windows -> x, y int64 arrays (N, T = block_size): x the inputs
    (padded with pad_id after a short piece), y the next token where the mask says the model
    learns it and IGNORE_INDEX (-1) everywhere else, padding included, so that the loss and its
    gradient come from the assistant's tokens alone."""
    import numpy as np

    from vintagelm.nn.loss import IGNORE_INDEX

    x = np.full((len(pieces), block_size), pad_id, dtype=np.int64)  # (N, T)
    y = np.full((len(pieces), block_size), IGNORE_INDEX, dtype=np.int64)  # (N, T)
    for n, (ids, mask) in enumerate(pieces):
        ids, learn = np.asarray(ids), np.asarray(mask[1:]) == 1  # target t is token t + 1
        x[n, : len(ids) - 1] = ids[:-1]
        y[n, : len(ids) - 1] = np.where(learn, ids[1:], IGNORE_INDEX)
    return x, y
