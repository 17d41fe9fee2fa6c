"""Text in, token arrays out: corpus sources, cleaning, the period filter, prepared datasets.

    sources.py    source specs -> Documents (builtin Shakespeare, files, Gutenberg, JSONL)
    gutenberg.py  strip Project Gutenberg boilerplate; download books by id (cached)
    clean.py      decoding, normalisation, unwrapping, exact de-duplication
    period.py     drop text that mentions years or terms later than a cut-off (modern_terms.txt)
    prepare.py    sources -> train.bin / val.bin / tokenizer.json / meta.json, atomically
    loader.py     memory-mapped reading of a prepared dataset, random and sequential batches
    resolve.py    `--data` (a prepared folder or a source spec, prepared once into the cache)

Knows nothing of models. The submodules are imported where they are used, so importing
this package costs nothing.
"""
