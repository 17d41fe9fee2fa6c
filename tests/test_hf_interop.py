"""Hugging Face GPT-2 interop: GPT.from_hf / GPT.save_hf against transformers.GPT2LMHeadModel.

Nothing is downloaded: the HF models are built at random from a small GPT2Config. Their weights
are then perturbed (random biases and layer-norm gains), because a fresh HF model has zero
biases and unit gains, under which a dropped bias or gain would go unnoticed.
Tolerance: logits within 1e-4 max abs (both sides float32); the reference check runs in float64.
"""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never reach the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

import vintagelm  # noqa: E402
from torch_gpt import TorchGPT  # noqa: E402

V, BLOCK, L, H, C = 101, 24, 2, 2, 32
LOGITS_ATOL = 1e-4


def random_hf_model(seed=0):
    config = GPT2Config(
        vocab_size=V, n_positions=BLOCK, n_embd=C, n_layer=L, n_head=H, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:  # biases around 0, gains around 1
                p.copy_(0.2 * noise + (1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0))
            else:
                p.copy_(0.3 * noise)
    return model.eval()


def hf_to_our_names(hf_model):
    """HF state dict -> our names: drop the `transformer.` prefix; lm_head is tied to wte."""
    sd = hf_model.state_dict()
    assert torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"])  # tied
    return {k.removeprefix("transformer."): v.numpy().copy() for k, v in sd.items() if k.startswith("transformer.")}


def random_batch(B=3, T=17, seed=0):
    return np.random.default_rng(seed).integers(0, V, size=(B, T), dtype=np.int64)


def our_config(**overrides):
    fields = dict(vocab_size=V, block_size=BLOCK, n_layer=L, n_head=H, n_embd=C, dropout=0.0, bias=True,
                  norm="pre", pos="learned", tie_weights=True, activation="gelu")
    return vintagelm.GPTConfig(**{**fields, **overrides})


def hf_logits(hf_model, idx):
    with torch.no_grad():
        return hf_model(torch.as_tensor(idx)).logits.numpy()


def test_reference_matches_hf(parity):
    """The torch reference (tests/torch_gpt.py) computes exactly HF GPT-2: logits, loss and all
    gradients, in float64. This is the independent check that the parity oracle is right."""
    hf = random_hf_model(seed=1).to(torch.float64)
    params = hf_to_our_names(hf)
    # the reference's defaults are GPT-2's: pre-norm, learned positions, biases, tied head, gelu
    cfg = dict(vocab_size=V, block_size=BLOCK, n_layer=L, n_head=H, n_embd=C)
    ref = TorchGPT.from_numpy(cfg, params, dtype=torch.float64)
    idx = torch.as_tensor(random_batch(seed=2))
    targets = torch.as_tensor(random_batch(seed=3))

    ref_logits, ref_loss = ref(idx, targets)
    ref_loss.backward()
    logits = hf(idx).logits
    loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))  # HF's own `labels` shifts; we do not
    loss.backward()

    parity.check("loss", ref_loss.item(), loss.item(), 1e-12)
    parity.check("logits", ref_logits.detach().numpy(), logits.detach().numpy(), 1e-12)
    hf_grads = {
        k.removeprefix("transformer."): p.grad.numpy() for k, p in hf.named_parameters() if k.startswith("transformer.")
    }
    ref_grads = ref.numpy_grads()
    assert set(ref_grads) == set(hf_grads)
    for name in sorted(ref_grads):
        parity.check(name, ref_grads[name], hf_grads[name], 1e-10)
    parity.assert_ok()


def test_from_hf_matches_transformers(parity, tmp_path, backend):
    hf = random_hf_model(seed=4)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").exists()

    model = vintagelm.GPT.from_hf(str(tmp_path), backend=backend)
    cfg = model.config
    assert (cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd) == (V, BLOCK, L, H, C)
    assert (cfg.norm, cfg.pos, cfg.bias, cfg.tie_weights, cfg.activation) == ("pre", "learned", True, True, "gelu")
    expected = hf_to_our_names(hf)
    assert set(model.params) == set(expected)
    for name in sorted(expected):  # the weights arrive unchanged (float32 both sides)
        parity.check(f"param {name}", model.params[name], expected[name])

    idx = random_batch(seed=5)
    logits, _ = model.forward(idx)
    ref = hf_logits(hf, idx)
    parity.check("logits", logits, ref, atol=LOGITS_ATOL)
    parity.assert_ok()


@pytest.mark.parametrize(
    "overrides", [dict(), dict(tie_weights=False), dict(activation="relu")], ids=["gpt2", "untied", "relu"]
)
def test_save_hf_loads_in_transformers(parity, tmp_path, overrides):
    """GPT-2 can also express an untied head (tie_word_embeddings=False) and ReLU, so these export too."""
    config = our_config(**overrides)
    model = vintagelm.GPT(config, seed=0, dtype=np.float32)
    rng = np.random.default_rng(6)
    for name in sorted(model.params):  # perturb in place: non-zero biases, gains away from 1
        p = model.params[name]
        p[...] = p + rng.normal(0.0, 0.2 if p.ndim == 1 else 0.05, p.shape)
    out = tmp_path / "exported"
    model.save_hf(str(out))
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()

    hf, info = GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    hf.eval()
    # nothing silently re-initialised: every HF tensor came from our file
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert (hf.config.vocab_size, hf.config.n_positions, hf.config.n_layer, hf.config.n_head, hf.config.n_embd) == (
        V, BLOCK, L, H, C)

    idx = random_batch(B=2, T=BLOCK, seed=7)
    logits, _ = model.forward(idx)
    parity.check("logits", logits, hf_logits(hf, idx), atol=LOGITS_ATOL)

    # and back again: from_hf(save_hf(model)) is the same model, exactly
    again = vintagelm.GPT.from_hf(str(out))
    assert set(again.params) == set(model.params)
    for name in sorted(model.params):
        parity.check(f"roundtrip {name}", again.params[name], model.params[name])
    parity.assert_ok()


@pytest.mark.parametrize(
    "overrides",
    [dict(norm="post"), dict(norm="none"), dict(pos="sinusoidal"), dict(bias=False)],
    ids=["post-norm", "no-norm", "sinusoidal", "no-bias"],
)
def test_save_hf_rejects_configs_gpt2_cannot_express(tmp_path, overrides):
    model = vintagelm.GPT(our_config(**overrides), seed=0)
    with pytest.raises(vintagelm.UserError):
        model.save_hf(str(tmp_path / "out"))


def test_from_hf_empty_directory_is_a_user_error(tmp_path):
    with pytest.raises(vintagelm.UserError) as err:
        vintagelm.GPT.from_hf(str(tmp_path))
    message = str(err.value)
    # a clear message names what is missing or where it looked
    assert "config.json" in message or "safetensors" in message or str(tmp_path) in message, message


def test_from_hf_missing_weights_is_a_user_error(tmp_path):
    random_hf_model().config.to_json_file(tmp_path / "config.json")  # config but no weights
    with pytest.raises(vintagelm.UserError) as err:
        vintagelm.GPT.from_hf(str(tmp_path))
    assert "safetensors" in str(err.value) or str(tmp_path) in str(err.value), str(err.value)


def test_from_hf_nonexistent_directory_is_a_user_error(tmp_path):
    with pytest.raises(vintagelm.UserError):
        vintagelm.GPT.from_hf(str(tmp_path / "no-such-dir"))
