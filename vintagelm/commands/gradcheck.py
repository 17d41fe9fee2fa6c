"""`vintage gradcheck`: prove the hand-written backward pass against finite differences."""
from vintagelm.commands import non_negative, positive

HELP = "check every parameter's analytic gradient against central finite differences (float64)"
# what --modern gives the flags that otherwise leave GPTConfig's GPT-2 default (a flag given still wins)
MODERN = dict(norm_type="rms", pos="rope", activation="swiglu")


def add_arguments(p):
    p.add_argument("--modern", action="store_true",
                   help="a Llama-shaped block, every modern switch on: RMSNorm, RoPE, SwiGLU, QK-norm, half as many "
                        "kv heads as heads, no biases, untied head (--norm-type, --pos, --activation, --kv-heads "
                        "still choose)")
    p.add_argument("--norm", default="pre", choices=["pre", "post", "none"], help="norm placement")
    p.add_argument("--norm-type", choices=["layer", "rms"],
                   help="LayerNorm or RMSNorm (default layer; rms with --modern)")
    p.add_argument("--pos", choices=["learned", "sinusoidal", "rope", "none"],
                   help="position encoding (default learned; rope with --modern)")
    p.add_argument("--activation", choices=["gelu", "relu", "swiglu"],
                   help="MLP nonlinearity (default gelu; swiglu with --modern)")
    p.add_argument("--kv-heads", type=positive, metavar="N",
                   help="key/value heads, dividing --heads (default: as many as heads; half of them with --modern)")
    p.add_argument("--qk-norm", action="store_true", help="RMSNorm of each head's queries and keys")
    p.add_argument("--no-bias", action="store_true", help="drop all biases")
    p.add_argument("--untied", action="store_true", help="separate output head instead of tied embeddings")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout probability (masks are held fixed)")
    p.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    p.add_argument("--heads", type=int, default=2, help="attention heads (default 2)")
    p.add_argument("--embd", type=int, default=8, help="channels (default 8)")
    p.add_argument("--vocab", type=int, default=13, help="vocabulary size (default 13)")
    p.add_argument("--seq-len", type=int, default=5, help="sequence length T (default 5)")
    p.add_argument("--batch-size", type=int, default=2, help="batch size B (default 2)")
    p.add_argument("--samples", type=int, default=None, help="entries checked per tensor (default: all)")
    p.add_argument("--seed", type=non_negative, default=0, help="seed of the weights and the batch (>= 0)")
    p.add_argument("--backend", default="reference", choices=["reference", "fast"],
                   help="which implementation to check (default reference; fast needs numba)")


def switches(args):
    """The flags -> GPTConfig's architecture fields: a flag given wins, then --modern's value,
    then GPT-2's (the GPTConfig default)."""
    chosen = dict(MODERN) if args.modern else {}
    chosen.update({key: getattr(args, key) for key in MODERN if getattr(args, key) is not None})
    kv_heads = args.kv_heads
    if kv_heads is None and args.modern:
        kv_heads = args.heads // 2 if args.heads % 2 == 0 else 1  # pairs share a kv head; an odd count shares one
    return dict(chosen, norm=args.norm, n_kv_head=kv_heads or 0, qk_norm=args.qk_norm or args.modern,
                bias=not (args.no_bias or args.modern), tie_weights=not (args.untied or args.modern))


def run(args):
    from vintagelm.common import UserError
    from vintagelm.gradcheck import TOLERANCE, check_model, format_table
    from vintagelm.memory import check_fits
    from vintagelm.model import GPTConfig

    try:
        config = GPTConfig(
            vocab_size=args.vocab, block_size=args.seq_len, n_layer=args.layers, n_head=args.heads,
            n_embd=args.embd, dropout=args.dropout, **switches(args),
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.batch_size < 1 or (args.samples is not None and args.samples < 1):
        raise UserError("--batch-size and --samples must be at least 1")
    check_fits(config, args.batch_size, 8, "this gradient check")  # float64
    print(f"gradcheck ({args.backend} backend): {config}")
    try:
        results = check_model(config, args.batch_size, args.seq_len, args.seed, args.samples, args.backend)
    except ValueError as e:  # the fast backend without numba
        raise UserError(str(e)) from None
    print(format_table(results))
    failed = [r.name for r in results if not r.ok]
    worst = max(r.rel_error for r in results)
    if failed:
        print(f"FAIL: {len(failed)} of {len(results)} tensors exceed relative error {TOLERANCE:g} (worst {worst:.2e})")
        return 1
    print(f"PASS: all {len(results)} tensors within relative error {TOLERANCE:g} (worst {worst:.2e})")
    return 0
