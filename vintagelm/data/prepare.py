"""Sources -> a prepared dataset: train.bin, val.bin, tokenizer.json and meta.json in one folder.

The pipeline, one document at a time so memory stays bounded by the largest document:
  1. read every source (`sources.iter_documents`), drop exact duplicate documents and
     paragraphs, apply the period filter, and stage the surviving text in a JSON-lines file;
  2. train the tokenizer ("char" on all staged text; "bpe" on a sample of whole documents of
     at most `bpe_sample_bytes`, streamed from the staging file), or load a tokenizer file;
  3. encode each staged document, append its ids and the end-of-text id to train.bin or
     val.bin, and write meta.json.
Everything is written inside a temporary folder beside `out_dir` that is renamed over it at
the end (`common.atomic_dir`), so an interrupted run leaves no half-written dataset and an
existing dataset is replaced only when the new one is complete. A folder that exists but is
not a prepared dataset is never replaced.

Split: by document. Each document's key hash(seed, hash of its text) is read as a number u in
[0, 1); the document goes to val when u < val_fraction. So the split depends only on the seed
and the documents themselves: not on where the files sit on disk, on the order of sources or
on the filters. With two or more
documents val and train are never empty (the lowest-u document is moved to val, or the
highest-u one to train, if needed). A corpus of one document is split inside it instead:
the last `val_fraction` of its text is val, cut at a nearby paragraph, line or word break.
"""
import hashlib
import json
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from vintagelm.common import UserError, atomic_dir, check_output_folder, write_json_atomic
from vintagelm.data import clean
from vintagelm.data.period import PeriodFilter, UNITS, load_terms
from vintagelm.data.sources import iter_documents

FORMAT = "vintagelm-dataset"
VERSION = 1
DEFAULT_BPE_VOCAB = 2048
BPE_SAMPLE_BYTES = 20_000_000  # bpe trains on at most this much text (whole documents, seed-chosen)
STAGING = "documents.jsonl"  # cleaned text between pass 1 and pass 3; deleted before the rename


