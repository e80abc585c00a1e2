"""``tuner report``: one self-contained HTML page (plus its PNGs) for a finished experiment.

Reads ``summary.json`` and ``results.parquet`` from ``<storage>/<name>/`` and writes
``report/report.html`` and ``report/*.png`` beside them. The analysis (rungs, edge
warnings, cost ledger) is pure; only ``figures`` touches matplotlib.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import shlex

from tuner import rungs, storage

REPORT_DIR = "report"
# A best value within this fraction of its range's width (in log space for log ranges)
# from an edge: the optimum may lie outside the range (Deep Learning Tuning Playbook).
EDGE_FRACTION = 0.1


# --- pure analysis --------------------------------------------------------------------------


# Above this many trials, the table lists the best this many (the rest are in
# summary.json and results.parquet) and the figures draw them in full over the others,
# which are thin and faint: 1,000 curves or parallel-coordinate lines at full strength
# are one smear.
TOP = 50


def ranked(summary: dict) -> list[dict]:
    """The trials, best first by their best objective; trials without one last."""
    metric, mode = objective(summary)
    key, sign = f"best_{metric}", -1 if mode == "max" else 1
    return sorted(summary["trials"], key=lambda t: (t.get(key) is None, sign * (t.get(key) or 0)))


def line_style(top: bool, trials: int) -> dict:
    """Matplotlib line arguments: full for a top trial (or when there are few), faint
    and thin for the rest of a large experiment (their density still shows)."""
    if top or trials <= TOP:
        return {"alpha": 0.8, "linewidth": 1.5}
    return {"alpha": max(0.04, min(0.3, 15 / trials)), "linewidth": 0.6}


def edge_warnings(space: dict, best_config: dict) -> list[str]:
    """Ranged hyperparameters whose best value sits at the edge of the searched range."""
    warnings = []
    for name, dim in space.items():
        if not isinstance(dim, dict) or len(dim) != 1:
            continue
        (kind, bounds), = dim.items()
        if kind not in ("loguniform", "uniform", "int_uniform", "int_loguniform") or best_config.get(name) is None:
            continue  # not ranged, or not used by the best trial (a conditional hyperparameter)
        lo, hi, value = float(bounds[0]), float(bounds[1]), float(best_config[name])
        if kind in ("loguniform", "int_loguniform"):
            lo, hi, value = math.log10(lo), math.log10(hi), math.log10(value)
        width = hi - lo
        for edge, where in ((lo, "lower"), (hi, "upper")):
            if width > 0 and abs(value - edge) <= EDGE_FRACTION * width:
                warnings.append(
                    f"The best `{name}` ({best_config[name]:.4g}) is at the {where} edge of its range "
                    f"{bounds}: the optimum may lie outside it; widen the range and search again."
                )
    return warnings


def cost_ledger(summary: dict, rows: list[dict]) -> dict:
    """Epochs and worker-seconds spent versus the full budget for every trial."""
    max_t = summary["spec"]["asha"]["max_t"]
    full = len(summary["trials"]) * max_t
    spent = sum(t["epochs"] for t in summary["trials"])
    worker_seconds = sum((r.get("train_seconds") or 0) * (r.get("workers") or 1) for r in rows)
    per_epoch = worker_seconds / spent if spent else 0.0
    return {
        "trials": len(summary["trials"]),
        "epochs_spent": spent,
        "epochs_full_budget": full,
        "epoch_fraction": spent / full if full else 0.0,
        "training_worker_seconds": worker_seconds,
        "worker_seconds_full_budget_estimate": per_epoch * full,
    }


def reproduce_command(summary: dict) -> str:
    return shlex.join(summary["command"])


def objective(summary: dict) -> tuple[str, str]:
    """(metric, mode) the experiment followed (val_accuracy, max before it was a choice)."""
    o = summary.get("objective") or {}
    return o.get("metric", "val_accuracy"), o.get("mode", "max")


def label(metric: str) -> str:
    """``val_accuracy`` -> "validation accuracy"."""
    return metric.replace("val_", "validation ").replace("test_", "test ").replace("_", " ")


# --- figures (matplotlib) ------------------------------------------------------------------


def whole_epochs(ax) -> None:
    """Ticks of an epoch axis at whole epochs only (matplotlib would put some at 1.25, 1.5, ...)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def figures(summary: dict, rows: list[dict]) -> dict[str, bytes]:
    """name -> PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, mode = objective(summary)
    milestones = rungs.milestones(summary["spec"]["asha"])
    colours = dict(zip(milestones, plt.get_cmap("viridis")(
        [i / max(1, len(milestones) - 1) for i in range(len(milestones))])))
    by_trial: dict[str, list[dict]] = {}
    for r in rows:
        by_trial.setdefault(r["trial_id"], []).append(r)
    out = {}

    order = ranked(summary)
    if summary.get("pareto_front") is not None:
        out.update(pareto_figures(summary, by_trial, plt))
    if any("lineage" in t for t in summary["trials"]):
        out.update(population_figures(summary, by_trial, plt))
        return out | hyperparameter_figures(summary, order, plt)
    top = {t["trial_id"] for t in order[:TOP]}
    many = len(order)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for t in reversed(order):  # the best drawn last, on top
        hist = sorted(by_trial.get(t["trial_id"], []), key=lambda r: r["epoch"])
        if hist:
            rung = rungs.last_rung(t["epochs"], milestones)
            shown = t["trial_id"] in top or many <= TOP
            ax.plot([r["epoch"] for r in hist], [_or_nan(r.get(metric)) for r in hist], marker="o" if shown else None, ms=3,
                    color=colours.get(rung, "grey"), **line_style(shown, many))
    for rung, colour in colours.items():
        ax.plot([], [], color=colour, label=f"stopped at epoch {rung} or after" if rung != milestones[-1]
                else f"full budget ({rung})")
    scheduler = summary["spec"].get("scheduler", {}).get("kind", "asha")
    title = f"Learning curves, by the last rung each trial reached (scheduler: {scheduler})"
    if many > TOP:
        title += f"\nthe best {TOP} of {many} trials marked, the others faint"
    ax.set(xlabel="epoch", ylabel=label(metric), title=title)
    whole_epochs(ax)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out["curves"] = _png(fig)

    ladder = rungs.rung_ladder(summary["trials"], milestones)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([str(x["rung"]) for x in ladder], [x["trials"] for x in ladder], color=[colours[x["rung"]] for x in ladder])
    for i, x in enumerate(ladder):
        ax.text(i, x["trials"], str(x["trials"]), ha="center", va="bottom")
    ax.set(xlabel="rung (epochs)", ylabel="trials that reached it", title="Rung ladder")
    out["rungs"] = _png(fig)

    return out | hyperparameter_figures(summary, order, plt)


def trial_ends(summary: dict, by_trial: dict[str, list[dict]]) -> list[tuple[str, float, list[float]]]:
    """(trial id, when it ended, its objective values at its last epoch) of every trial
    that reported all the objectives: the points a multi-objective run's front is of."""
    metrics = [o["metric"] for o in summary["objectives"]]
    out = []
    for trial_id, hist in by_trial.items():
        done = [r for r in hist if all(r.get(m) is not None for m in metrics)]
        if done:
            last = max(done, key=lambda r: r["epoch"])
            out.append((trial_id, float(last.get("timestamp") or 0), [float(last[m]) for m in metrics]))
    return sorted(out, key=lambda e: (e[1], e[0]))


