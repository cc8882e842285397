"""The expressiveness experiment: which matrices can LoRA, PERA and HiRA reach at the same rank?

    python -m experiments.toy                      # the default table, about a minute on 2 CPU cores
    python -m experiments.toy --json results/toy.json --svg results/toy.svg
    python -m experiments.toy --eps-sweep --json results/toy_eps.json --svg results/toy_eps.svg

Each target is a matrix T (out × in) to be reached as an update, ΔW ≈ T, and a frozen weight W0 (HiRA's
update W0 ⊙ (B A) depends on it; LoRA's and PERA's do not). Every method wraps nn.Linear(in, out) with
weight W0 in its own adapter class (lora.py, hira.py, pera.py: the code this repository trains with) and
is fitted by Adam on the loss ‖ΔW − T‖²_F, with ΔW read through the layer's own forward on the identity.
The table gives the relative error ‖ΔW − T‖_F / ‖T‖_F next to two Eckart–Young floors, the least error
of any matrix of rank r and of rank bound (the method's own rank bound: r for LoRA, r + r(r+1)/2 for
PERA, min(out, in) for HiRA). Nothing of rank ≤ k can beat the floor at k, so LoRA can never go below
the rank-r floor; PERA can, and its floor at its bound is the best it could ever do.

A fit whose error still fell by more than --tol (relative, and by more than 5e-5, which the 4 printed
decimals would show) over its last 10 % of steps is marked as not converged ("…" after the number):
its figure depends on the step budget, not only on the method.

--eps-sweep asks when PERA's extra terms matter: one target scaled by ε from 1e-4 to 1 (ε = 1 is the
unit-scale target, entries of mean square 1), each ε fitted by LoRA and PERA (the authors' init: A
Kaiming-uniform, B = 0, h = 0) with the same fine-tuning-like budget (the same steps, Adam at the same
peak lr, train.py's warm-up and linear decay). Per ε: the relative error, the rank-r floor, PERA's gain
below that floor, the polynomial share ‖ΔW − sBA‖/‖sBA‖ and max |h|. The relative errors and floors
do not depend on ε; only how far the optimizer must move the factors does (docs/study.md).
"""
import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

import hira
import lora
import pera
from support import cli

TARGETS = ("gaussian", "pera-generated", "hadamard", "low-rank")
# (name, terms, init) of every fitted method; terms/init are PERA's ("-" for the others)
METHODS = [("lora", "-", "-"), ("hira", "-", "-")] + [("pera", terms, init) for terms in pera.TERMS
                                                        for init in pera.INITS]


def make_target(name, out_features, in_features, rank, g):
    """(T, W0): the update to reach and the frozen weight. Entries of T are of order 1 in every target."""
    W0 = torch.randn(out_features, in_features, generator=g, dtype=torch.float64)  # a 'pretrained' weight
    if name == "gaussian":  # a full-rank matrix with no structure: the hardest case for every method
        T = torch.randn(out_features, in_features, generator=g, dtype=torch.float64)
    elif name == "pera-generated":  # the update of a PERA layer at this rank: PERA can reach it exactly
        layer = pera.PERALinear(nn.Linear(in_features, out_features, bias=False).double(), rank)
        with torch.no_grad():
            for p in (layer.A, layer.B, layer.h):
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
            T = layer.delta_weight()
    elif name == "hadamard":  # W0 ⊙ (rank-r matrix): HiRA's own structure, full rank in general
        U = torch.randn(out_features, rank, generator=g, dtype=torch.float64)
        V = torch.randn(rank, in_features, generator=g, dtype=torch.float64)
        T = W0 * (U @ V) / math.sqrt(rank)
    elif name == "low-rank":  # rank r exactly: every method's floor is 0, and each should reach it
        U = torch.randn(out_features, rank, generator=g, dtype=torch.float64)
        V = torch.randn(rank, in_features, generator=g, dtype=torch.float64)
        T = U @ V / math.sqrt(rank)
    else:
        raise ValueError(f"unknown target {name!r} (targets: {', '.join(TARGETS)})")
    return T / T.norm() * math.sqrt(T.numel()), W0  # rescaled to entries of mean square 1


def eckart_young(T, k):
    """The least ‖T − M‖_F / ‖T‖_F over matrices M of rank ≤ k: the singular values T drops beyond k."""
    s = torch.linalg.svdvals(T)
    return float(s[k:].square().sum().sqrt() / s.square().sum().sqrt())


def make_layer(method, terms, init, W0, rank):
    base = nn.Linear(W0.shape[1], W0.shape[0], bias=False, dtype=torch.float64)
    with torch.no_grad():
        base.weight.copy_(W0)
    if method == "lora":
        return lora.LoRALinear(base, rank)
    if method == "hira":
        return hira.HiRALinear(base, rank)
    return pera.PERALinear(base, rank, terms=terms, init=init)


