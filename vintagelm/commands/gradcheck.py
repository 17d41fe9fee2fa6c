"""`vintage gradcheck`: prove the hand-written backward pass against finite differences."""
from vintagelm.commands import non_negative

HELP = "check every parameter's analytic gradient against central finite differences (float64)"


def add_arguments(p):
    p.add_argument("--norm", default="pre", choices=["pre", "post", "none"], help="layer-norm placement")
    p.add_argument("--pos", default="learned", choices=["learned", "sinusoidal"], help="position encoding")
    p.add_argument("--activation", default="gelu", choices=["gelu", "relu"], help="MLP nonlinearity")
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


def run(args):
    from vintagelm.common import UserError
    from vintagelm.gradcheck import TOLERANCE, check_model, format_table
    from vintagelm.memory import check_fits
    from vintagelm.model import GPTConfig

    try:
        config = GPTConfig(
            vocab_size=args.vocab, block_size=args.seq_len, n_layer=args.layers, n_head=args.heads,
            n_embd=args.embd, dropout=args.dropout, bias=not args.no_bias, norm=args.norm, pos=args.pos,
            tie_weights=not args.untied, activation=args.activation,
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