def hypervolume_curve(summary: dict, ends: list[tuple[str, float, list[float]]]) -> list[float]:
    """The hypervolume of the front of the first k trials to end, k = 1, 2, ... (against
    the summary's reference point)."""
    from tuner import pareto

    modes = [o["mode"] for o in summary["objectives"]]
    reference = [summary["hypervolume"]["reference"][o["metric"]] for o in summary["objectives"]]
    return [pareto.hypervolume([p for _, _, p in ends[:k]], modes, reference) for k in range(1, len(ends) + 1)]


def pareto_figures(summary: dict, by_trial: dict[str, list[dict]], plt) -> dict[str, bytes]:
    """A multi-objective run: every trial's last epoch with the front joined (each pair of
    objectives for three or more), and the front's hypervolume as trials ended."""
    objectives = summary["objectives"]
    ends = trial_ends(summary, by_trial)
    on_front = {e["trial_id"] for e in summary["pareto_front"]}
    pairs = [(i, j) for i in range(len(objectives)) for j in range(i + 1, len(objectives))]
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.5), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        xi, yj = objectives[i]["metric"], objectives[j]["metric"]
        ax.scatter([p[i] for _, _, p in ends], [p[j] for _, _, p in ends], color="lightgrey", s=18, label="trials")
        front = sorted((p[i], p[j]) for t, _, p in ends if t in on_front)
        ax.plot([x for x, _ in front], [y for _, y in front], "o-", color="tab:red", ms=5, label="Pareto front")
        ax.set(xlabel=f"{label(xi)} ({objectives[i]['mode']})", ylabel=f"{label(yj)} ({objectives[j]['mode']})")
        if yj == "params" or xi == "params":
            (ax.set_yscale if yj == "params" else ax.set_xscale)("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Pareto front: {len(on_front)} of {len(ends)} trials, each at its last epoch")
    out = {"pareto_front": _png(fig)}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    curve = hypervolume_curve(summary, ends)
    ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3)
    ax.set(xlabel="trials ended", ylabel="hypervolume", title="Hypervolume of the front as trials ended")
    ax.grid(alpha=0.3)
    out["hypervolume"] = _png(fig)
    return out


