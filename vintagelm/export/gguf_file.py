"""A run as one GGUF file, the format of llama.cpp, llama-cpp-python, Ollama and LM Studio,
written with the `gguf` package (llama.cpp's own writer, on PyPI) from our arrays directly.

The file holds the architecture's hyperparameters (layouts.py), the tokenizer (gguf_vocab.py),
the chat template of a fine-tuned run, and every parameter under its GGUF name (a Llama-shaped
model's packed c_attn as three tensors, q, k and v). In f16 the matrices are stored in half
precision and the 1-D tensors (norms, biases) stay f32, as llama.cpp's own converter does. The
file is written beside its name and renamed into place; a file already there is replaced only
when an earlier export wrote it.
"""
import os
from pathlib import Path

import numpy as np

from vintagelm.common import UserError, atomic_file, disk_errors, link_refused, make_parent, probe_writable
from vintagelm.export.chat_template import chat_template
from vintagelm.export.gguf_vocab import gguf_vocab
from vintagelm.export.layouts import layout_of
from vintagelm.tokenizers.base import EOT

MARK = "vintagelm.export"  # a key of ours in every file we write: its value is the export format's version
VERSION = 1
FILE_TYPES = {"float32": 0, "float16": 1}  # general.file_type: ALL_F32, MOSTLY_F16 (1-D tensors stay F32)


def write_gguf(source, out, dtype="float32"):
    """Write ExportSource `source` as the GGUF file `out` (weights in `dtype`) -> its Path."""
    gguf = import_gguf()
    config = source.model.config
    layout = layout_of(config)
    if config.activation != layout.activation:
        raise UserError(f"this model's MLP uses {config.activation}, and llama.cpp's {layout.gguf_arch} graph applies "
                        f"{layout.activation}; the GGUF would compute another function")
    vocab = gguf_vocab(source.tokenizer, config.vocab_size)
    path = check_gguf_out(out, gguf)
    with disk_errors(path), atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), layout.gguf_arch)
        try:
            add_metadata(writer, source, layout, dtype)
            add_tokenizer(writer, source, vocab)
            for name, array in layout.tensors(source.model):
                writer.add_tensor(name, np.ascontiguousarray(array, dtype if array.ndim > 1 else np.float32))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return path


def import_gguf():
    try:
        import gguf
    except ImportError:
        raise UserError("writing GGUF needs the gguf package: pip install gguf") from None
    return gguf


def add_metadata(writer, source, layout, dtype):
    writer.add_name(source.name)
    writer.add_type("model")
    writer.add_file_type(FILE_TYPES[dtype])
    writer.add_uint32(MARK, VERSION)
    for key, value in layout.hparams(source.model.config).items():
        full = f"{layout.gguf_arch}.{key}"
        if isinstance(value, float):
            writer.add_float32(full, value)
        else:
            writer.add_uint32(full, value)


def add_tokenizer(writer, source, vocab):
    """The vocabulary and its roles. <|endoftext|> begins a text (never added by the tokenizer:
    ids stay ours) and ends it; a fine-tuned model ends its turn with <|end|>, which is then
    the end of generation as well, and its template renders conversations as we do."""
    tok = source.tokenizer
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    eot = tok.special_tokens[EOT]
    writer.add_bos_token_id(eot)
    writer.add_pad_token_id(eot)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if source.chat:
        from vintagelm.chat.format import special_ids

        _, end = special_ids(tok)
        writer.add_eos_token_id(end)
        writer.add_eot_token_id(end)
        writer.add_chat_template(chat_template())
    else:
        writer.add_eos_token_id(eot)


def check_gguf_out(out, gguf):
    """--out for a GGUF file -> its Path, checked before anything is written: not a folder, not a
    link, and, when a file is there already, one an earlier export wrote; its folder is made
    and must take a write."""
    path = Path(out)
    if path.is_symlink():
        raise link_refused(path)
    if path.is_dir():
        raise UserError(f"--out {out} is a folder; give the GGUF file's name, e.g. {path / 'model.gguf'}")
    if os.path.lexists(path) and not is_our_gguf(path, gguf):
        raise UserError(f"--out {out} is a file vintagelm did not write; choose a new name (nothing was changed)")
    make_parent(path)
    probe_writable(path.parent, f"the folder of --out {out}")
    return path


def is_our_gguf(path, gguf):
    """Whether `path` is a regular file holding a GGUF this module wrote (it has MARK)."""
    if not path.is_file():
        return False
    try:
        return MARK in gguf.GGUFReader(path).fields
    except (OSError, ValueError, KeyError, IndexError, TypeError):  # not GGUF, or truncated
        return False
