"""`vintage lab NAME`: every "why" of modern LLMs as one measured experiment with a picture.

Each experiment is one module here with TITLE, HELP, add_arguments(parser) and
run(args, page) (page: page.LabPage). A module imports nothing heavy at import time (NumPy,
the model, matplotlib come inside `run`), so `vintage --help` stays fast. An experiment writes
files only under page.out_dir (its run folders, for instance): while it runs that is a private
folder, which replaces --out when the page is complete (page.py), so whatever it writes there
belongs to the page.
"""
# experiment name -> module under vintagelm.lab (in the order `vintage lab --help` lists them)
EXPERIMENTS = {
    "attention-cost": "attention_cost",
    "kv-cache": "kv_cache",
    "gradients": "gradients",
    "lr-batch": "lr_batch",
    "data-quality": "data_quality",
    "attention-maps": "attention_maps",
    "embeddings": "embeddings",
    "tokenizers": "tokenizers",
    "scaling": "scaling",
    "museum": "museum",
    "era": "era",
}