def hyperparameter_figures(summary: dict, order: list[dict], plt) -> dict[str, bytes]:
    """The objective against each hyperparameter, and the parallel coordinates."""
    out = {}
    metric, _ = objective(summary)
    space = summary["spec"]["search"]["space"]
    searched = [n for n, d in space.items() if isinstance(d, dict)]
    scores = {t["trial_id"]: t.get(f"best_{metric}") for t in summary["trials"] if t.get(f"best_{metric}") is not None}
    trials = [t for t in summary["trials"] if t["trial_id"] in scores]
    if searched and trials:
        cols = 3
        nrows = math.ceil(len(searched) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
        for ax, name in zip(axes.flat, searched):
            kind = next(iter(space[name]))
            have = [t for t in trials if t["config"].get(name) is not None]
            values = [t["config"][name] for t in have]
            ys = [scores[t["trial_id"]] for t in have]
            if kind == "choice":
                labels = [str(c) for c in space[name]["choice"]]
                xs = [labels.index(str(v)) if str(v) in labels else -1 for v in values]
                ax.set_xticks(range(len(labels)), labels, fontsize=8)
                ax.set_xlim(-0.5, len(labels) - 0.5)
            else:
                xs = values
                if kind in ("loguniform", "int_loguniform"):
                    log_xaxis(ax, *space[name][kind][:2])
            ax.scatter(xs, ys, s=18 if len(xs) <= TOP else 8, alpha=0.8 if len(xs) <= TOP else 0.4)
            ax.set(title=name, ylabel=f"best {label(metric)}")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(searched):]:
            ax.axis("off")
        fig.suptitle(f"{label(metric).capitalize()} against each hyperparameter")
        fig.tight_layout()
        out["hyperparameters"] = _png(fig)

        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(searched)), 4))
        cmap = plt.get_cmap("plasma")
        lo_s, hi_s = min(scores.values()), max(scores.values())
        scored = [t for t in order if t["trial_id"] in scores]
        for rank, t in reversed(list(enumerate(scored))):  # the best drawn last, on top
            ys = [_unit(space[n], t["config"].get(n)) for n in searched]
            ax.plot(range(len(searched)), ys, color=cmap((scores[t["trial_id"]] - lo_s) / ((hi_s - lo_s) or 1)),
                    **line_style(rank < TOP, len(scored)))
        ax.set_xticks(range(len(searched)), searched, rotation=20, fontsize=8)
        title = f"Parallel coordinates (colour: best {label(metric)}, bright = high)"
        if len(scored) > TOP:
            title += f"\nthe best {TOP} of {len(scored)} trials in full, the others faint"
        ax.set(ylabel="position in range (0 = low)", title=title)
        ax.grid(alpha=0.3)
        out["parallel"] = _png(fig)
    return out


