"""`vintage report RUN`: one self-contained HTML report card for a training run.

It holds what `vintage doctor` finds, the config, the data summary, the loss curves (train and val), throughput, the
gradient norm (global at every step, per layer at the steps recorded with
layer_norm_interval), samples from every checkpoint kept, and
the attention maps of the latest checkpoint for a prompt. Every picture is drawn with
matplotlib into memory and inlined as a data: URL, so the file opens in a browser with no
server and no network.
"""
import io
import json
from pathlib import Path

import numpy as np

from vintagelm import doctor
from vintagelm.common import UserError, atomic_file, read_json
from vintagelm.lab.page import esc, figure_tag, page_html, table_html
from vintagelm.plots import loss_figure, pyplot
from vintagelm.run_metrics import load_run

SAMPLE_TOKENS = 200


def figure_html(fig, caption):
    plt = pyplot()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return figure_tag(buffer.getvalue(), caption)


def curves(run):
    """The loss, throughput and gradient-norm figures of a run, as HTML."""
    plt = pyplot()
    parts = [figure_html(loss_figure(run.rows, "Loss"), "Training and validation loss")]

    t_steps, tps = run.series("tokens_per_s")
    g_steps, norms = run.series("grad_norm")
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    if len(tps):
        a.plot(t_steps, tps, lw=0.8)
        a.axhline(float(np.median(tps)), color="gray", ls="--", label=f"median {np.median(tps):,.0f}")
        a.legend()
    a.set(xlabel="step", ylabel="tokens per second", title="Throughput")
    if len(norms):
        b.semilogy(g_steps, norms, lw=0.8)
    b.set(xlabel="step", ylabel="global gradient norm (before clipping)", title="Gradient norm")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    parts.append(figure_html(fig, "Throughput and the global gradient norm"))

    recorded = [(r["step"], r["layer_grad_norms"]) for r in run.rows if isinstance(r.get("layer_grad_norms"), dict)]
    if recorded:
        layers = list(recorded[0][1])
        grid = np.array([[np.log10(max(norms.get(layer) or 1e-12, 1e-12)) for layer in layers] for _, norms in recorded])
        fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(layers) + 1.5)))
        image = ax.imshow(grid.T, aspect="auto", cmap="viridis",
                          extent=[recorded[0][0], recorded[-1][0], len(layers) - 0.5, -0.5])
        ax.set_yticks(range(len(layers)), layers)
        ax.set(xlabel="step", title="log10 gradient norm per layer")
        fig.colorbar(image, ax=ax)
        steps = [step for step, _ in recorded]
        parts.append(figure_html(fig, f"Gradient norm of each layer, recorded {len(recorded)} times, "
                                      f"from step {steps[0]} to step {steps[-1]}"))
    return "\n".join(parts)


def data_summary(state):
    """A table of the prepared dataset (meta.json) or the chat set a run trained on."""
    data = state.get("data", {}).get("dataset", "")
    meta_file = Path(data) / "meta.json"
    if data and meta_file.is_file():
        meta = read_json(meta_file, what="dataset meta")
        rows = [["sources", ", ".join(map(str, meta.get("sources", [])))],
                ["tokenizer", f"{meta.get('tokenizer_type')} ({meta.get('vocab_size')} ids)"],
                ["tokens (train / val)", f"{meta['tokens']['train']:,} / {meta['tokens']['val']:,}"],
                ["documents kept / read", f"{meta['documents']['kept']} / {meta['documents']['read']}"],
                ["period filter", str(meta.get("period_filter"))],
                ["bytes per token", f"{meta.get('bytes_per_token', 0):.3f}"]]
        return table_html(f"Data: {data}", ["", ""], rows)
    return f"<p>Data: {esc(data or state.get('train_config', {}).get('data', 'unknown'))}</p>"


def samples(checkpoints):
    """A sample of SAMPLE_TOKENS from each checkpoint, same seed, as HTML."""
    from vintagelm.checkpoint import load_checkpoint
    from vintagelm.generate import sample_text

    parts = []
    for path in checkpoints:
        ckpt = load_checkpoint(path, with_optimizer=False)
        if ckpt.tokenizer is None or not np.isfinite(ckpt.model.flat_params).all():
            parts.append(f"<h3>{esc(path.name)}</h3><p>(no sample: no tokenizer, or non-finite weights)</p>")
            continue
        text = sample_text(ckpt.model, ckpt.tokenizer, SAMPLE_TOKENS, 0, lambda piece: None)
        parts.append(f"<h3>step {ckpt.step}</h3><pre>{esc(text)}</pre>")
    return "\n".join(parts)


