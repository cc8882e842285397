"""How PERA's polynomial share and its factors grow over a run, and what that predicts at the paper's scale.

    python -m experiments.growth results/study/epoch/pera/log.jsonl --json results/study/epoch/growth.json \\
        --md results/study/epoch/growth.md --svg results/study/epoch/growth.svg

train.py logs for PERA, every --pera-log-every steps, the median over layers of the polynomial share
‖ΔW − sBA‖/‖sBA‖, of its bound max|h| · M · ρ (pera.polynomial_share_bound) and of the bound's factors:
max|h|, max|B|, max|A| and ρ. Each is fitted here as a power law, y = c · x^p by least squares on log y
against log x, over the logged steps after the warm-up, with x either the step or the cumulative learning
rate S(t) = Σ_{τ ≤ t} lr_τ (for h, its own: h_lr_ratio × S). AdamW moves a parameter by about its learning rate a step, so S, not the step,
is what a run with another learning rate or length shares with this one.

The paper-scale prediction puts the fitted factors into the bound at the paper's setting (Llama-3-8B,
r = 16, lr 1e-4, 100 warm-up steps, 31,900 steps: S = 1.6; --paper-* to change it):
    max|h|, max|B|    the fits at the paper's S (h and B start at 0 with the authors' init)
    max|A|            A's Kaiming-uniform bound at the paper's width, 1/√in, plus the fitted growth of
                      max|A| over its own init (A starts at 1/√in in both models)
    ρ                 the run's last, times √(r_paper / r_run): with the rank-r sum's signs random,
                      ‖|B||A|‖ grows like r and ‖BA‖ like √r
    M                 the run's ratio of M to r · max|B| · max|A| (each rank-one term's own maxima against
                      the layer's), times r_paper · max|B| · max|A|
and divides the bound by its slack over the share measured at the run's last logged step, for the share
itself. Every one of these is an assumption, listed with the result; the interval is the fits' 95 %
(ordinary least squares; the logged points are correlated, so it is narrower than the truth) widened to
cover the fit on the run's last half alone.

The seeds leave the paper's recipe open (lr 1e-4 in PERA's text, 2e-4 in HiRA's table, 1e-3 in HiRA's §5.2;
batch 16 or HiRA's 32, i.e. half the steps; the authors' code init or the paper's), and that spread is
wider than the fits' intervals. --range puts every variant into one table, one row per recipe and per log
given (a log's init is read from its args.json), with two ceilings beside each prediction: the bound
itself, without the run's slack, and the worst case for h, max|h| = h's cumulative learning rate (AdamW
moves a parameter by at most about its learning rate a step), divided by the slack:
    python -m experiments.growth --range results/study/epoch/pera/log.jsonl --json results/study/epoch/range.json \\
        --md results/study/epoch/range.md
"""
import argparse
import json
import math
from pathlib import Path

from support import cli

PAPER = {"steps": 31900, "lr": 1e-4, "warmup": 100, "rank": 16, "in_features": 4096, "h_lr_ratio": 1.0}
FACTORS = ("h_max", "b_max_median", "a_growth", "poly_share_median", "poly_share_bound_median")


def read_log(path):
    """The run's records in step order, each with the cumulative learning rate S up to and including it."""
    records, total = [], 0.0
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n} is not JSON ({e})") from None
        total += record["lr"]
        records.append(dict(record, cumulative_lr=total))
    if not any("poly_share_bound_median" in r for r in records):
        raise ValueError(f"{path}: no PERA record with the bound (a PERA run of train.py logs one every --pera-log-every steps)")
    return records