def exploit_jumps(trial: dict, by_trial: dict[str, list[dict]], metric: str) -> list[tuple]:
    """A PBT member's exploits as ((donor's epoch, donor's score there), (the epoch after,
    the member's score there)): the jump from the copied checkpoint to its next result."""
    jumps = []
    rows = by_trial.get(trial["trial_id"], [])
    for segment in trial.get("lineage", [])[1:]:
        donor = {r["epoch"]: r.get(metric) for r in by_trial.get(segment["from_trial"], [])
                 if (r.get("generation") or 0) == segment["from_generation"]}
        after = [r for r in rows if (r.get("generation") or 0) == segment["generation"]]
        start = segment["start_epoch"]
        if start in donor and after:
            first = min(after, key=lambda r: r["epoch"])
            jumps.append(((start, donor[start]), (first["epoch"], first.get(metric))))
    return jumps


def population_figures(summary: dict, by_trial: dict[str, list[dict]], plt) -> dict[str, bytes]:
    """PBT: the population's curves (each generation a line, a dashed jump at each
    exploit from the copied checkpoint), and the best model's hyperparameter schedule."""
    metric, _ = objective(summary)
    order = ranked(summary)
    colours = plt.get_cmap("tab10")
    out = {}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, t in enumerate(reversed(order)):
        colour = colours(i % 10)
        rows = by_trial.get(t["trial_id"], [])
        for g in sorted({r.get("generation") or 0 for r in rows}):
            hist = sorted((r for r in rows if (r.get("generation") or 0) == g), key=lambda r: r["epoch"])
            ax.plot([r["epoch"] for r in hist], [_or_nan(r.get(metric)) for r in hist], marker="o", ms=3, color=colour,
                    label=t["trial_id"] if g == 0 else None, **line_style(True, len(order)))
        for (x0, y0), (x1, y1) in exploit_jumps(t, by_trial, metric):
            ax.plot([x0, x1], [y0, y1], linestyle="--", color=colour, alpha=0.8, linewidth=1)
            ax.plot([x0], [y0], marker="s", color=colour, ms=5)
    ax.set(xlabel="epoch", ylabel=label(metric),
           title="Population: each trial's generations, a dashed jump where it continued another's checkpoint")
    whole_epochs(ax)
    if len(order) <= 12:
        ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    out["population"] = _png(fig)

    best = summary.get("best") or {}
    schedule = best.get("schedule") or []
    names = [n for n in (schedule[0] if schedule else {}) if n not in ("epoch", "trial")]
    if schedule and names:
        space = summary["spec"]["search"]["space"]
        end = summary["spec"]["asha"]["max_t"]
        fig, axes = plt.subplots(len(names), 1, figsize=(7, 1.8 * len(names) + 0.6), sharex=True, squeeze=False)
        for ax, name in zip(axes[:, 0], names):
            steps = [(s["epoch"], s[name]) for s in schedule if s.get(name) is not None]
            if not steps:
                ax.axis("off")
                continue
            xs = [e for e, _ in steps] + [end]
            ys = [v for _, v in steps] + [steps[-1][1]]
            ax.step(xs, ys, where="post")
            if isinstance(space.get(name), dict) and next(iter(space[name])) in ("loguniform", "int_loguniform"):
                ax.set_yscale("log")
            ax.set(ylabel=name)
            ax.grid(alpha=0.3)
        axes[-1, 0].set(xlabel="epoch")
        whole_epochs(axes[-1, 0])
        fig.suptitle(f"The best model's hyperparameter schedule (trial {best['trial_id']}, through the trials it copied)",
                     fontsize=10)
        fig.tight_layout()
        out["schedule"] = _png(fig)
    return out


