"""The project's own SVG line plot: axes, ticks, lines, a legend, optionally a log y-axis. No dependency.

    python -m experiments.plot results/reproduce/*/log.jsonl --key loss --out results/reproduce/loss.svg

    from experiments.plot import svg_plot
    Path("loss.svg").write_text(svg_plot([{"label": "LoRA", "x": steps, "y": losses}], title="training loss",
                                         xlabel="step", ylabel="loss"))

A series is a dict: label, x, y (equal lengths), and optionally dash=True (a dashed line) or marker=True
(a dot at each point). The plot area is the <rect class="plot-area">; each series is one <polyline>
with a data-label attribute, its points mapped affinely (log10 for y with log_y) from the data range
(widened to whole ticks) onto that rectangle.
"""
import argparse
import json
import math
import sys
from pathlib import Path
from xml.sax.saxutils import escape

from support import cli

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
          "#bcbd22", "#000000")
WIDTH, HEIGHT = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 230, 40, 50  # margins; the legend sits in the right one


def nice_ticks(lo, hi, n=5):
    """Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten."""
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    raw = (hi - lo) / n
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks = [first]
    while ticks[-1] < hi - 1e-9 * step:
        ticks.append(ticks[-1] + step)
    return [round(t, 12) for t in ticks]


def fmt(v):
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.0e}"


def svg_plot(series, title="", xlabel="", ylabel="", log_y=False, xticks=None):
    """The SVG document (a string). xticks: optional [(x, label), ...] replacing the numeric x ticks."""
    xs = [x for s in series for x in s["x"]]
    ys = [y for s in series for y in s["y"]]
    if not xs or any(len(s["x"]) != len(s["y"]) for s in series):
        raise ValueError("every series needs x and y of the same, nonzero length")
    if log_y and min(ys) <= 0:
        raise ValueError("a log y-axis needs positive values")
    ty = (lambda y: math.log10(y)) if log_y else (lambda y: y)  # noqa: E731
    if xticks is None:
        xt = nice_ticks(min(xs), max(xs))
        xticks = [(v, fmt(v)) for v in xt]
    x0, x1 = min([min(xs)] + [v for v, _ in xticks]), max([max(xs)] + [v for v, _ in xticks])
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if log_y:
        y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
        y1 = y1 if y1 > y0 else y0 + 1
        yticks = [(float(e), f"1e{e}") for e in range(y0, y1 + 1)]
    else:
        yt = nice_ticks(min(ys), max(ys))
        y0, y1 = yt[0], yt[-1]
        yticks = [(v, fmt(v)) for v in yt]
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    px = lambda x: LEFT + (x - x0) / (x1 - x0) * pw  # noqa: E731
    py = lambda v: TOP + ph - (v - y0) / (y1 - y0) * ph  # noqa: E731  (v already on the axis' scale)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{WIDTH / 2:.1f}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>',
           f'<rect class="plot-area" x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>']
    for v, label in xticks:
        out.append(f'<line class="xtick" data-value="{v}" x1="{px(v):.2f}" x2="{px(v):.2f}" y1="{TOP + ph}" '
                   f'y2="{TOP + ph + 5}" stroke="black"/>')
        out.append(f'<text x="{px(v):.2f}" y="{TOP + ph + 18}" text-anchor="middle">{escape(label)}</text>')
    for v, label in yticks:
        out.append(f'<line class="ytick" data-value="{v}" x1="{LEFT - 5}" x2="{LEFT + pw}" y1="{py(v):.2f}" '
                   f'y2="{py(v):.2f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 8}" y="{py(v) + 4:.2f}" text-anchor="end">{escape(label)}</text>')
    out.append(f'<text x="{LEFT + pw / 2:.1f}" y="{HEIGHT - 10}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text transform="translate(16 {TOP + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f'{escape(ylabel)}</text>')
    for i, s in enumerate(series):
        color = COLORS[i % len(COLORS)]
        points = " ".join(f"{px(x):.2f},{py(ty(y)):.2f}" for x, y in zip(s["x"], s["y"]))
        dash = ' stroke-dasharray="6 4"' if s.get("dash") else ""
        out.append(f'<polyline data-label="{escape(s["label"], {chr(34): "&quot;"})}" points="{points}" '
                   f'fill="none" stroke="{color}" stroke-width="1.8"{dash}/>')
        if s.get("marker"):
            out += [f'<circle cx="{px(x):.2f}" cy="{py(ty(y)):.2f}" r="3" fill="{color}"/>'
                    for x, y in zip(s["x"], s["y"])]
        ly = TOP + 10 + 18 * i  # the legend, one line per series
        out.append(f'<line x1="{LEFT + pw + 12}" x2="{LEFT + pw + 36}" y1="{ly}" y2="{ly}" stroke="{color}" '
                   f'stroke-width="1.8"{dash}/>')
        out.append(f'<text x="{LEFT + pw + 42}" y="{ly + 4}">{escape(s["label"])}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def log_series(files, key, smooth=1):
    """One series per train.py log.jsonl (named after its run folder): `key` over steps, where recorded;
    smooth > 1 averages each point with the smooth − 1 recorded before it."""
    series = []
    for f in files:
        records = []
        for n, line in enumerate(Path(f).read_text().splitlines(), 1):
            try:
                records += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: line {n} is not JSON ({e}); a run killed mid-write? --resume rewrites it") from None
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if not points:
            continue
        ys = [sum(y for _, y in points[max(0, i - smooth + 1):i + 1]) / len(points[max(0, i - smooth + 1):i + 1])
              for i in range(len(points))]
        series.append({"label": Path(f).parent.name, "x": [x for x, _ in points], "y": ys})
    return series


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot a key of train.py's log.jsonl files over steps, as SVG.")
    p.add_argument("logs", nargs="+", help="log.jsonl files; each run is labelled by its folder's name")
    p.add_argument("--key", default="loss", help="loss, val_loss, grad_norm, poly_share_median, h_max, ...")
    p.add_argument("--smooth", type=cli.POSITIVE_INT, default=1, help="running mean over this many recorded points")
    p.add_argument("--log-y", action="store_true")
    p.add_argument("--title", default=None)
    p.add_argument("--out", required=True, help="the SVG file to write")
    args = p.parse_args(argv)
    missing = [f for f in args.logs if not Path(f).is_file()]
    if missing:
        sys.exit(f"error: no such log file: {missing[0]}")
    with cli.user_input():  # a log that is not train.py's JSON lines
        series = log_series(args.logs, args.key, args.smooth)
    if not series:
        sys.exit(f"error: no record in {', '.join(args.logs)} has the key '{args.key}'")
    if args.log_y:  # a log axis cannot show 0 (e.g. the polynomial share while h is still 0): leave it out, say so
        dropped = sum(y <= 0 for s in series for y in s["y"])
        for s in series:
            s["x"], s["y"] = [x for x, y in zip(s["x"], s["y"]) if y > 0], [y for y in s["y"] if y > 0]
        series = [s for s in series if s["y"]]
        if not series:
            sys.exit(f"error: --log-y: every value of '{args.key}' is <= 0")
        if dropped:
            print(f"--log-y: left out {dropped} values <= 0 of '{args.key}'")
    title = args.title or f"{args.key} over training steps" + (f" (running mean of {args.smooth})" if args.smooth > 1 else "")
    with cli.user_input():
        Path(args.out).write_text(svg_plot(series, title=title, xlabel="step", ylabel=args.key, log_y=args.log_y))
    print(f"wrote {args.out}: {len(series)} runs")


if __name__ == "__main__":
    cli.run(main)
