"""Looking inside a trained GPT: load it from a run, name its tokens, recompute every head's
attention weights and draw them. The attention-maps and embeddings experiments read runs with
these, and `vintage report` draws a run's attention maps with the same two functions. Only
the experiments' run() imports this module, so it may import NumPy and the model at the top.
"""
import numpy as np

from vintagelm.attention_heads import AttentionHeads
from vintagelm.nn.attention import causal_softmax, merge_heads, qkv_heads

LABELLED = 48  # attention maps of prompts up to this many tokens get their tokens as tick labels


def load_gpt(path):
    """A run or checkpoint directory -> checkpoint.Checkpoint with finite weights and a tokenizer;
    a one-line UserError otherwise."""
    from vintagelm.checkpoint import load_checkpoint
    from vintagelm.common import UserError

    ckpt = load_checkpoint(path, with_optimizer=False, finite=True)
    if ckpt.tokenizer is None:
        raise UserError(f"checkpoint {ckpt.path} has no tokenizer.json: its tokens cannot be named")
    if ckpt.model.architecture != "gpt":
        raise UserError(f"checkpoint {ckpt.path} holds a {ckpt.model.architecture!r} model; the lab reads GPTs")
    return ckpt


def token_label(tokenizer, token_id):
    """A token as readable text: a space as ␣, a newline as \\n, other control characters as
    \\xNN, and a byte-level piece that is not whole UTF-8 characters as its bytes, <e2 80>."""
    if hasattr(tokenizer, "decode_bytes"):
        raw = tokenizer.decode_bytes([token_id])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "<" + raw.hex(" ") + ">"
    else:
        text = tokenizer.decode([token_id])
    text = text.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text) or repr(text)


def attention_weights(model, ids):
    """ids (T,) -> (L-long list of (H, T, T) float64 attention weights, the largest difference
    between weights @ v and the attention output of the model's own forward).

    The residual stream x (1, T, C) is advanced by the model's own block_forward; at layer i
    the sublayer input h is ln_1(x) (pre-norm) or x (post-norm, none), and
        qkv = h W_attn + b_attn (1, T, (H + 2 Hkv) D)
    goes through the model's own heads (WeightHeads: QK-norm, RoPE, each kv head shared by its
    group of query heads) to q, k, v (H, T, D), and
        P   = softmax(q kᵀ / sqrt(D) + causal mask)  (H, T, T), row t sums to 1 over j <= t."""
    cfg = model.config
    idx = np.asarray([ids], dtype=np.int64)  # (1, T)
    x, _ = model.ops.embedding_forward(idx, model.params["wte.weight"], model.pos_table, 0)  # (1, T, C)
    heads, gap = WeightHeads(model), 0.0
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        h = x
        if cfg.norm == "pre":
            h, _ = model.norm_forward(x, *model.layer(p + "ln_1"))
        w, b = model.layer(p + "attn.c_attn")  # (C, (H + 2 Hkv) D), its bias or None
        qkv = h.astype(np.float64) @ w + (0.0 if b is None else b)  # (1, T, (H + 2 Hkv) D)
        ours, _ = heads.forward(qkv, model.qk_gains(p, model.params), None)  # (1, T, C); appends P to heads.maps
        x, cache = model.block_forward(x, i, None)  # rng None: no dropout, as in evaluation
        gap = max(gap, float(np.max(np.abs(ours - cache["attn_proj"].x))))  # the input the model fed c_proj
    return heads.maps, gap


class WeightHeads(AttentionHeads):
    """A model's attention heads, in float64, whose attention op is written out and keeps its
    weights. Everything before the op is the model's own code (attention_heads.py), so every
    switch (QK-norm, RoPE, grouped kv heads) reaches the weights as it reaches the model's
    attention: the op is given q, k, v packed as (B, T, 3C), each kv head already copied to
    its group of query heads."""

    def __init__(self, model):
        super().__init__(model.config, model.ops, np.float64)  # RoPE tables in float64
        self.maps = []  # (H, T, T) per call: one per layer
        self.attention_forward = self.explicit_attention

    def explicit_attention(self, qkv, n_head, dropout, rng):
        """qkv (1, T, 3C) -> (the heads' output (1, T, C), no cache); the weights go to maps."""
        q, k, v = qkv_heads(qkv, n_head)  # (1, H, T, D) each
        P = causal_softmax(q @ k.transpose(0, 1, 3, 2), scale=1.0 / np.sqrt(q.shape[-1]))  # (1, H, T, T)
        self.maps.append(P[0])
        return merge_heads(P @ v), None


def draw_attention_maps(page, maps, labels):
    """A grid of heatmaps on page.figure("attention_maps", ...): rows = layers, columns = heads,
    and a colour bar in its own column; tokens as tick labels when few. The colour scale is a
    square root, so that the small weights of a spread-out head stay visible next to a sharp
    head's near-1 ones. `page`: a lab page, or anything with its figure(name, caption, size=)."""
    from matplotlib.colors import PowerNorm

    L, H, T = len(maps), maps[0].shape[0], len(labels)
    cell = 2.6 if T <= 16 else 3.4 if T <= LABELLED else 3.0
    fig, _ = page.figure("attention_maps", f"Attention weights of every head (rows: layers 0..{L - 1}, "
                         f"columns: heads 0..{H - 1}); row t = the query at token t, column j = the key it looks "
                         "at; square-root colour scale", size=(cell * H + 0.8, cell * L))
    fig.clf()
    grid = fig.add_gridspec(L, H + 1, width_ratios=[1] * H + [0.05])
    ticks, norm = T <= LABELLED, PowerNorm(0.5, vmin=0.0, vmax=1.0)
    for i in range(L):
        for h in range(H):
            ax = fig.add_subplot(grid[i, h])
            image = ax.imshow(maps[i][h], cmap="viridis", norm=norm, interpolation="nearest")
            ax.set_title(f"layer {i} head {h}", fontsize=9)
            if ticks:
                ax.set_xticks(range(T), labels, fontsize=5 if T > 24 else 7, rotation=90, parse_math=False)
                ax.set_yticks(range(T), labels, fontsize=5 if T > 24 else 7, parse_math=False)
            else:
                ax.set(xlabel="key position", ylabel="query position")
    fig.colorbar(image, cax=fig.add_subplot(grid[:, H]), label="attention weight")