def token_dtype(vocab_size):
    """uint16 holds ids < 65536, so a vocabulary of up to 65536 tokens; beyond, uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def split_score(seed, key):
    """A number in [0, 1) fixed by the seed and a document's key (content_key)."""
    digest = hashlib.blake2b(f"{seed}\0{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def content_key(text):
    """A document's identity for the split: a hash of its text as read, so the same corpus
    splits the same way wherever it is. (surrogatepass: a lone surrogate from JSON still hashes.)"""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def prepare_dataset(
    sources, tokenizer, out_dir, *, vocab_size=None, before=None, filter_unit="paragraph",
    terms_file=None, unwrap=False, val_fraction=0.1, seed=1337, bpe_sample_bytes=BPE_SAMPLE_BYTES,
    gutenberg_cache=None, gutenberg_url=None, progress=True,
):
    """Build a prepared dataset in `out_dir` from source specs; return its meta dict.

    sources      list of specs (see vintagelm.data.sources)
    tokenizer    "char", "bpe", or the path of a saved tokenizer file to reuse
    vocab_size   bpe: target size (default DEFAULT_BPE_VOCAB); char: passed to the trainer
    before       keep only text that could predate this year (None: no period filter)
    filter_unit  what a period hit drops: "paragraph" or the whole "document"
    terms_file   extra modern terms, `TERM<TAB>YEAR` lines, added to the shipped list
    unwrap       join hard-wrapped prose lines (files, Gutenberg, JSONL)
    progress     tqdm bars on stderr (they switch themselves off when it is not a terminal)
    """
    sources = list(sources)
    if not sources:
        raise UserError("no sources given; pass --source SPEC (e.g. --source builtin:shakespeare)")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    if vocab_size is not None and vocab_size < 1:
        raise UserError(f"vocab size must be positive, not {vocab_size}")
    if terms_file is not None and before is None:
        raise UserError("a terms file only matters with a cut-off year; add --before YEAR")
    if filter_unit not in UNITS:
        raise UserError(f"filter unit must be one of {', '.join(UNITS)}, not {filter_unit!r}")
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    _check_replaceable(out_dir)
    try:
        tok, tokenizer_type = _resolve_tokenizer(tokenizer, vocab_size)
        period = PeriodFilter(before, load_terms(terms_file), filter_unit) if before is not None else None

        try:
            with atomic_dir(out_dir, is_ours=is_dataset) as tmp:
                tmp.mkdir()
                staging = tmp / STAGING
                docs, paragraphs_dropped, keys, sizes = _stage_documents(
                    sources, staging, period, unwrap=unwrap, progress=progress,
                    gutenberg_cache=gutenberg_cache, gutenberg_url=gutenberg_url,
                )
                if not keys:
                    raise UserError(
                        f"no text left to train on: {docs['read']} document(s) read, {docs['dropped_duplicate']} "
                        f"duplicate, {docs['dropped_period']} dropped by the period filter, {docs['dropped_empty']} "
                        "empty; check the sources or loosen --before"
                    )
                scores = [split_score(seed, key) for key in keys]
                val_ids = _choose_val(scores, val_fraction)

                sampled_bytes = None
                if tok is None:  # train on the staged text, streamed from disk
                    from vintagelm.tokenizers import BPETokenizer, CharTokenizer

                    if tokenizer_type == "char":
                        tok = CharTokenizer.train(_staged_texts(staging), vocab_size=vocab_size)
                        sampled_bytes = sum(sizes)
                    else:
                        sample = _bpe_sample(scores, sizes, bpe_sample_bytes)
                        sampled_bytes = sum(sizes[i] for i in sample)
                        tok = BPETokenizer.train(_staged_texts(staging, sample), vocab_size=vocab_size or DEFAULT_BPE_VOCAB)
                tok.save(tmp / "tokenizer.json")
                dtype = token_dtype(tok.vocab_size)

                tokens, nbytes, ndocs = _encode(tok, staging, tmp, dtype, val_ids, val_fraction, len(keys), progress)
                staging.unlink()
                docs.update(ndocs)
                meta = {
                    "format": FORMAT,
                    "version": VERSION,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "dtype": dtype.name,
                    "vocab_size": tok.vocab_size,
                    "eot_id": tok.eot_id,
                    "tokenizer_file": "tokenizer.json",
                    "tokenizer_type": tokenizer_type,
                    "tokenizer_fingerprint": tok.fingerprint(),
                    "tokenizer_trained_on_bytes": sampled_bytes,
                    "sources": sources,
                    "split": "document" if len(keys) > 1 else "single-document",
                    "split_seed": seed,
                    "val_fraction": val_fraction,
                    "unwrap": unwrap,
                    "period_filter": _period_meta(period, terms_file),
                    "documents": docs,
                    "paragraphs_dropped": dict(paragraphs_dropped),
                    "tokens": tokens,
                    "bytes": nbytes,
                    "bytes_per_token": round(sum(nbytes.values()) / max(1, sum(tokens.values())), 4),
                }
                write_json_atomic(tmp / "meta.json", meta)
        except OSError as e:  # a full disk, a file-size limit
            raise UserError(f"cannot write the dataset {out_dir} ({e.strerror or e}); nothing was half-written "
                            "and an earlier dataset there is intact") from None
        return meta
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # the check made it; a failed prepare leaves no trace
        raise


def _check_replaceable(out_dir):
    """Before any work: refuse a file, a folder under a file, one we cannot write, and a folder
    holding anything but an earlier prepared dataset's own files (a file the user added to a
    dataset folder would be lost when the new dataset replaces it)."""
    check_output_folder(out_dir, ours=dataset_files)


DATASET_FILES = ("train.bin", "val.bin", "meta.json", "tokenizer.json")  # what a prepared dataset holds


def dataset_files(folder):
    """The names in `folder` that `prepare` wrote: its files when it is a prepared dataset."""
    return DATASET_FILES if is_dataset(folder) else ()


def is_dataset(folder):
    """Whether `folder` holds a dataset this program prepared (its meta.json says so)."""
    try:
        meta = json.loads((Path(folder) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _resolve_tokenizer(tokenizer, vocab_size):
    """-> (loaded tokenizer or None if it must be trained, type name)."""
    if tokenizer in ("char", "bpe"):
        return None, tokenizer
    from vintagelm.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer

    path = Path(tokenizer)
    if not path.is_file():
        raise UserError(f"tokenizer must be 'char', 'bpe' or a tokenizer file; {tokenizer!r} is none of these")
    tok = load_tokenizer(path)
    if vocab_size is not None and vocab_size != tok.vocab_size:
        raise UserError(f"--vocab-size {vocab_size} disagrees with {path} (vocab size {tok.vocab_size}); drop --vocab-size")
    kind = {CharTokenizer: "char", BPETokenizer: "bpe"}.get(type(tok), type(tok).__name__)
    return tok, kind


def _stage_documents(sources, staging, period, *, unwrap, progress, gutenberg_cache, gutenberg_url):
    """Pass 1: clean, de-duplicate and filter every document; append survivors to `staging`.

    -> (document counts, paragraph drops by reason, content keys of kept documents, their UTF-8 sizes)
    """
    from tqdm import tqdm

    docs = Counter(read=0, kept=0, dropped_duplicate=0, dropped_period=0, dropped_empty=0)
    paragraphs_dropped = Counter()
    dedup = clean.Deduplicator()
    keys, sizes = [], []
    with open(staging, "w", encoding="utf-8") as out, tqdm(
        desc="clean", unit="doc", disable=None if progress else True, file=sys.stderr
    ) as bar:
        for spec in sources:
            for doc in iter_documents(spec, unwrap=unwrap, gutenberg_cache=gutenberg_cache, gutenberg_url=gutenberg_url):
                docs["read"] += 1
                bar.update()
                text = _filter_document(doc, dedup, period, docs, paragraphs_dropped)
                if text is None:
                    continue
                docs["kept"] += 1
                out.write(json.dumps({"source": doc.source, "text": text}, ensure_ascii=False) + "\n")
                keys.append(content_key(doc.text))
                sizes.append(len(text.encode("utf-8")))
    return dict(docs), paragraphs_dropped, keys, sizes


def _filter_document(doc, dedup, period, docs, paragraphs_dropped):
    """The text of `doc` that survives de-duplication and the period filter, or None."""
    if not doc.text:
        docs["dropped_empty"] += 1
        return None
    if dedup.is_duplicate_document(doc.text):
        docs["dropped_duplicate"] += 1
        return None
    if period is not None and period.unit == "document" and not period.keep(doc.text, doc.source):
        docs["dropped_period"] += 1
        return None
    paragraphs, n_duplicate = dedup.unique_paragraphs(clean.split_paragraphs(doc.text))
    if n_duplicate:
        paragraphs_dropped["duplicate"] += n_duplicate
    if period is not None and period.unit == "paragraph":
        before = Counter(period.counts)
        paragraphs = [p for p in paragraphs if period.keep(p, doc.source)]
        paragraphs_dropped.update(period.counts - before)
    if not paragraphs:
        docs["dropped_empty"] += 1
        return None
    return clean.join_paragraphs(paragraphs)


def _staged_texts(staging, only=None):
    """Stream the staged documents' texts (those with index in `only`, if given)."""
    with open(staging, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if only is None or i in only:
                yield json.loads(line)["text"]


def _choose_val(scores, val_fraction):
    """Indices of the documents that go to val (see the module docstring)."""
    val = {i for i, u in enumerate(scores) if u < val_fraction}
    if len(scores) >= 2:
        order = sorted(range(len(scores)), key=scores.__getitem__)
        if not val:
            val.add(order[0])
        if len(val) == len(scores):
            val.discard(order[-1])
    return val


def _bpe_sample(scores, sizes, budget):
    """Indices of whole documents, in seed order, until `budget` bytes are reached."""
    chosen, total = set(), 0
    for i in sorted(range(len(scores)), key=scores.__getitem__):
        if total >= budget:
            break
        chosen.add(i)
        total += sizes[i]
    return chosen


def _split_single(text, val_fraction):
    """Cut one document into (train, val) where its last `val_fraction` begins: at the
    paragraph (else line, else word) break nearest that point, if one lies within a quarter of
    the val part's length of it, so the fraction holds (a break at the very start or end of
    the file is too far); with none that near, at the point itself."""
    cut = int(len(text) * (1 - val_fraction))
    slack = max(1, (len(text) - cut) // 4)
    for sep in ("\n\n", "\n", " "):
        breaks = [at for at in (text.rfind(sep, 0, cut), text.find(sep, cut)) if at > 0 and abs(at - cut) <= slack]
        if breaks:
            at = min(breaks, key=lambda b: abs(b - cut))
            return text[:at], text[at + len(sep):]
    return text[:cut], text[cut:]


def _encode(tok, staging, folder, dtype, val_ids, val_fraction, n_docs, progress):
    """Pass 3: append each document's ids (+ end-of-text) to train.bin or val.bin.

    -> (tokens, UTF-8 bytes of text, documents (or pieces of the single one)), each per split
    """
    from tqdm import tqdm

    tokens, nbytes, ndocs = {"train": 0, "val": 0}, {"train": 0, "val": 0}, {"train": 0, "val": 0}
    eot = [] if tok.eot_id is None else [tok.eot_id]
    with open(folder / "train.bin", "wb") as train_f, open(folder / "val.bin", "wb") as val_f:
        files = {"train": train_f, "val": val_f}
        texts = tqdm(_staged_texts(staging), desc="encode", unit="doc", total=n_docs,
                     disable=None if progress else True, file=sys.stderr)
        for i, text in enumerate(texts):
            if n_docs == 1:
                pieces = zip(("train", "val"), _split_single(text, val_fraction))
            else:
                pieces = [("val" if i in val_ids else "train", text)]
            for split, piece in pieces:
                if not piece:
                    continue
                ids = np.asarray(tok.encode_ordinary(piece) + eot, dtype=dtype)
                ids.tofile(files[split])
                tokens[split] += len(ids)
                nbytes[split] += len(piece.encode("utf-8"))
                ndocs[split] += 1
    return tokens, nbytes, ndocs


def _period_meta(period, terms_file):
    if period is None:
        return None
    return {
        "before": period.before,
        "unit": period.unit,
        "terms_file": None if terms_file is None else str(terms_file),
        "terms_active": len(period.terms),
        "dropped": dict(period.counts),
        "examples": [
            {"reason": h.reason, "matched": h.matched, "year": h.year, "source": h.source, "snippet": h.snippet}
            for hits in period.examples.values() for h in hits
        ],
    }


def format_summary(meta, out_dir, explain=False):
    """The lines `vintage prepare` prints at the end."""
    docs, tokens, nbytes = meta["documents"], meta["tokens"], meta["bytes"]
    lines = [
        f"prepared {out_dir}: {meta['tokenizer_type']} tokenizer, vocab {meta['vocab_size']}, {meta['dtype']}",
        f"documents: {docs['read']} read, {docs['kept']} kept ({docs['train']} train, {docs['val']} val); "
        f"dropped {docs['dropped_duplicate']} duplicate, {docs['dropped_period']} by period, {docs['dropped_empty']} empty",
    ]
    if meta["paragraphs_dropped"]:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(meta["paragraphs_dropped"].items(), key=lambda kv: -kv[1]))
        lines.append(f"paragraphs dropped: {reasons}")
    pf = meta["period_filter"]
    if pf is not None:
        total = sum(pf["dropped"].values())
        lines.append(f"period filter: before {pf['before']}, {pf['terms_active']} terms active, dropped {total} {pf['unit']}(s)")
        if explain:
            for ex in pf["examples"]:
                year = f" ({ex['year']})" if ex["year"] is not None and ex["reason"] != "year" else ""
                lines.append(f"    {ex['reason']}: {ex['matched']!r}{year} in {ex['source']}: {ex['snippet']}")
    lines.append(
        f"tokens: {tokens['train']:,} train, {tokens['val']:,} val; "
        f"{sum(nbytes.values()):,} bytes of text, {meta['bytes_per_token']:.2f} bytes/token"
    )
    return lines
