"""`vintage train`: train a GPT (the tiny preset on the builtin Shakespeare by default), then
print a sample. Exit status 0 when training finished, 130 when Ctrl-C stopped it (after a
checkpoint was saved; `--resume` continues from there)."""
HELP = "train a model (default: tiny preset on builtin Shakespeare, about a minute on a laptop CPU), then sample"


def add_arguments(p):
    p.add_argument("--preset", choices=["tiny", "gpt2", "small", "base"], default=None,
                   help="starting configuration (default tiny: today's block, RoPE, RMSNorm, SwiGLU, grouped KV "
                        "heads, QK-norm, with Muon; gpt2: tiny with GPT-2's block and AdamW; small, base: larger; "
                        "on --resume, the run's saved config)")
    p.add_argument("--arch", choices=["gpt", "ngram", "mlp", "rnn", "lstm"], default=None,
                   help="architecture (default gpt): the museum's ngram (Kneser-Ney counts), mlp (Bengio 2003), "
                        "rnn (Elman), lstm; their own settings through --set (e.g. --set n_embd=256)")
    p.add_argument("--config", metavar="FILE.toml",
                   help="TOML file with [model] and [train] tables, applied after the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, repeatable: --set n_layer=2 --set learning_rate=3e-4")
    p.add_argument("--data", metavar="SPEC_OR_PREPARED_DIR",
                   help="a source spec (default builtin:shakespeare; prepared once and cached) "
                        "or a `vintage prepare` folder")
    p.add_argument("--tokenizer", metavar="char|bpe|FILE", help="tokenizer for preparing a source spec (default char)")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/<preset>)")
    p.add_argument("--max-iters", type=int, metavar="N", help="optimizer steps")
    p.add_argument("--batch-size", type=int, metavar="N", help="sequences per step")
    p.add_argument("--seed", type=int, metavar="N", help="seed of init, data order, dropout and the sample")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint, exactly (Ctrl-C during training "
                        "saves one and exits with status 130)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="parameter precision (default float32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def run(args):
    from functools import partial

    import numpy as np

    from vintagelm import dist
    from vintagelm.common import UserError, print0
    from vintagelm.generate import sample_text
    from vintagelm.rundir import saved_config
    from vintagelm.train import train
    from vintagelm.train_config import resolve_config

    if args.out is not None and not args.out.strip():
        raise UserError("--out is empty; give the run directory, or leave --out out for runs/<preset>")
    out = args.out or f"runs/{args.preset or 'tiny'}"
    world = dist.world()  # one process, or the ranks of mpirun
    base = saved_config(out, world) if args.resume and args.preset is None else None
    cfg = resolve_config(args.preset, args.config, args.overrides, base=base, data=args.data,
                         tokenizer=args.tokenizer, out=out, max_iters=args.max_iters, batch_size=args.batch_size,
                         seed=args.seed, dtype=args.dtype, arch=args.arch)
    result = train(cfg, resume=args.resume, progress=not args.no_progress, world=world,
                   make_optimizer=partial(dist.make_optimizer, world=world))
    minutes, seconds = divmod(result.seconds, 60)
    if result.interrupted:
        print0(f"stopped at step {result.step}; checkpoint saved. Continue with: vintage train --resume --out {out}")
        return 130
    summary = f"done: step {result.step} in {int(minutes)}m{seconds:04.1f}s"
    if result.val:
        summary += f", val loss {result.val['loss']:.4f}, {result.val['bits_per_byte']:.3f} bits per byte"
    print0(summary)
    if world.rank != 0:
        return 0  # under MPI every rank holds the same model: rank 0 alone shows the sample
    if cfg.sample_tokens and not np.isfinite(result.model.flat_params).all():
        print("no sample: the weights are not finite (the run diverged; try a lower learning_rate)")
    elif cfg.sample_tokens:
        print(f"--- sample ({cfg.sample_tokens} tokens; more with: vintage sample {out}) ---")
        sample_text(result.model, result.tokenizer, cfg.sample_tokens, cfg.seed, lambda s: print(s, end="", flush=True))
        print()
    return 0
