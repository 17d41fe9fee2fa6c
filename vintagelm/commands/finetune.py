"""`vintage finetune BASE_RUN`: supervised fine-tuning of a trained model on conversations, so
that it answers in turns (chat/). The same loop, progress, checkpoints, resume and metrics as
`vintage train`; the loss, and the validation loss and bits per byte, come from the assistant's
tokens alone. Exit status 0 when done, 130 when Ctrl-C stopped it (a checkpoint was saved)."""
from vintagelm.commands import non_negative

HELP = "fine-tune a trained run on conversations (default: the builtin set made from the plays) to chat"

# what differs from a base run's settings: fewer steps at a lower peak, no closing sample
FINETUNE_DEFAULTS = {"max_iters": 600, "learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 20,
                     "lr_decay_iters": 0, "eval_interval": 100, "eval_iters": 20, "checkpoint_interval": 200,
                     "sample_tokens": 0}
SHOWN_QUESTION = "Good morrow, my lord. What news from the court?"  # asked once fine-tuning ends


def add_arguments(p):
    p.add_argument("base", metavar="BASE_RUN",
                   help="the run to start from (its latest checkpoint) or a checkpoint directory; "
                        "with --resume, ignored unless --out is not given")
    p.add_argument("--data", metavar="CHAT.jsonl",
                   help='conversations, one JSON object per line: {"messages": [{"role": "user", "content": '
                        '"..."}, {"role": "assistant", "content": "..."}]}; every 10th is held out for '
                        "validation (default: the builtin set made from the plays)")
    p.add_argument("--skip-bad", action="store_true", help="skip bad lines of --data (and say how many) "
                                                           "instead of refusing the file")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory of the fine-tune (default runs/<base>-chat)")
    p.add_argument("--max-iters", type=int, metavar="N", help=f"optimizer steps (default {FINETUNE_DEFAULTS['max_iters']})")
    p.add_argument("--batch-size", type=int, metavar="N", help="windows per step (default: the base run's)")
    p.add_argument("--learning-rate", type=float, metavar="LR",
                   help=f"peak learning rate (default {FINETUNE_DEFAULTS['learning_rate']:g})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training field, repeatable (the model's shape is the base run's)")
    p.add_argument("--seed", type=non_negative, metavar="N", help="seed of the data order and dropout")
    p.add_argument("--resume", action="store_true", help="continue the fine-tune in --out from its latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def run(args):
    from dataclasses import replace
    from functools import partial
    from pathlib import Path

    from vintagelm import dist
    from vintagelm.chat.dataset import chat_spec, load_chat_dataset
    from vintagelm.chat.format import Message
    from vintagelm.chat.reply import ChatModel, Reply
    from vintagelm.checkpoint import read_state, resolve_checkpoint
    from vintagelm.common import UserError
    from vintagelm.train_config import TrainConfig, resolve_config
    from vintagelm.checkpoint import run_dir_of
    from vintagelm.generate import SamplingSettings
    from vintagelm.tokenizers import load_tokenizer
    from vintagelm.rundir import saved_config
    from vintagelm.train import train

    if args.out is not None and not args.out.strip():
        raise UserError("--out is empty; give the run directory, or leave --out out for runs/<base>-chat")
    base_dir = Path(args.base)
    out = args.out or f"runs/{run_dir_of(base_dir.resolve()).name}-chat"  # a checkpoint's run names it
    world = dist.world()  # one process, or the ranks of mpirun
    flags = dict(max_iters=args.max_iters, batch_size=args.batch_size, learning_rate=args.learning_rate,
                 seed=args.seed, out=out)
    if args.resume:
        cfg = resolve_config(None, None, args.overrides, base=saved_config(out, world), **flags)
        if args.data is not None and chat_spec(args.data) != cfg.data:
            raise UserError(f"--resume: the run in {out} fine-tunes on {cfg.data}, not {chat_spec(args.data)}; "
                            "drop --data or fine-tune into a new --out")
        tokenizer_file = Path(out) / "tokenizer.json"
    else:
        checkpoint = resolve_checkpoint(base_dir).resolve()
        state = read_state(checkpoint / "state.json")
        if "train_config" not in state:
            raise UserError(f"{checkpoint / 'state.json'} has no train_config; it was not written by `vintage train`")
        if state.get("architecture") == "ngram":
            raise UserError(f"{checkpoint} is an n-gram (count) model, which cannot be fine-tuned: its tables are "
                            "counted once from text, not learned by gradient steps; fine-tune a gpt, mlp, rnn or "
                            "lstm run instead")
        base_cfg = TrainConfig.from_dict(state["train_config"], source=str(checkpoint / "state.json"))
        start = replace(base_cfg, data=chat_spec(args.data), init_from=str(checkpoint), skip_bad=args.skip_bad,
                        out=out, **FINETUNE_DEFAULTS)
        cfg = resolve_config(None, None, args.overrides, base=start, **flags)
        tokenizer_file = checkpoint / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise UserError(f"{tokenizer_file} is missing: the conversations cannot be tokenized as the model was")
    tokenizer = load_tokenizer(tokenizer_file)
    print(f"chat data: {cfg.data}")
    dataset = load_chat_dataset(cfg.data, tokenizer, cfg.model.block_size, cfg.skip_bad)
    result = train(cfg, resume=args.resume, progress=not args.no_progress, dataset=dataset, world=world,
                   make_optimizer=partial(dist.make_optimizer, world=world))
    if result.interrupted:
        print(f"stopped at step {result.step}; checkpoint saved. Continue with: vintage finetune {args.base} "
              f"--resume --out {out}")
        return 130
    minutes, seconds = divmod(result.seconds, 60)
    summary = f"done: step {result.step} in {int(minutes)}m{seconds:04.1f}s"
    if result.val:
        summary += (f", val loss on the assistant's tokens {result.val['loss']:.4f}, "
                    f"{result.val['bits_per_byte']:.3f} bits per byte")
    print(summary)
    chat = ChatModel(result.model, result.tokenizer, Path(out).name)
    prompt, _, _ = chat.chat_prompt([Message("user", SHOWN_QUESTION)], reserve=chat.block_size // 2)
    sampling = SamplingSettings(max_new_tokens=chat.block_size // 2, temperature=0.8, seed=cfg.seed)
    reply = "".join(Reply(chat, prompt, sampling))
    print(f"--- user: {SHOWN_QUESTION}\n--- {chat.name}: {reply}\nTalk to it with: vintage chat {out}")
    return 0