def fit_power(xs, ys):
    """y = c · x^p by least squares on the logs: a dict with p, c and what predict() needs."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    n = len(lx)
    if n < 3:
        raise ValueError(f"a power-law fit needs at least 3 logged points, got {n}")
    mx, my = sum(lx) / n, sum(ly) / n
    sxx = sum((x - mx) ** 2 for x in lx)
    p = sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / sxx
    residual = math.sqrt(sum((y - my - p * (x - mx)) ** 2 for x, y in zip(lx, ly)) / (n - 2))
    return {"p": p, "c": math.exp(my - p * mx), "n": n, "mean_log_x": mx, "sxx": sxx, "residual": residual}


def predict(fit, x):
    """(value, low, high) of a fit at x; the 95 % interval of the fitted line (1.96 standard errors)."""
    value = fit["c"] * x ** fit["p"]
    se = fit["residual"] * math.sqrt(1 / fit["n"] + (math.log(x) - fit["mean_log_x"]) ** 2 / fit["sxx"])
    return value, value * math.exp(-1.96 * se), value * math.exp(1.96 * se)


def schedule_sum(steps, lr, warmup):
    """Σ lr_t over a run of train.py's schedule (linear warm-up, then linear decay to 0 at the last step)."""
    import train
    args = argparse.Namespace(lr=lr, warmup_steps=warmup)
    return sum(train.lr_at(t, args, steps) for t in range(steps))


