"""Benchmark text generation: time to first token and decode speed, with and without a KV cache,
for vintagelm (NumPy) and the team's PyTorch reference GPT, side by side.

    python benchmarks/bench_sampling.py                       # baby config, prompts 16 .. 256
    python benchmarks/bench_sampling.py --new-tokens 64 --rounds 5

Model: the `baby` config (harness.py: 6 layers, 6 heads, 384 channels, block 256, vocab 65), float32,
random weights (speed does not depend on training); the torch model holds a copy of ours.
For each prompt length P = 16, 32, ... block_size, each implementation greedily generates
--new-tokens tokens twice: once with a KV cache (prefill the prompt, then one forward per
token) and once recomputing the whole window for every token. Both go through vintagelm's
sliding-window bookkeeping (TorchWindow subclasses vintagelm.generate.ContextWindow), so at
P = block_size the first new token already restarts the window at the last block_size // 2
tokens: that re-prefill counts as decode time, as it would in real use.
    time to first token (TTFT)  prompt forward + picking the token
    decode tokens/s             (new_tokens - 1) / (time from the first token to the last)
Runs are interleaved (every round runs every prompt length for both implementations, the
order of the two alternating), and the table reports medians over rounds. Ratios are
ours / torch: below 1 is faster for TTFT, above 1 is faster for tokens/s.

PyTorch's reference (tests/torch_gpt.py) has no KV cache, so TorchWindow below adds one with
torch ops, reusing the reference's modules (same weights), with attention written out like
the reference's (no fused kernels). Both libraries use their default threads unless --threads
says otherwise.
"""
import argparse
import functools
import math
import statistics
import sys
import time

import numpy as np

from harness import BENCH_MODELS, load_torch_reference, require_torch, set_threads
from vintagelm import GPT
from vintagelm.generate import ContextWindow, sample_next_token

torch = require_torch()  # (a missing torch or tests/ ends the script here, with one line saying why)
TorchGPT = load_torch_reference().TorchGPT


class TorchWindow(ContextWindow):
    """ContextWindow driving the torch reference instead: the same window bookkeeping and the
    same KVCache object (its NumPy buffers shared with torch through torch.from_numpy, no
    copies); only forward_last differs. `model` (ours) supplies the config and cache shape.

    A cached forward embeds the new tokens at positions cache.pos.., and in each block's
    attention writes their keys and values at [pos:pos+Tn] of the layer's (1, H, T_max, D)
    buffers and attends over positions < pos + Tn with an offset causal mask."""

    def __init__(self, model, ref, prompt_ids, use_kv_cache=True):
        self.ref = ref
        super().__init__(model, prompt_ids, use_kv_cache)

    @torch.no_grad()
    def forward_last(self, tokens, cache=None):
        idx = torch.tensor([tokens])  # (1, Tn)
        if cache is None:
            logits, _ = self.ref(idx)  # (1, T, V): the reference's own full forward
        else:
            logits = self._forward_cached(idx, cache)
        return logits[0, -1].numpy()

    def _forward_cached(self, idx, cache):
        """idx (1, Tn) new tokens -> logits (1, Tn, V), extending the cache by Tn positions."""
        ref, pos, Tn = self.ref, cache.pos, idx.shape[1]
        x = ref.wte(idx) + ref.positions(pos + Tn)[pos:]  # (1, Tn, C)
        for i, block in enumerate(ref.h):
            k_buf, v_buf = (torch.from_numpy(buf) for buf in cache.layer(i))  # (1, H, T_max, D) views
            attn = functools.partial(attention_cached, block.attn, k_buf, v_buf, pos)  # h (1, Tn, C) -> same
            if block.norm == "pre":
                x = x + attn(block.ln_1(x))
                x = x + block.mlp(block.ln_2(x))
            elif block.norm == "post":
                x = block.ln_1(x + attn(x))
                x = block.ln_2(x + block.mlp(x))
            else:
                x = x + attn(x)
                x = x + block.mlp(x)
        if ref.cfg["norm"] == "pre":
            x = ref.ln_f(x)
        head = ref.wte.weight if ref.cfg["tie_weights"] else ref.lm_head.weight  # (V, C)
        cache.advance(Tn)
        return x @ head.T


