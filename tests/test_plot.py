"""plot.py: the SVG parses, and every data point lands where the axes say it should."""
import math
import xml.etree.ElementTree as ET

import pytest

from experiments.plot import nice_ticks, svg_plot

NS = "{http://www.w3.org/2000/svg}"


def parse(svg):
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    area = next(e for e in root.iter(NS + "rect") if e.get("class") == "plot-area")
    box = {k: float(area.get(k)) for k in ("x", "y", "width", "height")}
    lines = {e.get("data-label"): [tuple(map(float, p.split(","))) for p in e.get("points").split()]
             for e in root.iter(NS + "polyline")}
    ticks = {c: [(float(e.get("data-value")), float(e.get("x1" if c == "xtick" else "y1")))
                 for e in root.iter(NS + "line") if e.get("class") == c] for c in ("xtick", "ytick")}
    texts = [e.text for e in root.iter(NS + "text")]
    return root, box, lines, ticks, texts


def affine_from(ticks):
    """The map value -> pixel that the first and last tick define."""
    (v0, p0), (v1, p1) = ticks[0], ticks[-1]
    return lambda v: p0 + (v - v0) / (v1 - v0) * (p1 - p0)


def test_points_land_on_the_axes_linear_scale():
    series = [{"label": "loss", "x": [0, 5, 10, 20], "y": [2.5, 1.0, 0.4, 0.2]},
              {"label": "val & <test>", "x": [10, 20], "y": [0.9, 0.3], "dash": True, "marker": True}]
    svg = svg_plot(series, title="a & b", xlabel="step", ylabel="loss")
    root, box, lines, ticks, texts = parse(svg)
    assert set(lines) == {"loss", "val & <test>"} and "val & <test>" in texts and "a & b" in texts
    fx, fy = affine_from(ticks["xtick"]), affine_from(ticks["ytick"])
    for s in series:
        assert lines[s["label"]] == [pytest.approx((fx(x), fy(y)), abs=0.011) for x, y in zip(s["x"], s["y"])]
    # the axes span the plot area: the lowest tick at its bottom/left edge, the highest at its top/right
    assert ticks["xtick"][0][1] == pytest.approx(box["x"]) and ticks["xtick"][-1][1] == pytest.approx(box["x"] + box["width"])
    assert ticks["ytick"][0][1] == pytest.approx(box["y"] + box["height"]) and ticks["ytick"][-1][1] == pytest.approx(box["y"])
    assert ticks["ytick"][0][0] <= 0.2 and ticks["ytick"][-1][0] >= 2.5  # every point inside
    assert len([e for e in root.iter(NS + "circle")]) == 2  # markers only where asked


def test_log_axis_puts_decades_at_equal_distances():
    series = [{"label": "error", "x": [0, 1, 2, 3], "y": [1.0, 1e-1, 3e-3, 1e-6]}]
    _, box, lines, ticks, texts = parse(svg_plot(series, log_y=True, xticks=[(0, "a"), (1, "b"), (2, "c"), (3, "d")]))
    assert [v for v, _ in ticks["ytick"]] == [-6, -5, -4, -3, -2, -1, 0] and "1e-6" in texts and "b" in texts
    fy = affine_from(ticks["ytick"])
    assert [p[1] for p in lines["error"]] == pytest.approx([fy(math.log10(y)) for y in series[0]["y"]], abs=0.011)
    with pytest.raises(ValueError, match="positive"):
        svg_plot([{"label": "z", "x": [0, 1], "y": [1, 0]}], log_y=True)
    with pytest.raises(ValueError, match="same"):
        svg_plot([{"label": "z", "x": [0, 1], "y": [1]}])


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(0.13, 2.6) == [0, 0.5, 1, 1.5, 2, 2.5, 3]
    ticks = nice_ticks(-3.7, 41)
    assert ticks[0] <= -3.7 and ticks[-1] >= 41 and len({round(b - a, 9) for a, b in zip(ticks, ticks[1:])}) == 1


def test_log_files_become_one_line_per_run(tmp_path):
    import json

    from experiments import plot
    for run, losses in [("lora", [3.0, 2.0, 1.0]), ("pera", [3.0, 1.5, 0.5])]:
        (tmp_path / run).mkdir()
        records = [{"step": i + 1, "loss": v, **({"val_loss": v / 2} if i == 2 else {})} for i, v in enumerate(losses)]
        (tmp_path / run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    logs = [str(tmp_path / run / "log.jsonl") for run in ("lora", "pera")]
    plot.main([*logs, "--key", "loss", "--smooth", "2", "--out", str(tmp_path / "loss.svg")])
    _, _, lines, ticks, _ = parse((tmp_path / "loss.svg").read_text())
    fx, fy = affine_from(ticks["xtick"]), affine_from(ticks["ytick"])
    assert lines["pera"] == [pytest.approx((fx(x), fy(y)), abs=0.011) for x, y in [(1, 3.0), (2, 2.25), (3, 1.0)]]
    assert set(lines) == {"lora", "pera"}
    assert plot.log_series(logs, "val_loss") == [{"label": "lora", "x": [3], "y": [0.5]},
                                                  {"label": "pera", "x": [3], "y": [0.25]}]
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "log.jsonl").write_text("".join(json.dumps({"step": i, "h_max": v}) + "\n"
                                                      for i, v in [(1, 0.0), (2, 1e-3), (3, 1e-2)]))
    plot.main([str(tmp_path / "h" / "log.jsonl"), "--key", "h_max", "--log-y", "--out", str(tmp_path / "h.svg")])
    _, _, lines, ticks, _ = parse((tmp_path / "h.svg").read_text())
    fx, fy = affine_from(ticks["xtick"]), affine_from(ticks["ytick"])
    assert lines["h"] == [pytest.approx((fx(x), fy(y)), abs=0.011) for x, y in [(2, -3), (3, -2)]]  # 0 left out
    with pytest.raises(SystemExit, match="no record .* has the key 'h_max'"):
        plot.main([*logs, "--key", "h_max", "--out", str(tmp_path / "x.svg")])