def log_ticks(lo: float, hi: float, most: int = 5) -> list[float]:
    """Ticks for a log axis over [lo, hi]: the densest of the series 1-2-...-9, 1-2-5, 1-3
    and 1 (times powers of ten) that gives 2 to ``most`` ticks within the range; else
    every k-th power of ten (a wide range), else the range's ends (a narrow one)."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks = []
    for series in (range(1, 10), (1, 2, 5), (1, 3), (1,)):
        ticks = [t for t in (float(f"{m}e{d}") for d in decades for m in series)
                 if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
        if 2 <= len(ticks) <= most:
            return ticks
    if len(ticks) > most:  # the powers of ten alone are too many
        return ticks[::math.ceil(len(ticks) / most)]
    return [lo, hi]


def log_xaxis(ax, lo: float, hi: float) -> None:
    """A log x scale over the searched range [lo, hi] with a few plain labels (0.002, 500)
    and no minor tick labels: over a range narrower than a decade or two, matplotlib
    labels every minor tick (2x10^-3, 3x10^-3, ...) and they run into each other."""
    from matplotlib.ticker import FixedLocator, NullFormatter

    ax.set_xscale("log")
    ticks = log_ticks(float(lo), float(hi))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=8)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(float(lo) / 1.1, float(hi) * 1.1)


def _unit(dim: dict, value) -> float:
    kind, arg = next(iter(dim.items()))
    if value is None:
        return 0.5
    if kind == "choice":
        labels = [str(c) for c in arg]
        return labels.index(str(value)) / max(1, len(labels) - 1) if str(value) in labels else 0.5
    lo, hi, v = float(arg[0]), float(arg[1]), float(value)
    if kind in ("loguniform", "int_loguniform"):
        lo, hi, v = math.log10(lo), math.log10(hi), math.log10(v)
    return (v - lo) / ((hi - lo) or 1)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# --- the page -------------------------------------------------------------------------------


def render_html(summary: dict, rows: list[dict], pngs: dict[str, bytes]) -> str:
    best = summary.get("best") or {}
    metric, mode = objective(summary)
    key = f"best_{metric}"
    ledger = cost_ledger(summary, rows)
    full_epochs = f"{ledger['epochs_full_budget']} ({ledger['epoch_fraction']:.0%} spent)"
    warnings = edge_warnings(summary["spec"]["search"]["space"], best.get("config", {}))
    e = html.escape
    img = "".join(
        f'<figure><img alt="{e(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}"></figure>'
        for name, data in pngs.items()
    )
    failed = [t for t in summary["trials"] if t["status"] == "error"]
    rows_html = trials_html(summary, key)
    tests = ", ".join(f"{e(label(k))} <b>{v:.4f}</b>" for k, v in best.items()
                      if k.startswith("test_") and isinstance(v, float))
    best_html = "<p>No trial finished an epoch.</p>" if not best else (
        f"<p>Trial <b>{e(best['trial_id'])}</b>, epoch {best['epoch']}: {e(label(metric))} "
        f"<b>{best[metric]:.4f}</b>{', ' + tests if tests else ''}.</p>"
        f"<p>Checkpoint: <code>{e(best['checkpoint_uri'])}</code></p>"
        f"<pre>{e(json.dumps(best['config'], indent=2, sort_keys=True))}</pre>"
    )
    warn_html = "".join(f'<p class="warn">{e(w)}</p>' for w in warnings) or "<p>No best value sits at the edge of its range.</p>"
    best_html += schedule_html(best) + front_html(summary)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tuner report: {e(summary['name'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
figure {{ margin: 1rem 0; }} img {{ max-width: 100%; }}
table {{ border-collapse: collapse; font-size: 0.85rem; }} td, th {{ border: 1px solid #ccc; padding: 0.2rem 0.5rem; }}
.warn {{ background: #fff3cd; padding: 0.5rem; border-left: 4px solid #e0a800; }}
code, pre {{ background: #f5f5f5; }}
</style></head><body>
<h1>{e(summary['name'])}</h1>
<p>Finished {e(summary.get('finished', ''))}; {ledger['trials']} trials, {len(failed)} failed.</p>
<h2>Best configuration</h2>{best_html}
<h2>Reproduce</h2><pre>{e(reproduce_command(summary))}</pre>
<h2>Cost</h2>
<table><tr><th></th><th>spent</th><th>full budget for every trial</th></tr>
<tr><td>epochs</td><td>{ledger['epochs_spent']}</td><td>{full_epochs}</td></tr>
<tr><td>training worker-seconds</td><td>{ledger['training_worker_seconds']:.0f}</td>
<td>~{ledger['worker_seconds_full_budget_estimate']:.0f}</td></tr></table>
<h2>Range edges</h2>{warn_html}
<h2>Figures</h2>{img}
<h2>Trials</h2>
<table><tr><th>trial</th><th>status</th><th>epochs</th><th>best {e(label(metric))}</th><th>restarts</th><th>config</th></tr>
{rows_html}</table>
<script>
// Marks the page once every figure has loaded and decoded (checked by the tests).
window.addEventListener("load", () => {{
  const imgs = [...document.images];
  document.body.dataset.figures = imgs.filter(i => i.complete && i.naturalWidth > 0).length + "/" + imgs.length;
}});
</script>
</body></html>
"""


