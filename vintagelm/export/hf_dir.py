"""A run as a Hugging Face folder that transformers loads as it is:

    config.json             the architecture (hf.py's save_hf), with the token roles' ids
    model.safetensors       the weights, f32 or f16
    tokenizer.json          our tokenizer as HF `tokenizers` runs it (same ids for every text)
    tokenizer_config.json   PreTrainedTokenizerFast, bos/eos/pad, the chat template of a fine-tune
    generation_config.json  where generation starts and stops
    vintagelm-export.json   what was exported (run, step, dtype): the mark of a folder we wrote

The folder is built beside --out and swapped in whole; a folder already at --out is replaced
only when it is empty or an earlier export of ours, never when it holds anything else.
"""
import json
import os
from pathlib import Path

import numpy as np

from vintagelm.common import UserError, atomic_dir, check_output_folder, foreign_files, probe_writable, read_json
from vintagelm.export.chat_template import chat_template
from vintagelm.export.layouts import layout_of
from vintagelm.tokenizers.base import EOT

MARK_FILE = "vintagelm-export.json"
MARK_FORMAT, VERSION = "vintagelm-export", 1
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
         MARK_FILE)


def write_hf(source, out, dtype="float32"):
    """Write ExportSource `source` as a Hugging Face folder at `out` (weights in `dtype`) -> its Path."""
    layout_of(source.model.config)  # the same refusal, in the same words, as a GGUF export
    missing = not os.path.lexists(out)
    folder = check_output_folder(out, ours)
    if folder.is_mount():
        raise UserError(f"--out {out} is a mount point; give a folder inside it (the export is made beside it, "
                        "then moved in)")
    probe_writable(folder.parent, f"the folder above --out {out} (the export is made there, then moved in)")
    if missing:
        folder.rmdir()  # the finished export takes its place: a failure leaves no empty folder behind
    with atomic_dir(folder, is_ours=lambda p: not foreign_files(p, ours)) as tmp:
        tmp.mkdir()
        source.model.save_hf(tmp)
        if dtype != "float32":
            cast_weights(tmp / "model.safetensors", dtype)
        roles = token_roles(source)
        patch_json(tmp / "config.json", {**roles, "torch_dtype": dtype})
        source.tokenizer.export_hf(tmp, chat_template() if source.chat else None,
                                   model_max_length=source.model.config.block_size)
        write_json(tmp / "generation_config.json", roles)
        write_json(tmp / MARK_FILE, {"format": MARK_FORMAT, "version": VERSION, "run": source.name,
                                     "checkpoint": str(source.checkpoint), "step": source.step, "dtype": dtype})
    return folder


def ours(folder):
    """check_output_folder's ours(): our files, in a folder an export of ours marked."""
    try:
        mark = read_json(Path(folder) / MARK_FILE)
    except UserError:
        return ()
    marked = isinstance(mark, dict) and mark.get("format") == MARK_FORMAT and not (Path(folder) / MARK_FILE).is_symlink()
    return FILES if marked else ()


def token_roles(source):
    """bos, eos and pad ids, as config.json and generation_config.json name them. A fine-tuned
    model ends its turn with <|end|> and a text with <|endoftext|>: both stop generation."""
    eot = source.tokenizer.special_tokens.get(EOT)
    eos = eot
    if source.chat:
        from vintagelm.chat.format import special_ids

        eos = [special_ids(source.tokenizer)[1], eot]
    return {"bos_token_id": eot, "eos_token_id": eos, "pad_token_id": eot}


def cast_weights(file, dtype):
    from safetensors.numpy import load_file, save_file

    tensors = {name: t.astype(dtype) for name, t in load_file(file).items()}
    save_file(tensors, str(file), metadata={"format": "pt"})


def patch_json(file, entries):
    write_json(file, {**json.loads(file.read_text(encoding="utf-8")), **entries})


def write_json(file, doc):
    file.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
