"""What an export starts from: a run's latest checkpoint (or a checkpoint folder), checked for
what every format needs: a GPT, its tokenizer, finite weights. A fine-tuned run (one trained on
conversations) also carries our chat template into the exported files."""
from dataclasses import dataclass
from pathlib import Path

from vintagelm.checkpoint import load_checkpoint
from vintagelm.common import UserError

DTYPES = {"f32": "float32", "f16": "float16"}  # --dtype -> the NumPy dtype of the exported weights


@dataclass
class ExportSource:
    model: object  # a GPT
    tokenizer: object  # its vintagelm tokenizer
    chat: bool  # fine-tuned on conversations: the files carry the chat template
    name: str  # the run's folder name
    step: int  # the checkpoint's step
    checkpoint: Path  # the checkpoint folder read


def load_run(run):
    """A run directory or checkpoint folder -> ExportSource; a one-line UserError for anything
    that cannot be exported (not a run, a museum model, no tokenizer, diverged weights)."""
    from vintagelm.chat.dataset import is_chat_spec

    ckpt = load_checkpoint(run, with_optimizer=False, finite=True)
    if ckpt.model.architecture != "gpt":
        raise UserError(f"{ckpt.path} holds a {ckpt.model.architecture!r} model from the museum; only GPT runs can be "
                        "exported (llama.cpp and transformers run transformers, not n-gram tables or RNNs)")
    if ckpt.tokenizer is None:
        raise UserError(f"checkpoint {ckpt.path} has no tokenizer.json; an exported model needs its tokenizer")
    if ckpt.tokenizer.vocab_size > ckpt.model.config.vocab_size:
        raise UserError(f"checkpoint {ckpt.path}: the tokenizer has {ckpt.tokenizer.vocab_size} ids but the model only "
                        f"{ckpt.model.config.vocab_size}")
    train_config = ckpt.state.get("train_config")
    chat = isinstance(train_config, dict) and is_chat_spec(train_config.get("data", ""))
    folder = ckpt.path.resolve()  # RUN/checkpoints/step_NNNNNN, or a checkpoint folder elsewhere
    name = folder.parent.parent.name if folder.parent.name == "checkpoints" else folder.name
    return ExportSource(ckpt.model, ckpt.tokenizer, chat, name, ckpt.step, ckpt.path)