def front_html(summary: dict) -> str:
    """A multi-objective run's front as a table, with its hypervolume ("" otherwise)."""
    front = summary.get("pareto_front")
    if front is None:
        return ""
    e = html.escape
    metrics = [o["metric"] for o in summary["objectives"]]
    head = "".join(f"<th>{e(label(m))}</th>" for m in metrics)
    body = "".join(f"<tr><td>{e(t['trial_id'])}</td><td>{t['epoch']}</td>"
                   + "".join(f"<td>{t[m]:.6g}</td>" for m in metrics) + "</tr>" for t in front)
    volume = (summary.get("hypervolume") or {}).get("value")
    said = f"; hypervolume {volume:.6g}" if volume is not None else ""
    return (f"<h3>Pareto front</h3><p>{len(front)} trial(s) that no other beats on every objective{said}; the "
            f"first is the best configuration above.</p><table><tr><th>trial</th><th>epoch</th>{head}</tr>{body}</table>")


def trials_html(summary: dict, key: str) -> str:
    """The trials table's rows: the best ``TOP`` and every failed one."""
    e = html.escape

    def trial_row(t):
        score = "" if t.get(key) is None else f"{t[key]:.4f}"
        return (f"<tr><td>{e(t['trial_id'])}</td><td>{e(t['status'])}</td><td>{t['epochs']}</td><td>{score}</td>"
                f"<td>{t.get('restarts', 0)}</td><td><code>{e(json.dumps(t['config'], sort_keys=True))}</code></td></tr>")

    order = ranked(summary)
    listed = order[:TOP] + [t for t in order[TOP:] if t["status"] == "error"]
    rows_html = "".join(trial_row(t) for t in listed)
    if len(listed) < len(order):
        rows_html += (f'<tr><td colspan="6">The best {TOP} and the failed ones of {len(order)} trials; all of them '
                      f"are in summary.json and results.parquet beside this report.</td></tr>")
    return rows_html


def schedule_html(best: dict) -> str:
    """A PBT best trial's hyperparameter schedule as a table, and its replay command."""
    schedule, e = best.get("schedule") or [], html.escape
    if not schedule:
        return ""
    names = [n for n in schedule[0] if n not in ("epoch", "trial")]
    head = "".join(f"<th>{e(n)}</th>" for n in names)
    body = "".join(f"<tr><td>{s['epoch']}</td><td>{e(s['trial'])}</td>"
                   + "".join(f"<td>{e(str(s.get(n)))}</td>" for n in names) + "</tr>" for s in schedule)
    return (f"<h3>Its hyperparameter schedule</h3><table><tr><th>from epoch</th><th>trained by</th>{head}"
            f"</tr>{body}</table><p>Replayed from scratch:</p><pre>{e(best['replay']['command'])}</pre>")


def write_report(where: storage.Location, name: str, files: dict | None = None) -> str:
    """Write the report of experiment ``name`` stored at ``where``,
    ``<where>/<name>/report/report.html`` (and its PNGs); returns the page's URI.
    ``files``: a dict that also receives them, file name -> bytes."""
    import pyarrow.parquet as pq

    from tuner import results

    summary = results.read_summary(where, name)
    table = pq.read_table(io.BytesIO(where.join(name, results.RESULTS).read_bytes()))
    rows = table.to_pylist()
    pngs = figures(summary, rows)
    written = {**{f"{fig_name}.png": data for fig_name, data in pngs.items()},
               "report.html": render_html(summary, rows, pngs).encode()}
    folder = where.join(name, REPORT_DIR)
    for file_name, data in written.items():
        folder.join(file_name).write_bytes(data)
    if files is not None:
        files.update(written)
    return folder.join("report.html").uri


def _or_nan(value) -> float:
    """A point of a curve: NaN (a gap) where the trial reported none."""
    return math.nan if value is None else value
