"""`vintage sample CKPT`: continue a prompt with a trained model, streaming the text as it comes."""
from vintagelm.commands import non_negative

HELP = "generate text from a checkpoint, streamed to stdout (KV cache, temperature, top-k, top-p)"


def add_arguments(p):
    p.add_argument("ckpt", metavar="CKPT", help="a run directory (its latest checkpoint) or a checkpoint directory")
    p.add_argument("--prompt", default="",
                   help="text to continue (default: empty, which starts a fresh document at <|endoftext|>)")
    p.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate (default 500)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="0 = greedy; below 1 sharper, above 1 more random (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the K most likely tokens (default: all)")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample only among the most likely tokens whose probability adds up to P, e.g. 0.9 "
                        "(default: all); applied after --top-k")
    p.add_argument("--seed", type=non_negative, default=1337, help="sampling seed: the same seed gives the same text")
    p.add_argument("--allow-special", action="store_true",
                   help="sample special tokens (<|endoftext|>, role markers) like any other; by default "
                        "<|endoftext|> ends the sample and the others are never sampled")
    p.add_argument("--no-kv-cache", action="store_true",
                   help="recompute the whole window for every token (slow; the reference to compare with)")


def run(args):
    import sys
    import time

    from vintagelm.checkpoint import load_checkpoint
    from vintagelm.common import UserError
    from vintagelm.generate import ContextWindow, SamplingSettings, TextStream, encode_prompt, special_token_rules

    try:
        sampling = SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                    top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    ckpt = load_checkpoint(args.ckpt, with_optimizer=False, finite=True)
    if ckpt.tokenizer is None:
        raise UserError(f"checkpoint {ckpt.path} has no tokenizer.json, so its ids cannot be turned into text")
    if ckpt.tokenizer.vocab_size > ckpt.model.config.vocab_size:
        raise UserError(f"checkpoint {ckpt.path}: the tokenizer has {ckpt.tokenizer.vocab_size} ids but the model "
                        f"only {ckpt.model.config.vocab_size}")
    prompt_ids = encode_prompt(ckpt.tokenizer, args.prompt)
    banned, stop = special_token_rules(ckpt.tokenizer, args.allow_special)
    window = ContextWindow(ckpt.model, prompt_ids, use_kv_cache=not args.no_kv_cache)
    out, text = sys.stdout, TextStream(ckpt.tokenizer)
    out.write(args.prompt)
    out.flush()
    t0, n = time.perf_counter(), 0
    for token, _ in window.sample(sampling, sampling.new_rng(), banned_ids=banned, stop_ids=stop):
        out.write(text.push(token))
        out.flush()  # one token at a time, as it is sampled
        n += 1
    out.write(text.finish() + "\n")
    out.flush()
    seconds = time.perf_counter() - t0
    cache = "off" if args.no_kv_cache else "on"
    print(f"[{n} tokens in {seconds:.2f} s, {n / max(seconds, 1e-9):.1f} tokens/s, KV cache {cache}, "
          f"checkpoint {ckpt.path}]", file=sys.stderr)
    return 0
