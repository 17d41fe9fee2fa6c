"""`vintage doctor RUN`: read a run's metrics and config and name what went wrong, each finding
with its evidence (numbers from this run) and what to try.

Every rule is a function of the run (run_metrics.Run: the metrics rows in step order and the config)
that returns a Finding or None. Rules look only at what metrics.jsonl records: the training
loss at every step, the gradient norm, validation loss on evaluation steps, throughput, a
`resumed` mark on the first step after a resume, skipped (non-finite) steps, and each layer's
gradient norm every layer_norm_interval steps. The rules are
checked against the known-bad runs the lab makes (lr-batch, gradients, data-quality).
"""
import json
import math
from dataclasses import asdict, dataclass

import numpy as np

MIN_STEPS = 20  # fewer steps than this: too early to diagnose
# median max/min ratio of block gradient norms above which some blocks starve: two decades (the
# gradients experiment labels its runs "vanishing" by this rule too)
VANISHING_RATIO = 100.0


@dataclass
class Finding:
    name: str  # a short tag: "diverged", "never-learned", ...
    title: str  # one line: what the doctor sees
    evidence: str  # the numbers from this run
    advice: str  # what to try


# ---------------------------------------------------------------- the rules
def diverged(run):
    """A non-finite loss or gradient, skipped steps, or a loss that climbed far above its start."""
    bad = [r["step"] for r in run.rows if r.get("skipped") or r.get("loss") is None
           or (isinstance(r.get("loss"), float) and not math.isfinite(r["loss"]))]
    steps, loss = run.series("loss")
    climbed = None
    if len(loss) >= 2:  # a run that blew up within its first steps (and stopped) has only a few rows
        best = np.minimum.accumulate(loss)  # (n,) the lowest loss up to each step
        above = np.nonzero(loss[1:] > 1.5 * best[:-1] + 0.5)[0] + 1
        end = float(np.mean(loss[-3:]))
        if len(above) and end > 1.2 * best[above[0] - 1] + 0.25:  # and it stayed up (a passing spike is not this)
            i = int(above[0])
            climbed = (int(steps[i]), float(loss[i]), float(best[i - 1]))
    if not bad and climbed is None:
        return None
    what = []
    if bad:
        what.append(f"{len(bad)} step(s) with a non-finite loss or gradient (first at step {bad[0]})")
    if climbed:
        what.append(f"the loss rose to {climbed[1]:.3f} at step {climbed[0]}, from a low of {climbed[2]:.3f} before it")
    cfg, model = run.config, run.config.get("model", {})
    causes = [f"the learning rate ({cfg['learning_rate']:g}) is too high: try a third of it"
              if isinstance(cfg.get("learning_rate"), (int, float)) else "the learning rate is too high"]
    if cfg.get("warmup_iters") == 0:
        causes.append("there is no warm-up: try warmup_iters of a few percent of the steps")
    if model.get("norm") == "post" and model.get("n_layer", 0) >= 6:
        causes.append(f"post-norm at depth {model['n_layer']} is unstable without warm-up: try norm=pre")
    if model.get("norm") == "none":
        causes.append("without layer norm the residual stream is unbounded: try norm=pre")
    if model.get("init") == "normal":
        causes.append("N(0, 1) init makes the first activations huge: try init=gpt2")
    if not cfg.get("grad_clip"):
        causes.append("gradient clipping is off: try grad_clip=1.0")
    return Finding("diverged", "The run diverged", "; ".join(what), "; ".join(causes) + ".")


def bad_start(run):
    """A first loss far above ln(vocab size): the initial weights make huge logits."""
    steps, loss = run.series("loss")
    V = run.vocab_size
    # a non-finite first loss is the divergence rule's; it says nothing of the starting scale
    if not V or not len(loss) or not math.isfinite(loss[0]) or loss[0] <= 2 * math.log(V):
        return None
    init = run.config.get("model", {}).get("init")
    return Finding("bad-start", "The loss started far above ln(vocab size)",
                   f"the first loss was {loss[0]:.3g} nats, and a model that guesses uniformly scores ln({V}) = "
                   f"{math.log(V):.3f}",
                   "the initial weights are far too large (huge logits, exploding activations): "
                   + ("init=normal draws N(0, 1); use init=gpt2 (N(0, 0.02), residual projections scaled by depth)."
                      if init == "normal" else "check the initialisation scale."))