def rank_bound(layer):
    out_features, in_features = layer.base.weight.shape
    if isinstance(layer, pera.PERALinear):
        return min(layer.rank + len(layer.h), out_features, in_features)
    if isinstance(layer, hira.HiRALinear):
        return min(out_features, in_features)  # rank(W0) · r, capped: W0 is full rank here
    return layer.rank


def fit(layer, T, steps, lr, tol, schedule="constant"):
    """Adam on ‖ΔW − T‖²_F / ‖T‖²_F; ΔW is read through the layer's forward: layer(I) = (W0 + ΔW)ᵀ.

    schedule "linear": train.py's, a tenth of the steps of linear warm-up, then linear decay to 0.
    Returns the final relative error, the error 10 % of the steps earlier, and whether it converged.
    """
    eye = torch.eye(T.shape[1], dtype=T.dtype)
    target = (layer.base.weight + T).T.detach()  # (in, out): what layer(I) must become
    params = [p for p in layer.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    errors, warmup = [], max(1, steps // 10)
    for step in range(steps):
        if schedule == "linear":
            opt.param_groups[0]["lr"] = lr * min((step + 1) / warmup, (steps - step) / (steps - warmup))
        loss = (layer(eye) - target).square().sum() / T.square().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        errors.append(math.sqrt(loss.item()))
    with torch.no_grad():
        final = float((layer.delta_weight() - T).norm() / T.norm())  # after the last step, read the other way
    earlier = errors[max(0, int(0.9 * steps) - 1)]
    # still falling by more than tol (relative), and by enough to show in the 4 decimals printed: not converged
    converged = earlier - final <= tol * final or earlier - final < 5e-5 or final < 5e-5
    return final, earlier, converged


def run(targets, out_features, in_features, rank, steps, lr, seed, tol, methods=METHODS, progress=True):
    rows = []
    bar = tqdm(total=len(targets) * len(methods), desc="fitting", disable=not progress, leave=False)
    for t_index, name in enumerate(targets):
        g = torch.Generator().manual_seed(seed * 1000 + t_index)
        T, W0 = make_target(name, out_features, in_features, rank, g)
        for method, terms, init in methods:
            m_index = METHODS.index((method, terms, init))  # a method's seed does not depend on which others run
            torch.manual_seed(seed * 1000 + 100 * t_index + m_index)  # the adapter's own random init
            layer = make_layer(method, terms, init, W0, rank)
            bar.set_postfix(target=name, method=method + ("" if terms == "-" else f"-{terms}-{init}"))
            rel_error, earlier, converged = fit(layer, T, steps, lr, tol)
            bound = rank_bound(layer)
            rows.append({"target": name, "method": method, "terms": terms, "init": init, "rank": rank,
                         "params": sum(p.numel() for p in layer.parameters() if p.requires_grad),
                         "rel_error": rel_error, "eckart_young_r": eckart_young(T, rank), "rank_bound": bound,
                         "eckart_young_bound": eckart_young(T, bound), "converged": converged,
                         "rel_error_90": earlier, "steps": steps})
            bar.update(1)
    bar.close()
    return rows


def method_name(row):
    if row["method"] == "pera":
        return f"PERA {row['terms']}, {row['init']} init"
    return {"lora": "LoRA", "hira": "HiRA"}[row["method"]]


def table(rows):
    """One row per method, one column per target: the error, then the two floors under each target's rows."""
    targets = list(dict.fromkeys(r["target"] for r in rows))
    methods = list(dict.fromkeys(method_name(r) for r in rows))
    by = {(r["target"], method_name(r)): r for r in rows}
    cell = lambda r: f"{r['rel_error']:.4f}" + ("" if r["converged"] else " …")  # noqa: E731
    head = ["Method", "Params", "Rank bound"] + targets
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for m in methods:
        first = by[(targets[0], m)]
        lines.append("| " + " | ".join([m, str(first["params"]), str(first["rank_bound"])]
                                       + [cell(by[(t, m)]) for t in targets]) + " |")
    r = rows[0]["rank"]
    pera_bound = r + r * (r + 1) // 2
    lines.append("| Eckart–Young floor, rank r | - | " + f"{r} | "
                 + " | ".join(f"{by[(t, methods[0])]['eckart_young_r']:.4f}" for t in targets) + " |")
    pera_row = next((by[(targets[0], m)] for m in methods if by[(targets[0], m)]["rank_bound"] == pera_bound), None)
    if pera_row is not None:
        lines.append("| Eckart–Young floor, PERA's bound r + r(r+1)/2 | - | " + f"{pera_bound} | " + " | ".join(
            f"{by[(t, method_name(pera_row))]['eckart_young_bound']:.4f}" for t in targets) + " |")
    return "\n".join(lines)


def plot(rows, path):
    """One panel-free chart: each method's error per target, with the two floors as dashed lines."""
    from experiments.plot import svg_plot
    targets = list(dict.fromkeys(r["target"] for r in rows))
    x = list(range(len(targets)))
    series = []
    for m in dict.fromkeys(method_name(r) for r in rows):
        ys = [next(r["rel_error"] for r in rows if r["target"] == t and method_name(r) == m) for t in targets]
        series.append({"label": m, "x": x, "y": [max(y, 1e-6) for y in ys], "marker": True})
    first = [next(r for r in rows if r["target"] == t) for t in targets]
    pera_rows = [next(r for r in rows if r["target"] == t and r["method"] == "pera" and r["terms"] == "all")
                 for t in targets] if any(r["terms"] == "all" for r in rows) else []
    series.append({"label": "Eckart–Young floor, rank r", "x": x, "y": [max(r["eckart_young_r"], 1e-6) for r in first],
                   "dash": True})
    if pera_rows:
        series.append({"label": "floor at PERA's bound", "x": x,
                       "y": [max(r["eckart_young_bound"], 1e-6) for r in pera_rows], "dash": True})
    Path(path).write_text(svg_plot(series, title=f"Relative error ‖ΔW − T‖/‖T‖ at rank {rows[0]['rank']} "
                                                  f"({rows[0]['steps']} Adam steps)",
                                   xlabel="target", ylabel="relative error (log)", log_y=True,
                                   xticks=list(zip(x, targets))))


EPS = tuple(10.0 ** (k / 2) for k in range(-8, 1))  # 1e-4 ... 1 in half decades: 9 values


def eps_sweep(eps_values, target, out_features, in_features, rank, steps, lr, seed, tol, progress=True):
    """LoRA and PERA (all terms, code init) fitted to ε · T for each ε, all with one budget (steps, peak lr)."""
    g = torch.Generator().manual_seed(seed * 1000 + TARGETS.index(target))
    T1, W0 = make_target(target, out_features, in_features, rank, g)
    rows = []
    bar = tqdm(total=2 * len(eps_values), desc="ε sweep", disable=not progress, leave=False)
    for eps in eps_values:
        T = eps * T1
        for method in ("lora", "pera"):
            torch.manual_seed(seed)  # the same A for LoRA and PERA at every ε
            layer = make_layer(method, "all", "code", W0, rank)
            rel_error, _, converged = fit(layer, T, steps, lr, tol, schedule="linear")
            is_pera = method == "pera"
            floor = eckart_young(T, rank)
            rows.append({"eps": eps, "target": target, "method": method, "rank": rank, "steps": steps, "lr": lr,
                         "rel_error": rel_error, "eckart_young_r": floor, "gain": floor - rel_error,
                         "poly_share": pera.polynomial_share(layer) if is_pera else 0.0,
                         "h_max": float(layer.h.detach().abs().max()) if is_pera else 0.0, "converged": converged})
            bar.update(1)
    bar.close()
    return rows


def eps_table(rows):
    lines = ["| ε | rank-r floor | LoRA | PERA | PERA's gain below the floor | polynomial share | max \\|h\\| |",
             "|---|---|---|---|---|---|---|"]
    for eps in dict.fromkeys(r["eps"] for r in rows):
        lo, pe = (next(r for r in rows if r["eps"] == eps and r["method"] == m) for m in ("lora", "pera"))
        cell = lambda r: f"{r['rel_error']:.4f}" + ("" if r["converged"] else " …")  # noqa: E731
        lines.append(f"| {eps:.0e} | {lo['eckart_young_r']:.4f} | {cell(lo)} | {cell(pe)} | {pe['gain']:.2e} | "
                     f"{pe['poly_share']:.2e} | {pe['h_max']:.3g} |")
    return "\n".join(lines)


def fine_tuning_eps(log, floor):
    """Where a train.py PERA run sits on the ε axis: the RMS entry of its s·BA (the last logged
    lora_rms_median) over that of the rank-r fit of a unit-scale target, √(1 − floor²) (the best rank-r
    matrix keeps that fraction of ‖T‖_F, and a unit target's RMS entry is 1). Returns (ε, step)."""
    records = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    last = next((r for r in reversed(records) if "lora_rms_median" in r), None)
    if last is None:
        raise ValueError(f"{log}: no lora_rms_median logged (train.py logs it for PERA runs)")
    return last["lora_rms_median"] / math.sqrt(1 - floor ** 2), last["step"]


def eps_plot(rows, path, marks=()):
    """PERA's gain below the rank-r floor and its polynomial share against ε, log-log; each of `marks` (a
    train.py PERA run's log.jsonl) a dashed vertical line at the run's ε (fine_tuning_eps)."""
    from experiments.plot import svg_plot
    pera_rows = [r for r in rows if r["method"] == "pera"]
    x = [math.log10(r["eps"]) for r in pera_rows]
    series = [{"label": "polynomial share ‖ΔW − sBA‖/‖sBA‖", "x": x, "y": [max(r["poly_share"], 1e-9) for r in pera_rows],
               "marker": True},
              {"label": "gain below the rank-r floor (floor − error)", "x": x,
               "y": [max(r["gain"], 1e-9) for r in pera_rows], "marker": True}]
    ys = [y for s in series for y in s["y"]]
    for log in marks:
        eps, step = fine_tuning_eps(log, pera_rows[0]["eckart_young_r"])
        run = "/".join(Path(log).parent.parts[-2:])
        series.append({"label": f"{run}, step {step}: ε ≈ {eps:.1e}", "x": [math.log10(eps)] * 2,
                       "y": [min(ys), max(ys)], "dash": True})
    ticks = [(v, f"1e{v:+.0f}".replace("+", "")) for v in range(math.floor(min(x)), math.ceil(max(x)) + 1)]
    first = pera_rows[0]
    Path(path).write_text(svg_plot(series, title=f"PERA against the target's scale ε ({first['target']}, rank "
                                                  f"{first['rank']}, {first['steps']} Adam steps at lr {first['lr']:g})",
                                   xlabel="ε (the target's scale; log)", ylabel="log scale", log_y=True, xticks=ticks))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, from {', '.join(TARGETS)}")
    p.add_argument("--size", default="64x64", help="out x in of the target matrices")
    p.add_argument("--rank", type=cli.Number(int, low=2), default=4,
                   help="r, the same for every method (at least 2: PERA's cross terms need two indices)")
    p.add_argument("--steps", type=cli.Number(int, low=10), default=2000, help="Adam steps per fit")
    p.add_argument("--lr", type=cli.POSITIVE, default=1e-2, help="Adam's learning rate")
    p.add_argument("--tol", type=cli.NON_NEGATIVE, default=0.01,
                   help="converged: the error fell by at most this fraction over the last 10%% of steps")
    p.add_argument("--seed", type=cli.SEED, default=0)
    p.add_argument("--eps-sweep", action="store_true", help="the target's scale from 1e-4 to 1 instead of the "
                   "table: LoRA and PERA on the first of --targets, one budget (--steps, --lr) for every scale")
    p.add_argument("--json", default=None, help="write the rows to this file")
    p.add_argument("--svg", default=None, help="plot the errors against the floors to this file")
    p.add_argument("--mark", action="append", default=[], metavar="LOG",
                   help="with --eps-sweep --svg: mark where this PERA run's update sits on the ε axis (repeatable)")
    args = p.parse_args(argv)
    targets = args.targets.split(",")
    unknown = [t for t in targets if t not in TARGETS]
    try:
        out_features, in_features = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size must be OUTxIN, e.g. 64x64, got {args.size!r}")
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)} (targets: {', '.join(TARGETS)})")
    if min(out_features, in_features) < 2:
        p.error(f"--size must be at least 2x2, got {args.size!r}")
    torch.set_num_threads(1)  # small matrices: threads cost more than they give, and results stay bitwise fixed
    if args.eps_sweep:
        rows = eps_sweep(EPS, targets[0], out_features, in_features, args.rank, args.steps, args.lr, args.seed, args.tol)
        print(f"Relative error ‖ΔW − T‖_F / ‖T‖_F against the target's scale ε, {targets[0]} {out_features}x"
              f"{in_features}, rank {args.rank}, {args.steps} Adam steps at peak lr {args.lr:g} (warm-up and linear "
              f"decay), PERA with the authors' init, seed {args.seed}")
        print(eps_table(rows))
        with cli.user_input():
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
            if args.svg:
                eps_plot(rows, args.svg, args.mark)
        return rows
    rows = run(targets, out_features, in_features, args.rank, args.steps, args.lr, args.seed, args.tol)
    print(f"Relative error ‖ΔW − T‖_F / ‖T‖_F, {out_features}x{in_features} targets, rank {args.rank}, "
          f"{args.steps} Adam steps at lr {args.lr:g}, seed {args.seed} (… = still falling: not converged)")
    print(table(rows))
    with cli.user_input():  # an output path that cannot be written
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
        if args.svg:
            plot(rows, args.svg)
    return rows


if __name__ == "__main__":
    cli.run(main)
