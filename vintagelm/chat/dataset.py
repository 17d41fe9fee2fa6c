"""Conversations as a training set for `vintage finetune`: rendered, cut into windows of whole
turns and padded into fixed (N, T) arrays whose targets are the assistant's tokens alone.

The source is "chat:builtin" (chat/builtin.py: made from the builtin plays, whole plays held
out) or "chat:FILE" (JSONL, see chat/format.py), where every VAL_EVERY-th conversation is held
out for validation (the last one when there are fewer). A ChatDataset offers the one method the
training loop draws from, `batch`, like data/loader.PreparedDataset.
"""
from dataclasses import dataclass
from pathlib import Path

from vintagelm.chat.format import BadLine, read_conversations, render_encodable, training_arrays, windows
from vintagelm.common import UserError

PREFIX = "chat:"
BUILTIN = "chat:builtin"
VAL_EVERY = 10  # a JSONL file: conversations 9, 19, 29, ... are the validation split


@dataclass
class ChatDataset:
    location: str  # the source spec, "chat:builtin" or "chat:/absolute/file.jsonl"
    tokenizer: object
    train: tuple  # (x, y) int64 (N_train, T); y is -1 where nothing is learned
    val: tuple  # (x, y) int64 (N_val, T)
    summary: dict  # counts: conversations, windows, turns dropped, bad lines skipped, assistant tokens

    def batch(self, split, batch_size, block_size, rng):
        """batch_size windows drawn at random (with replacement) from a split -> (x, y) (B, T)."""
        x, y = getattr(self, split)
        if x.shape[1] != block_size:
            raise ValueError(f"the chat windows are {x.shape[1]} tokens long, not block_size {block_size}")
        rows = rng.integers(0, len(x), size=batch_size)  # (B,)
        return x[rows], y[rows]

    def check(self, block_size):
        for split in ("train", "val"):
            if not len(getattr(self, split)[0]):
                raise UserError(f"{self.location}: the {split} split has no conversation that fits a window of "
                                f"{block_size} tokens; give shorter conversations or a model with a longer block_size")

    def describe(self):
        s = self.summary
        return (f"{s['conversations']['train']:,} train / {s['conversations']['val']:,} val conversations in "
                f"{s['windows']['train']:,} / {s['windows']['val']:,} windows, "
                f"{s['assistant_tokens']['train']:,} / {s['assistant_tokens']['val']:,} assistant tokens")


def is_chat_spec(data):
    return str(data).startswith(PREFIX)


def chat_spec(data):
    """--data as the user gave it (None: the builtin set) -> the spec a config saves."""
    if data is None:
        return BUILTIN
    if is_chat_spec(data):
        return data
    if not str(data).strip():
        raise UserError("--data is empty; give a JSONL file of conversations, or leave --data out for the builtin set")
    return PREFIX + str(Path(data).resolve())


def load_chat_dataset(spec, tokenizer, block_size, skip_bad=False, log=print):
    """A chat spec -> ChatDataset for windows of block_size tokens."""
    if not is_chat_spec(spec):
        raise UserError(f"fine-tuning data must be a chat file (chat:FILE) or {BUILTIN}, not {spec!r}; give the "
                        "conversations with --data CHAT.jsonl")
    if spec == BUILTIN:
        split, skipped = builtin_rendered(tokenizer), 0
    else:
        path = spec[len(PREFIX):]
        conversations, skipped = read_conversations(path, skip_bad, tokenizer)
        if len(conversations) < 2:
            raise UserError(f"{path} has {len(conversations)} usable conversation(s); fine-tuning needs at "
                            "least 2 (one is held out for validation)")
        split = hold_out(conversations)
    if skipped:
        log(f"chat data: skipped {skipped} bad line(s) (--skip-bad)")
    arrays, summary = {}, {"conversations": {}, "windows": {}, "assistant_tokens": {}, "turns_dropped": {},
                           "bad_lines_skipped": skipped}
    for name, rendered in split.items():
        pieces, dropped = [], 0
        for ids, mask in rendered:
            kept, lost = windows(tokenizer, ids, mask, block_size)
            pieces += kept
            dropped += lost
        x, y = training_arrays(pieces, block_size, tokenizer.eot_id)
        arrays[name] = (x, y)
        summary["conversations"][name] = len(rendered)
        summary["windows"][name] = len(pieces)
        summary["assistant_tokens"][name] = int((y >= 0).sum())
        summary["turns_dropped"][name] = dropped
    dropped = sum(summary["turns_dropped"].values())
    if dropped:
        log(f"chat data: {dropped} turn(s) longer than the window of {block_size + 1} tokens (or answering one) "
            "were left out")
    return ChatDataset(spec, tokenizer, arrays["train"], arrays["val"], summary)


def builtin_rendered(tokenizer):
    """The builtin conversations, split and rendered -> {split: [(ids, mask), ...]}. Made by our
    code, so a conversation the tokenizer cannot encode is an error, not a line to skip."""
    from vintagelm.chat.builtin import builtin_conversations

    split = {}
    for name, conversations in builtin_conversations().items():
        split[name] = []
        for n, messages in enumerate(conversations, 1):
            try:
                split[name].append(render_encodable(tokenizer, messages))
            except BadLine as e:
                raise UserError(f"{BUILTIN}: {name} conversation {n}: {e}; {e.advice}") from None
    return split


def hold_out(conversations):
    """Every VAL_EVERY-th conversation for validation (the last one when there are fewer)."""
    val_ids = set(range(VAL_EVERY - 1, len(conversations), VAL_EVERY)) or {len(conversations) - 1}
    return {"train": [c for i, c in enumerate(conversations) if i not in val_ids],
            "val": [c for i, c in enumerate(conversations) if i in val_ids]}