def never_learned(run):
    """The loss never left ln(vocab size): the model still guesses uniformly."""
    steps, loss = run.series("loss")
    V = run.vocab_size
    if not V or len(loss) < MIN_STEPS:
        return None
    uniform, tail = math.log(V), float(np.mean(loss[-max(5, len(loss) // 10):]))
    if tail < 0.9 * uniform:
        return None
    cfg = run.config
    lr = f" ({cfg['learning_rate']:g})" if isinstance(cfg.get("learning_rate"), (int, float)) else ""
    return Finding("never-learned", "The loss never left ln(vocab size)",
                   f"after {int(steps[-1])} steps the loss is {tail:.3f}, and ln({V}) = {uniform:.3f} is what "
                   "guessing every token equally likely gives",
                   f"the learning rate{lr} may be far too low (try 10x), the data may be noise (look at a batch), "
                   "or the gradient never reaches the weights (run `vintage gradcheck`).")


def plateau(run):
    """The last third of the run gained almost nothing while the loss is still well above zero."""
    steps, loss = run.series("loss")
    if len(loss) < 3 * MIN_STEPS:
        return None
    third = len(loss) // 3
    middle, last = float(np.mean(loss[third:2 * third])), float(np.mean(loss[2 * third:]))
    V = run.vocab_size or 2
    if middle - last > 0.01 * middle or last > 0.9 * math.log(V) or last < 0.5:
        return None
    return Finding("plateau", "The loss has stopped falling",
                   f"mean training loss {middle:.3f} over steps {int(steps[third])}-{int(steps[2 * third - 1])} and "
                   f"{last:.3f} over the last third: {100 * (middle - last) / middle:.1f}% better",
                   "if the learning rate has decayed, more steps at this rate will not help: a larger model, more "
                   "data, or a higher peak learning rate with a longer schedule; if the rate is still high, it may "
                   "be bouncing: lower it.")


def overfitting(run):
    """Validation loss far above the training loss, and the gap growing."""
    v_steps, val = run.series("val_loss")
    steps, loss = run.series("loss")
    if len(val) < 2 or len(loss) < MIN_STEPS:
        return None
    window = max(5, len(loss) // 20)
    train_at = [float(np.mean(loss[max(0, np.searchsorted(steps, s) - window):np.searchsorted(steps, s) + 1]))
                for s in v_steps]
    gaps = np.array(val) - np.array(train_at)
    # a gap of a few percent is normal (val is text the model never saw); one that is large
    # and still growing is memorisation
    if gaps[-1] < 0.1 or gaps[-1] < 0.05 * train_at[-1] or gaps[-1] < gaps[0] + 0.05:
        return None
    return Finding("overfitting", "Validation loss is far above the training loss, and the gap grows",
                   f"at step {int(v_steps[-1])}: train {train_at[-1]:.3f}, val {val[-1]:.3f} (gap {gaps[-1]:.3f}); "
                   f"at step {int(v_steps[0])} the gap was {gaps[0]:.3f}",
                   "the model memorises its training text: duplicated passages in the data do this (deduplicate: "
                   "`vintage prepare` removes repeated paragraphs), as does too small a dataset for the model; "
                   "try dropout=0.1-0.2, more data, or a smaller model, and keep the checkpoint with the best val.")


def val_jump_after_resume(run):
    """Validation loss that jumps at the first evaluation after a resume."""
    v_steps, val = run.series("val_loss")
    for r in run.rows:
        if not r.get("resumed"):
            continue
        before = val[v_steps < r["step"]]
        after = val[v_steps >= r["step"]]
        if len(before) and len(after) and after[0] > before[-1] * 1.05 + 0.02:
            first_after = int(v_steps[v_steps >= r["step"]][0])
            return Finding("resume-jump", "Validation loss jumped after a resume",
                           f"resumed at step {r['step']}: val {before[-1]:.3f} before, {after[0]:.3f} at step "
                           f"{first_after}",
                           "the resumed run may not be the same run: another dataset or tokenizer, a changed "
                           "learning-rate schedule (max_iters changes the cosine unless lr_decay_iters is fixed), or "
                           "optimizer state that was not restored; compare the two config.json files.")
    return None


def gradient_spike(run):
    """A gradient norm far above its running level, followed within a few steps by a loss spike."""
    steps, norms = run.series("grad_norm")
    l_steps, loss = run.series("loss")
    if len(norms) < MIN_STEPS:
        return None
    warmup = run.config.get("warmup_iters") if isinstance(run.config.get("warmup_iters"), int) else 0
    # during warm-up the rate is still rising and the first steps are rough: look after it
    for i in range(max(10, warmup), len(norms)):
        level = float(np.median(norms[max(0, i - 50):i]))
        if norms[i] <= 10 * level:
            continue
        j = np.searchsorted(l_steps, steps[i])
        base = float(np.median(loss[max(0, j - 50):j])) if j else float(loss[0])
        later = loss[j:j + 10]
        if len(later) and later.max() > 1.2 * base:
            k = int(l_steps[j + int(np.argmax(later))])
            return Finding("gradient-spike", "A gradient spike came before a loss spike",
                           f"gradient norm {norms[i]:.3g} at step {int(steps[i])}, {norms[i] / level:.0f}x its running "
                           f"median {level:.3g}; the loss reached {later.max():.3f} at step {k} (from {base:.3f})",
                           "a lower learning rate, gradient clipping at a smaller norm (grad_clip), or a longer "
                           "warm-up; if it recurs at the same data, look at that batch.")
    return None


def block_norm_ratio(norms):
    """Largest / smallest gradient norm of the blocks h.0 .. h.L-1 in one per-layer record
    ({layer: norm}), or None unless there are two blocks or more and every norm is finite and
    positive. The vanishing-gradients finding (and the gradients experiment's label) is its
    median over a run."""
    if not isinstance(norms, dict):
        return None
    values = [v for k, v in norms.items() if k.startswith("h.") and k[2:].isdigit()]
    if len(values) < 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
        return None
    return max(values) / min(values)


def vanishing_gradients(run):
    """Some blocks get a hundred times less gradient than others, step after step: the layer
    gradient norms that training records (layer_norm_interval) are two decades apart or more."""
    ratios, lows = [], []
    for r in run.rows:
        ratio = block_norm_ratio(r.get("layer_grad_norms"))
        if ratio is not None:
            norms = r["layer_grad_norms"]
            ratios.append(ratio)
            lows.append(min((k for k in norms if k.startswith("h.") and k[2:].isdigit()), key=norms.get))
    if len(ratios) < 3 or float(np.median(ratios)) <= VANISHING_RATIO:
        return None
    ratio = float(np.median(ratios))
    starved = max(set(lows), key=lows.count)
    model = run.config.get("model", {})
    depth, norm = model.get("n_layer"), model.get("norm")
    if norm == "post":
        advice = (f"post-norm at depth {depth} divides the gradient at every normalisation on its way down: use "
                  "pre-norm (--set norm=pre), or a warm-up (warmup_iters) and fewer layers.")
    elif norm == "none":
        advice = "without layer norm the residual stream's scale runs away: use pre-norm (--set norm=pre)."
    else:
        advice = "fewer layers, a smaller init or a warm-up; check the blocks that get no gradient for a bug."
    return Finding("vanishing-gradients", "Some layers get almost no gradient",
                   f"over {len(ratios)} recorded steps the blocks' gradient norms were a median {ratio:.3g}x apart "
                   f"(largest / smallest); {starved} got the least most often", advice)


def throughput_drop(run):
    """Tokens per second fell in the middle of the run."""
    steps, tps = run.series("tokens_per_s")
    if len(tps) < 5 * MIN_STEPS:
        return None
    early = float(np.median(tps[5:len(tps) // 2]))
    late_start = int(len(tps) * 0.8)
    late = float(np.median(tps[late_start:]))
    if late >= 0.6 * early:
        return None
    return Finding("slowdown", "Training slowed down mid-run",
                   f"median {early:,.0f} tokens/s in the first half, {late:,.0f} from step {int(steps[late_start])}",
                   "another program competes for the CPU (use `vintage --threads 1 train` when the machine is shared), "
                   "the CPU is throttling, or memory ran short and the system swaps.")


RULES = (diverged, bad_start, never_learned, vanishing_gradients, plateau, overfitting, val_jump_after_resume,
         gradient_spike, throughput_drop)


def diagnose(run):
    """[Finding, ...] for a Run, in the order of RULES (divergence first: it explains the rest)."""
    if not run.rows:
        return []
    findings = [f for f in (rule(run) for rule in RULES) if f is not None]
    if any(f.name == "diverged" for f in findings):  # a plateau or an overfit of a diverged run means nothing
        findings = [f for f in findings if f.name in ("diverged", "bad-start", "vanishing-gradients", "gradient-spike",
                                                      "slowdown")]
    return findings


def summary(run):
    steps, loss = run.series("loss")
    v_steps, val = run.series("val_loss")
    parts = [f"{len(run.rows)} steps"]
    if len(loss):
        parts.append(f"training loss {loss[0]:.3f} -> {np.mean(loss[-5:]):.3f}")
    if len(val):
        parts.append(f"val loss {val[-1]:.3f} at step {int(v_steps[-1])}")
    return ", ".join(parts)


def verdict(run):
    """The one line for a run with no findings (the doctor's text and the report card)."""
    if not run.rows:
        return "no steps recorded in metrics.jsonl: nothing to diagnose yet."
    return "no problems found: the loss fell, stayed finite, and nothing looks unusual."


def report_text(run, findings):
    lines = [f"{run.path}: {summary(run)}"]
    if not findings:
        lines.append(verdict(run))
    for f in findings:
        lines += [f"- {f.title}.", f"  evidence: {f.evidence}", f"  try: {f.advice}"]
    return "\n".join(lines)


def report_json(run, findings):
    return json.dumps({"run": str(run.path), "summary": summary(run), "notes": run.notes,
                       "findings": [asdict(f) for f in findings]})