def slack_range(records, bound, share):
    """(least, median, largest) of bound / share over the logged steps where the share is above 0."""
    ratios = sorted(r[bound] / r[share] for r in records if r[share] > 0)
    return ratios[0], ratios[len(ratios) // 2], ratios[-1]


def growth(path, paper=PAPER):
    """The fits over the run, the extrapolations to the paper's step count, and the paper-scale prediction."""
    run_args = json.loads((Path(path).parent / "args.json").read_text())
    records = read_log(path)
    logged = [r for r in records if "poly_share_bound_median" in r]
    a0 = logged[0]["a_max_median"]  # A's init bound 1/√in (median layer), moved by at most one logged step's updates
    warmup = min(run_args["warmup_steps"], max(1, len(records) // 10))
    points = [dict(r, a_growth=r["a_max_median"] - a0) for r in logged if r["step"] > warmup]
    if any(r[k] <= 0 for r in points for k in FACTORS):
        raise ValueError(f"{path}: a factor is 0 after the warm-up; nothing grows to fit")
    halves = {"all after warm-up": points, "last half": points[len(points) // 2:]}
    def fit(pts, key, x):  # h moves at its own learning rate, h_lr_ratio × lr: its S is the ratio times the run's
        scale = run_args["h_lr_ratio"] if key == "h_max" and x == "cumulative_lr" else 1.0
        return fit_power([scale * r[x] for r in pts], [r[key] for r in pts])
    fits = {name: {k: {x: fit(pts, k, x) for x in ("step", "cumulative_lr")} for k in FACTORS}
            for name, pts in halves.items()}

    def spread(key, var, x):  # the full fit's value, and the interval covering both fits' 95 % intervals
        values = [predict(f[key][var], x) for f in fits.values()]
        return values[0][0], min(v[1] for v in values), max(v[2] for v in values)

    last = logged[-1]
    s_paper = schedule_sum(paper["steps"], paper["lr"], paper["warmup"])
    s_run_long = schedule_sum(paper["steps"], run_args["lr"], run_args["warmup_steps"])
    rho = last["rho_median"] * math.sqrt(paper["rank"] / run_args["rank"])
    kappa = last["poly_share_bound_median"] / (last["h_max"] * run_args["rank"] * last["b_max_median"]
                                               * last["a_max_median"] * last["rho_median"])
    slack = last["poly_share_bound_median"] / last["poly_share_median"]
    h = spread("h_max", "cumulative_lr", s_paper * paper["h_lr_ratio"])
    b, da = (spread(k, "cumulative_lr", s_paper) for k in ("b_max_median", "a_growth"))
    a0_paper = 1 / math.sqrt(paper["in_features"])
    bound = [kappa * paper["rank"] * rho * h[i] * b[i] * (a0_paper + da[i]) for i in range(3)]
    slack_over_run = {layer: slack_range(logged, f"poly_share_bound_{key}", f"poly_share_{key}")
                      for layer, key in (("median layer", "median"), ("largest", "max")) if f"poly_share_{key}" in last}
    return {
        "run": str(path), "rank": run_args["rank"], "lr": run_args["lr"], "steps": last["step"],
        "logged_steps": len(logged), "slack_over_run": slack_over_run,
        "cumulative_lr": last["cumulative_lr"], "warmup": warmup,
        "last": {k: last[k] for k in ("poly_share_median", "poly_share_bound_median", "h_max", "b_max_median",
                                      "a_max_median", "rho_median", "lora_rms_median")},
        "exponents": {name: {k: {x: f[k][x]["p"] for x in f[k]} for k in FACTORS} for name, f in fits.items()},
        "share_at_paper_steps_same_lr": spread("poly_share_median", "step", paper["steps"]),
        "share_at_run_lr_cumulative": spread("poly_share_median", "cumulative_lr", s_run_long),
        "paper": dict(paper, cumulative_lr=s_paper, h_max=h, b_max=b, a_max=[a0_paper + d for d in da],
                      rho=rho, kappa=kappa, slack=slack, bound=bound, share=[v / slack for v in bound]),
    }


RECIPES = [(lr, batch) for batch in (16, 32) for lr in (1e-4, 2e-4, 1e-3)]  # the paper's steps at batch 16: 31,900


def prediction_range(logs, paper=PAPER):
    """One row per (log, lr, batch): the predicted share with its 95 % and the two ceilings (docstring above)."""
    rows = []
    for path in logs:
        init = json.loads((Path(path).parent / "args.json").read_text()).get("init", "code")
        for lr, batch in RECIPES:
            p = growth(path, dict(paper, lr=lr, steps=round(paper["steps"] * 16 / batch)))["paper"]
            h_worst = p["cumulative_lr"] * p["h_lr_ratio"]
            rows.append({"run": str(path), "init": init, "lr": lr, "batch": batch, "steps": p["steps"],
                         "cumulative_lr": p["cumulative_lr"], "h_max": p["h_max"][0], "share": p["share"],
                         "bound": p["bound"][0], "h_worst": h_worst,
                         "share_h_worst": p["bound"][0] / p["h_max"][0] * h_worst / p["slack"]})
    return rows


def range_markdown(rows):
    """The range table docs/study.md shows, widest row last."""
    lines = ["| init | lr | batch (steps) | S | max \\|h\\| (fit) | **share** (95 %) | ceiling: the bound, no slack "
             "| ceiling: max \\|h\\| = h's S |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["share"][1], r["share"][2]
        lines.append(f"| {r['init']} | {r['lr']:g} | {r['batch']} ({r['steps']:,}) | {r['cumulative_lr']:.3g} | "
                     f"{r['h_max']:.3g} | **{r['share'][0]:.1e}** ({lo:.1e} – {hi:.1e}) | {r['bound']:.1e} | "
                     f"{r['share_h_worst']:.1e} (\\|h\\| ≤ {r['h_worst']:.3g}) |")
    shares = [v for r in rows for v in r["share"]]
    lines += ["", f"Predicted share over every row: {min(shares):.1e} – {max(shares):.1e}; the ceilings reach "
              f"{max(r['bound'] for r in rows):.1e} (the bound) and {max(r['share_h_worst'] for r in rows):.1e} "
              f"(the worst case for h)."]
    return "\n".join(lines) + "\n"


def markdown(g):
    """The growth exponents and the prediction as the tables docs/study.md shows."""
    lines = [f"Run: `{g['run']}` (rank {g['rank']}, lr {g['lr']:g}, {g['steps']} steps, S = {g['cumulative_lr']:.3f})",
             "", "| fitted over | " + " | ".join(f"{k} ∝ step^p / S^p" for k in FACTORS) + " |",
             "|---|" + "---|" * len(FACTORS)]
    for name, e in g["exponents"].items():
        lines.append(f"| {name} | " + " | ".join(f"{e[k]['step']:.2f} / {e[k]['cumulative_lr']:.2f}" for k in FACTORS) + " |")
    lines += ["", f"Bound / share over the run's {g['logged_steps']} logged steps: " + "; ".join(
        f"{layer} {lo:.3g} – {hi:.3g} (median {mid:.3g})" for layer, (lo, mid, hi) in g["slack_over_run"].items())]
    p = g["paper"]
    row = lambda name, v: f"| {name} | {v[0]:.3g} | {v[1]:.3g} – {v[2]:.3g} |"  # noqa: E731
    lines += ["", f"| at the paper's scale (r = {p['rank']}, width {p['in_features']}, lr {p['lr']:g}, {p['steps']} steps, "
              f"S = {p['cumulative_lr']:.3f}) | predicted | 95 % |", "|---|---|---|",
              row("max \\|h\\|", p["h_max"]), row("max \\|B\\|", p["b_max"]), row("max \\|A\\|", p["a_max"]),
              f"| ρ (the run's {g['last']['rho_median']:.3g} × √(r_paper / r_run)) | {p['rho']:.3g} | - |",
              f"| M / (r · max\\|B\\| · max\\|A\\|) (the run's) | {p['kappa']:.3g} | - |",
              row("bound max\\|h\\| · M · ρ (median layer)", p["bound"]),
              f"| bound / share (the run's last) | {p['slack']:.3g} | - |",
              row("**polynomial share** (bound / slack)", p["share"]), "",
              "| the run's own share extrapolated | predicted | 95 % |", "|---|---|---|",
              row(f"to {p['steps']} steps, share ∝ step^p (the run's lr throughout)", g["share_at_paper_steps_same_lr"]),
              row(f"to S of {p['steps']} steps at the run's lr, share ∝ S^p", g["share_at_run_lr_cumulative"])]
    return "\n".join(lines) + "\n"


def plot(g, records, path):
    """Share and bound over the run against the step, log-log, with the share's fit extended to the paper's steps."""
    from experiments.plot import svg_plot
    logged = [r for r in records if "poly_share_bound_median" in r]
    x = [math.log10(r["step"]) for r in logged]
    fit_all = g["exponents"]["all after warm-up"]["poly_share_median"]["step"]
    first = next(r for r in logged if r["step"] > g["warmup"])
    c = first["poly_share_median"] / first["step"] ** fit_all  # anchored on the fit's first point for the eye
    ext = [first["step"], g["paper"]["steps"]]
    series = [{"label": "polynomial share (median layer)", "x": x, "y": [r["poly_share_median"] for r in logged]},
              {"label": "its bound max|h|·M·ρ", "x": x, "y": [r["poly_share_bound_median"] for r in logged]},
              {"label": f"share ∝ step^{fit_all:.2f}, extended", "x": [math.log10(s) for s in ext],
               "y": [c * s ** fit_all for s in ext], "dash": True}]
    ticks = [(e, f"1e{e}") for e in range(math.floor(min(x)), math.ceil(math.log10(g["paper"]["steps"])) + 1)]
    Path(path).write_text(svg_plot(series, title=f"PERA's polynomial share over one run (rank {g['rank']}, lr {g['lr']:g})",
                                   xlabel="step (log)", ylabel="log scale", log_y=True, xticks=ticks))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", nargs="+", help="a PERA run's log.jsonl (its args.json beside it); several with --range")
    p.add_argument("--range", action="store_true", help="the prediction over the recipes the seeds leave open, "
                   "one table for every log given; --json and --md then write it")
    for key, value in PAPER.items():
        p.add_argument(f"--paper-{key.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    p.add_argument("--svg", default=None)
    args = p.parse_args(argv)
    paper = {k: getattr(args, f"paper_{k}") for k in PAPER}
    if len(args.log) > 1 and not args.range or args.range and args.svg:
        p.error("several logs, and no --svg, go with --range")
    with cli.user_input():  # a log or args.json that is missing or not train.py's
        if args.range:
            rows = prediction_range(args.log, paper)
            print(range_markdown(rows))
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
            if args.md:
                Path(args.md).write_text(range_markdown(rows))
            return rows
        g = growth(args.log[0], paper)
        print(markdown(g))
        if args.json:
            Path(args.json).write_text(json.dumps(g, indent=1) + "\n")
        if args.md:
            Path(args.md).write_text(markdown(g))
        if args.svg:
            plot(g, read_log(args.log[0]), args.svg)
    return g


if __name__ == "__main__":
    cli.run(main)