class Figures:
    """What lab drawing functions need of a LabPage (figure()), keeping the figure for inlining."""

    def figure(self, name, caption, ncols=1, size=(6.4, 4.0)):
        plt = pyplot()
        self.fig, axes = plt.subplots(1, ncols, figsize=(size[0] * ncols, size[1]))
        self.caption = caption
        return self.fig, axes


def attention_section(checkpoint, prompt):
    """The attention maps of a GPT checkpoint for a prompt (as `vintage lab attention-maps` draws them), as HTML."""
    from vintagelm.checkpoint import load_checkpoint
    from vintagelm.lab.trained_gpt import attention_weights, draw_attention_maps

    ckpt = load_checkpoint(checkpoint, with_optimizer=False)
    if ckpt.tokenizer is None or ckpt.model.architecture != "gpt":
        return ""
    ids = ckpt.tokenizer.encode(prompt, allowed_special="none")[-ckpt.model.config.block_size:]
    maps, _ = attention_weights(ckpt.model, ids)
    figures = Figures()
    draw_attention_maps(figures, maps, [ckpt.tokenizer.decode([i]) for i in ids])
    return figure_html(figures.fig, f"{figures.caption}; prompt {prompt!r}, step {ckpt.step}")


def default_prompt(state):
    """The first line of the validation text (every character of it is in the vocabulary)."""
    data = state.get("data", {}).get("dataset", "")
    if data and (Path(data) / "meta.json").is_file():
        from vintagelm.data.loader import load_dataset

        ds = load_dataset(data)
        text = ds.tokenizer.decode([int(i) for i in ds.val[:200]])
        lines = [line for line in text.splitlines() if len(line.strip()) > 8]
        if lines:
            return lines[0].strip()[:48]
    return "To be, or not to be"


def build_report(run_dir, prompt=None):
    """The HTML text of the report card of `run_dir`."""
    from vintagelm.checkpoint import list_checkpoints, read_state

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    findings = doctor.diagnose(run)
    checkpoints = list_checkpoints(run_dir)
    state = read_state(checkpoints[-1] / "state.json") if checkpoints else {}
    cfg = run.config
    parts = [f"<h1>Report card: {esc(run_dir.resolve().name)}</h1>",
             f'<p class="meta">{esc(run_dir.resolve())} · {esc(doctor.summary(run))}</p>', "<h2>Doctor</h2>"]
    parts += [f"<p><i>Note: {esc(note)}.</i></p>" for note in run.notes]
    if findings:
        parts += [f"<p><b>{esc(f.title)}.</b> {esc(f.evidence)}. <i>Try:</i> {esc(f.advice)}</p>" for f in findings]
    else:
        parts.append(f"<p>{esc(doctor.verdict(run).capitalize())}</p>")
    parts.append("<h2>Curves</h2>")
    parts.append(curves(run))
    model_rows = [[k, json.dumps(v)] for k, v in cfg.get("model", {}).items()]
    train_rows = [[k, json.dumps(v)] for k, v in cfg.items() if k != "model"]
    parts += ["<h2>Configuration</h2>", table_html("model", ["field", "value"], model_rows),
              table_html("training", ["field", "value"], train_rows), "<h2>Data</h2>", data_summary(state)]
    if checkpoints:
        parts += [f"<h2>Samples at the checkpoints kept ({SAMPLE_TOKENS} tokens, seed 0)</h2>",
                  samples(checkpoints)]
        section = attention_section(checkpoints[-1], prompt or default_prompt(state))
        if section:
            parts += ["<h2>Attention maps</h2>", section]
    era = run_dir / "era.json"  # written by `vintage eval RUN --era`
    if era.is_file():
        from vintagelm.era.metrics import format_card

        parts += ["<h2>Era evaluation</h2>", f"<pre>{esc(format_card(read_json(era, what='era report')))}</pre>"]
    return page_html(f"Report card: {run_dir.resolve().name}", "\n".join(parts))


def write_report(run_dir, out=None, prompt=None):
    out = Path(out) if out else Path(run_dir) / "report.html"
    text = build_report(run_dir, prompt)
    try:
        with atomic_file(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as e:  # a full disk, say; atomic_file has removed its temporary and left `out` as it was
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    return out
