"""Will a training step fit in this machine's memory? A rough count, made before anything is
allocated, so an impossible size is a one-line error instead of a MemoryError minutes in.

A GPT step holds four copies of the parameters (weights, gradients, AdamW's m and v) and,
per layer, what backward needs: about 17 (B, T, C) arrays (the inputs of the four linear
layers and two norms, q/k/v, the 4C-wide MLP activations) and the (B, H, T, T) attention
probabilities (the naive and blocked forms keep them; tiled keeps none).
"""
import os

from vintagelm.common import UserError

ACTIVATIONS_PER_LAYER = 17  # (B, T, C) arrays kept per layer for backward (see above)
USABLE = 0.8  # of physical memory: the OS and the rest of the process need some


def training_bytes(config, batch_size, itemsize):
    """Estimated peak bytes of one training step of a GPT of `config` at `batch_size`."""
    B, T, C, L, H, V = (batch_size, config.block_size, config.n_embd, config.n_layer, config.n_head,
                        config.vocab_size)
    n_params = V * C + T * C + L * 12 * C * C
    attention = 0 if config.attention == "tiled" else B * H * T * T
    per_layer = ACTIVATIONS_PER_LAYER * B * T * C + attention
    return itemsize * (4 * n_params + L * per_layer + 2 * B * T * V)  # + logits and their gradient


def physical_memory():
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(config, batch_size, itemsize, what="this training run"):
    """UserError when `what` needs more memory than the machine has."""
    need, have = training_bytes(config, batch_size, itemsize), physical_memory()
    if have is not None and need > USABLE * have:
        raise UserError(f"{what} needs about {need / 2**30:.1f} GiB of memory, more than this machine's "
                        f"{have / 2**30:.1f} GiB; make n_embd, n_layer, block_size or the batch smaller "
                        "(or use grad_accum, or attention=tiled for long blocks)")
