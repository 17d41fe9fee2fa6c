"""`--data` to a PreparedDataset: a prepared folder is opened as is; a source spec is prepared
once into the cache and reused by every later run with the same source and tokenizer."""
import hashlib
import json
from pathlib import Path

from vintagelm.common import UserError, cache_root
from vintagelm.data.loader import load_dataset


def resolve_dataset(data, tokenizer="char", vocab_size=0, progress=True, log=print):
    """A prepared dataset folder, or a source spec prepared once into the cache, keyed by
    (source, tokenizer, vocab size), and reused by later runs -> PreparedDataset."""
    from vintagelm.data.prepare import prepare_dataset

    if not str(data).strip():
        raise UserError("--data is empty; give a prepared dataset folder or a source such as builtin:shakespeare")
    if (Path(data) / "meta.json").is_file():
        return load_dataset(data)
    # a local path is keyed by its absolute form, so the same relative name elsewhere differs
    source = str(Path(data).resolve()) if Path(data).exists() else data
    tok_key = tokenizer
    if tokenizer not in ("char", "bpe"):
        from vintagelm.tokenizers import load_tokenizer

        tok_key = load_tokenizer(tokenizer).fingerprint()
    key = json.dumps([source, tok_key, vocab_size])
    folder = cache_root() / "datasets" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (folder / "meta.json").is_file():
        log(f"data: {data} (cached in {folder}; delete that folder to prepare it again)")
    else:
        log(f"data: preparing {data} with the {tokenizer} tokenizer into {folder}")
        prepare_dataset([data], tokenizer, folder, vocab_size=vocab_size or None, progress=progress)
    return load_dataset(folder)
