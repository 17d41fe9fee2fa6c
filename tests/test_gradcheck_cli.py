"""`vintage gradcheck` on the modern switches: --modern (a Llama-shaped block with every switch
on) and each switch's own flag. The parameter table is checked against the shapes the spec
gives (c_attn (C, (H + 2 Hkv) D), q_norm/k_norm (D,), SwiGLU's three matrices, no wpe with RoPE),
and the check must be able to fail: a wrong RoPE backward is caught."""
import re

import numpy as np
import pytest

from vintagelm.cli import main


def table(out):
    """gradcheck's printed table -> {parameter name: entries checked}."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s+(\d+)\s+\S+\s+\S+\s+(?:PASS|FAIL)$", out, re.M)}


def test_modern_checks_every_switch(capsys):
    assert main(["gradcheck", "--modern"]) == 0
    out = capsys.readouterr().out
    assert "PASS: all" in out
    for field in ("n_kv_head=1", "norm_type='rms'", "pos='rope'", "activation='swiglu'", "qk_norm=True",
                  "bias=False", "tie_weights=False"):
        assert field in out
    checked = table(out)
    C, H, Hkv, D, F = 8, 2, 1, 4, 24  # F: SwiGLU's default width, 2/3 of 4C rounded up to a multiple of 8
    assert checked["h.0.attn.c_attn.weight"] == C * (H + 2 * Hkv) * D  # every entry (no --samples)
    assert checked["h.1.attn.q_norm.weight"] == checked["h.1.attn.k_norm.weight"] == D
    assert [checked[f"h.0.mlp.{name}.weight"] for name in ("c_gate", "c_fc", "c_proj")] == [C * F] * 3
    assert "lm_head.weight" in checked and "ln_f.weight" in checked
    assert not [name for name in checked if name.endswith(".bias") or name.startswith("wpe")]


def test_flags_override_modern(capsys):
    assert main(["gradcheck", "--modern", "--pos", "learned", "--activation", "gelu", "--kv-heads", "2",
                 "--heads", "4", "--embd", "16", "--samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "PASS: all" in out and "n_kv_head=2" in out and "qk_norm=True" in out
    checked = table(out)
    assert "wpe.weight" in checked and "h.0.mlp.c_gate.weight" not in checked and "h.0.mlp.c_fc.weight" in checked


@pytest.mark.parametrize("flags, field", [
    (["--norm-type", "rms"], "norm_type='rms'"),
    (["--pos", "rope"], "pos='rope'"),
    (["--pos", "none"], "pos='none'"),
    (["--activation", "swiglu"], "activation='swiglu'"),
    (["--kv-heads", "1"], "n_kv_head=1"),
    (["--qk-norm"], "qk_norm=True"),
    (["--qk-norm", "--pos", "rope", "--kv-heads", "1", "--norm", "post"], "norm='post'"),
])
def test_each_switch_alone(flags, field, capsys):
    """One switch on a GPT-2 block: the rest stays GPT-2's (learned positions, biases, tied head)."""
    assert main(["gradcheck", "--samples", "4", *flags]) == 0
    out = capsys.readouterr().out
    assert "PASS: all" in out and field in out and "bias=True" in out and "tie_weights=True" in out


def test_a_wrong_rope_backward_fails(monkeypatch, capsys):
    from vintagelm.nn import rope
    from vintagelm.nn.ops import ReferenceOps

    def wrong(dy, cache):  # 1% off: what a sign or an index slip in a rotation's backward looks like, only smaller
        return 0.99 * rope.rope_backward(dy, cache)

    monkeypatch.setattr(ReferenceOps, "rope_backward", staticmethod(wrong))
    assert main(["gradcheck", "--modern", "--samples", "6"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^h\.0\.attn\.c_attn\.weight .*FAIL$", out, re.M) and "FAIL: " in out
    assert re.search(r"^h\.0\.attn\.q_norm\.weight .*FAIL$", out, re.M)  # QK-norm comes before RoPE
    # the last layer's parts after its RoPE get their gradients before the wrong step runs
    assert all(re.search(rf"^{re.escape(name)} .*PASS$", out, re.M)
               for name in ("h.1.attn.c_proj.weight", "h.1.mlp.c_gate.weight", "lm_head.weight"))


@pytest.mark.parametrize("flags, message", [
    (["--kv-heads", "3"], "n_kv_head (3) must divide n_head (2)"),
    (["--pos", "rope", "--embd", "6"], "even head size"),
])
def test_bad_switches_are_one_line(flags, message, capsys):
    assert main(["gradcheck", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_kv_heads_zero_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:  # argparse's own error
        main(["gradcheck", "--kv-heads", "0"])
    assert stop.value.code == 2 and "--kv-heads: must be at least 1" in capsys.readouterr().err
