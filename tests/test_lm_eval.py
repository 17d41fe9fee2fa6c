"""lm-evaluation-harness against `vintage serve`, run as a user runs it: its `lm_eval` command,
`--model local-completions` with only model, base_url and max_length set, `--batch_size 4`, on
the two tasks shipped in tests/lm_eval_tasks/ (multiple choice and rolling perplexity, local
JSONL files). Nothing is hand-set: lm-eval finds the tokenizer at /tokenizer_info and /tokenize,
sends token-id prompts in batches of 4, starts every document from the eos_token the server
names, and never sends more than the context.

The truth it is held to is `vintage eval --choices/--documents` (vintagelm/harness.py), which
scores the same items by direct forward passes, without the server: every item's log-likelihood
within 1e-4 nats, and the same results table. Tiny trained runs, one char and one BPE (a BPE
merge may cross the boundary between a context and its continuation).

lm-eval is a test extra: this file is skipped only where it is not installed. No network: the
Hugging Face libraries are told to stay offline, with their cache in a temporary folder.

    pytest tests/test_lm_eval.py -q -s     (-s prints the two tables and the largest difference)
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from test_serve import TINY, WORDS, Server, verse
from vintagelm.checkpoint import load_checkpoint
from vintagelm.cli import main

pytest.importorskip("lm_eval", reason="lm-eval is a test extra: pip install 'lm-eval[api]==0.4.13'")

ROOT = Path(__file__).resolve().parent.parent  # the tasks' data_files are relative to it
TASKS = ROOT / "tests" / "lm_eval_tasks"
MAX_LENGTH = 64  # lm-eval's max_length: the runs' context
CONTEXT = MAX_LENGTH - 1  # lm-eval keeps one position for a generated token
CHOICE, PROSE = "vintage_period_choice", "vintage_period_prose"
FILES = {CHOICE: TASKS / "period_choice.jsonl", PROSE: TASKS / "period_prose.jsonl"}
METRICS = {CHOICE: ("acc", "acc_norm"), PROSE: ("word_perplexity", "byte_perplexity", "bits_per_byte")}
TOLERANCE = 1e-4  # nats, per item


def task_texts():
    """Every text of the shipped items, so that a char tokenizer trained with them knows each character."""
    texts = []
    for line in FILES[CHOICE].read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        texts += [item["context"], *item["choices"]]
    texts += [json.loads(line)["text"] for line in FILES[PROSE].read_text(encoding="utf-8").splitlines()]
    return texts


@pytest.fixture(scope="module", params=["char", "bpe"])
def run(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"lm_eval_{request.param}")
    (root / "train.txt").write_text(verse(WORDS, 300, 0) + "\n".join(task_texts()) + "\n", encoding="utf-8")
    tokenizer = ["--tokenizer", "bpe", "--set", "vocab_size=300"] if request.param == "bpe" else []
    with pytest.MonkeyPatch.context() as mp, threadpool_limits(1, user_api="blas"):
        mp.setenv("VINTAGELM_CACHE", str(root / "cache"))
        assert main(["train", "--data", str(root / "train.txt"), "--out", str(root / "tiny"), *tokenizer,
                     "--set", "learning_rate=1e-2", "--max-iters", "200", *TINY]) == 0
    (root / "logs").mkdir()
    return root / "tiny"


@pytest.fixture(scope="module")
def lm_eval_results(run):
    """Run lm_eval against `vintage serve RUN` -> (its results JSON, {task: [sample, ...]})."""
    out = run.parent / "lm_eval_out"
    server = Server(run, run.parent / "logs")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(run.parent / "hf"), "OMP_NUM_THREADS": "1"}
    env.pop("OPENAI_API_KEY", None)
    argv = [str(Path(sys.executable).parent / "lm_eval"), "--model", "local-completions",
            "--model_args", f"model={run.name},base_url={server.url}/v1/completions,max_length={MAX_LENGTH}",
            "--tasks", f"{CHOICE},{PROSE}", "--include_path", str(TASKS), "--batch_size", "4",
            "--output_path", str(out), "--log_samples"]
    try:
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        server.stop()
    assert done.returncode == 0, f"lm_eval failed:\n{done.stderr[-6000:]}\nserver:\n{server.stderr()}"
    [results_file] = out.glob("*/results_*.json")
    samples = {task: [json.loads(line) for line in next(out.glob(f"*/samples_{task}_*.jsonl")).open()]
               for task in FILES}
    table = "\n".join(line for line in done.stdout.splitlines() if line.startswith("|"))
    print(f"\nlm-eval's own table ({run.parent.name}):\n{table}")
    return json.loads(results_file.read_text()), samples


def vintage_eval(run, task, capsys):
    """`vintage eval RUN --choices|--documents FILE --context 63 --json` -> its JSON."""
    capsys.readouterr()
    flag = "--choices" if task == CHOICE else "--documents"
    assert main(["eval", str(run), flag, str(FILES[task]), "--context", str(CONTEXT), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def lm_eval_loglikelihoods(task, samples):
    """Per item, in file order: the log-likelihood of each choice, or of the document."""
    by_item = {s["doc_id"]: s["filtered_resps"] for s in samples}
    if task == CHOICE:
        return [[float(ll) for ll, _greedy in by_item[i]] for i in range(len(by_item))]
    return [float(by_item[i][0]) for i in range(len(by_item))]


@pytest.mark.parametrize("task", [CHOICE, PROSE])
def test_lm_eval_through_the_server_scores_each_item_as_vintage_eval_does(run, lm_eval_results, task, capsys):
    results, samples = lm_eval_results
    ours = vintage_eval(run, task, capsys)
    theirs = lm_eval_loglikelihoods(task, samples[task])
    flat = (lambda lls: [x for item in lls for x in item]) if task == CHOICE else list
    assert len(flat(theirs)) == len(flat(ours["loglikelihoods"])) > 0
    largest = max(abs(a - b) for a, b in zip(flat(theirs), flat(ours["loglikelihoods"]), strict=True))
    table = results["results"][task]
    with capsys.disabled():
        print(f"\n{run.parent.name} {task}: largest difference per item {largest:.2e} nats; "
              + "  ".join(f"{m}: lm-eval {table[m + ',none']:.6g}, vintage eval {ours[m]:.6g}" for m in METRICS[task]))
    assert largest <= TOLERANCE
    for metric in METRICS[task]:
        # 1e-4 nats per item moves these by far less than 1e-5 of themselves over hundreds of words
        assert table[f"{metric},none"] == pytest.approx(ours[metric], rel=1e-5), metric


def test_the_rolling_task_needs_several_windows(run):
    """The prose task proves the windows only if some document is longer than one of them."""
    tokenizer = load_checkpoint(run, with_optimizer=False).tokenizer
    texts = [json.loads(line)["text"] for line in FILES[PROSE].read_text(encoding="utf-8").splitlines()]
    assert max(len(tokenizer.encode(t)) for t in texts) > 2 * CONTEXT
