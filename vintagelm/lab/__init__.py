"""`vintage lab NAME`: every "why" of modern LLMs as one measured experiment with a picture.

Each experiment is one module here with TITLE, HELP, add_arguments(parser) and
run(args, page) (page: page.LabPage). An experiment imports what every experiment shares and
never another experiment:
    page.py         the page writer: figures, results.json, index.html, and --out kept safe
    short_run.py    the one training loop of the lab (train.py's training_step), the corpus,
                    validation, and a short run saved as a run folder for `vintage doctor`
    measure.py      wall time, peak memory, power-law fits, unigram entropy, the machine, a bar
    trained_gpt.py  a trained GPT loaded from a run, its tokens named, its attention recomputed
                    and drawn (`vintage report` draws attention maps with it too)
and vintagelm.plots (smooth). A module imports nothing heavy at import time (NumPy, the model,
matplotlib come inside `run`), so `vintage --help` stays fast. An experiment writes files only
under page.out_dir (its run folders, for instance): while it runs that is a private folder,
which replaces --out when the page is complete (page.py), so whatever it writes there belongs
to the page.
"""
# experiment name -> module under vintagelm.lab (in the order `vintage lab --help` lists them)
EXPERIMENTS = {
    "attention-cost": "attention_cost",
    "kv-cache": "kv_cache_savings",
    "gradients": "gradients",
    "lr-batch": "lr_batch",
    "data-quality": "data_quality",
    "attention-maps": "attention_maps",
    "embeddings": "embeddings",
    "tokenizers": "tokenizer_choice",
    "scaling": "scaling",
    "museum": "before_transformers",
    "modern": "modern",
    "era": "era",
}