def attention_cached(attn, k_buf, v_buf, pos, h):
    """h (1, Tn, C) -> (1, Tn, C): the reference's attention module, keys/values from the cache."""
    B, Tn, C = h.shape
    H = attn.n_head
    q, k, v = attn.c_attn(h).split(C, dim=-1)
    q, k, v = (t.view(B, Tn, H, C // H).transpose(1, 2) for t in (q, k, v))  # (1, H, Tn, D)
    k_buf[:, :, pos:pos + Tn] = k
    v_buf[:, :, pos:pos + Tn] = v
    keys, values = k_buf[:, :, :pos + Tn], v_buf[:, :, :pos + Tn]  # (1, H, pos+Tn, D)
    att = (q @ keys.transpose(-2, -1)) / math.sqrt(C // H)  # (1, H, Tn, pos+Tn)
    future = torch.ones(Tn, pos + Tn, dtype=torch.bool).triu(diagonal=pos + 1)
    att = att.masked_fill(future, float("-inf")).softmax(dim=-1)
    y = (att @ values).transpose(1, 2).reshape(B, Tn, C)
    return attn.c_proj(y)


def time_generation(make_window, prompt, new_tokens):
    """Greedy generation -> (ttft seconds, decode tokens/s, tokens)."""
    t0 = time.perf_counter()
    ctx = make_window(prompt)
    tokens = [int(sample_next_token(ctx.logits()[None], None, temperature=0)[0])]
    t_first = time.perf_counter()
    for _ in range(new_tokens - 1):
        ctx.append(tokens[-1])
        tokens.append(int(sample_next_token(ctx.logits()[None], None, temperature=0)[0]))
    t_end = time.perf_counter()
    return t_first - t0, (new_tokens - 1) / (t_end - t_first), tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens generated per run (default 32)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported (default 3)")
    ap.add_argument("--lengths", type=int, nargs="*", help="prompt lengths (default 16, 32, ... block_size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both libraries (default: their own defaults); 1 is steadier on a busy machine")
    args = ap.parse_args()
    if args.new_tokens < 2 or args.rounds < 1:
        sys.exit("--new-tokens must be at least 2 and --rounds at least 1")
    if args.threads is not None:
        set_threads(args.threads)

    config = BENCH_MODELS["baby"].config
    model = GPT(config, seed=args.seed).eval()
    ref = TorchGPT.from_numpy(config, model.params, dtype=torch.float32).eval()
    block = config.block_size
    lengths = args.lengths or [2 ** i for i in range(4, int(math.log2(block)) + 1)]
    prompts = {P: np.random.default_rng([args.seed, P]).integers(0, config.vocab_size, P) for P in lengths}
    paths = {  # (implementation, cached?) -> prompt -> window
        ("ours", True): lambda p: ContextWindow(model, p, use_kv_cache=True),
        ("ours", False): lambda p: ContextWindow(model, p, use_kv_cache=False),
        ("torch", True): lambda p: TorchWindow(model, ref, p, use_kv_cache=True),
        ("torch", False): lambda p: TorchWindow(model, ref, p, use_kv_cache=False),
    }
    print(f"baby config ({config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, "
          f"block {config.block_size}, vocab {config.vocab_size}), float32, {model.num_params() / 1e6:.2f} M params; "
          f"{args.new_tokens} new tokens per run, {args.rounds} rounds; "
          f"torch {torch.__version__} threads {torch.get_num_threads()}, numpy {np.__version__}", flush=True)

    for make_window in paths.values():  # warm-up, untimed: first-call allocations, torch's lazy init
        time_generation(make_window, prompts[lengths[0]], 2)
    results = {}  # (impl, cached, P) -> list of (ttft, tok/s)
    tokens = {}  # (impl, cached, P) -> greedy tokens of the last round
    for r in range(args.rounds):
        impls = ("ours", "torch") if r % 2 == 0 else ("torch", "ours")
        for P in lengths:
            for impl in impls:
                for cached in (True, False):
                    ttft, tps, toks = time_generation(paths[impl, cached], prompts[P], args.new_tokens)
                    results.setdefault((impl, cached, P), []).append((ttft, tps))
                    tokens[impl, cached, P] = toks
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    def med(impl, cached, P, i):
        return statistics.median(x[i] for x in results[impl, cached, P])

    for cached in (True, False):
        print(f"\n{'with' if cached else 'WITHOUT'} KV cache (medians)")
        print(f"{'prompt':>6} | {'TTFT ms ours':>12} {'torch':>8} {'ours/torch':>10} | "
              f"{'decode tok/s ours':>17} {'torch':>8} {'ours/torch':>10}")
        for P in lengths:
            t_o, t_t = med("ours", cached, P, 0), med("torch", cached, P, 0)
            s_o, s_t = med("ours", cached, P, 1), med("torch", cached, P, 1)
            print(f"{P:>6} | {t_o * 1e3:>12.1f} {t_t * 1e3:>8.1f} {t_o / t_t:>10.2f} | "
                  f"{s_o:>17.1f} {s_t:>8.1f} {s_o / s_t:>10.2f}")
    print("\nKV-cache decode speed-up (tok/s with cache / without)")
    print(f"{'prompt':>6} | {'ours':>6} {'torch':>6}")
    for P in lengths:
        print(f"{P:>6} | {med('ours', True, P, 1) / med('ours', False, P, 1):>6.1f} "
              f"{med('torch', True, P, 1) / med('torch', False, P, 1):>6.1f}")

    same_cache = all(tokens["ours", True, P] == tokens["ours", False, P] for P in lengths)
    same_torch = all(tokens["ours", True, P] == tokens["torch", True, P] == tokens["torch", False, P] for P in lengths)
    print(f"\ngreedy tokens: ours cached == ours uncached: {same_cache}; "
          f"ours == torch (cached and uncached): {same_torch}")


if __name__ == "__main__":
    main()
