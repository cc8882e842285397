"""experiments/growth.py: the power-law fits, the schedule's sum and the paper-scale prediction, on logs
whose factors are known power laws; toy.py's ε marker for a real run."""
import json
import math

import pytest

from experiments import growth, toy


def test_fit_power_recovers_an_exact_power_law_with_a_zero_width_interval():
    xs = [10, 20, 50, 100, 400]
    fit = growth.fit_power(xs, [3e-4 * x ** 0.7 for x in xs])
    assert fit["p"] == pytest.approx(0.7, rel=1e-12) and fit["c"] == pytest.approx(3e-4, rel=1e-10)
    value, low, high = growth.predict(fit, 31900)
    assert value == pytest.approx(3e-4 * 31900 ** 0.7, rel=1e-10) and low == pytest.approx(value) == high


def test_the_interval_widens_away_from_the_data_and_covers_a_noisy_line():
    xs = [1 + i for i in range(50)]
    ys = [2 * x ** 0.5 * math.exp(0.1 * (-1) ** i) for i, x in enumerate(xs)]  # ±10 % alternating noise
    fit = growth.fit_power(xs, ys)
    near, far = growth.predict(fit, 25), growth.predict(fit, 5000)
    assert near[1] < 2 * 25 ** 0.5 < near[2] and far[1] < 2 * 5000 ** 0.5 < far[2]
    assert far[2] / far[1] > near[2] / near[1]


def test_schedule_sum_is_the_closed_form_of_the_warm_up_and_the_linear_decay():
    # Σ_{t<w} lr (t+1)/w + Σ_{t=w}^{T-1} lr (T-t)/(T-w) = lr (w+1)/2 + lr (T-w+1)/2 = lr (T+2)/2
    assert growth.schedule_sum(31900, 1e-4, 100) == pytest.approx(1e-4 * 31902 / 2, rel=1e-12)
    assert growth.schedule_sum(1103, 1e-3, 100) == pytest.approx(1e-3 * 1105 / 2, rel=1e-12)


def write_run(tmp_path, rank=4, h_lr_ratio=10.0, a_first=1 / 24, kappa=0.5, rho=1.5, slack=20.0):
    """A 200-step run (20 warm-up steps, lr 1e-3) whose factors are exact power laws of the cumulative lr
    after the warm-up: max|h| = 0.2 S_h, max|B| = 0.03 S^0.5, max|A| = a_first + 0.01 S^0.6."""
    (tmp_path / "args.json").write_text(json.dumps({"rank": rank, "lr": 1e-3, "warmup_steps": 20,
                                                    "h_lr_ratio": h_lr_ratio}))
    lines, total = [], 0.0
    for step in range(1, 201):
        lr = 1e-3 * (step / 20 if step <= 20 else (200 - step + 1) / 180)
        total += lr
        record = {"step": step, "loss": 1.0, "lr": lr}
        if step % 10 == 0:
            h, b, a = 0.2 * h_lr_ratio * total, 0.03 * total ** 0.5, a_first + (0.01 * total ** 0.6 if step > 20 else 0)
            bound = kappa * h * rank * b * a * rho
            record.update(h_max=h, b_max_median=b, a_max_median=a, rho_median=rho, poly_share_bound_median=bound,
                          poly_share_median=bound / slack, lora_rms_median=1e-3)
        lines.append(json.dumps(record))
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "log.jsonl"


def test_the_prediction_puts_the_fitted_factors_into_the_bound_at_the_papers_setting(tmp_path):
    g = growth.growth(write_run(tmp_path))
    p = g["paper"]
    S = 1e-4 * 31902 / 2
    h, b, a = 0.2 * S, 0.03 * S ** 0.5, 1 / 64 + 0.01 * S ** 0.6  # h_lr_ratio 1 at the paper's scale, width 4096
    bound = 0.5 * 16 * h * b * a * (1.5 * 2)  # kappa · r · h · b · a · ρ √(16/4)
    for key, want in (("h_max", h), ("b_max", b), ("a_max", a), ("bound", bound), ("share", bound / 20)):
        assert p[key][0] == pytest.approx(want, rel=1e-9), key
        assert p[key][1] == pytest.approx(want, rel=1e-6) and p[key][2] == pytest.approx(want, rel=1e-6), key
    assert p["kappa"] == pytest.approx(0.5) and p["slack"] == pytest.approx(20) and p["rho"] == pytest.approx(3)
    assert g["exponents"]["all after warm-up"]["b_max_median"]["cumulative_lr"] == pytest.approx(0.5)
    assert "**polynomial share** (bound / slack)" in growth.markdown(g)
    assert g["logged_steps"] == 20 and g["slack_over_run"]["median layer"] == pytest.approx((20, 20, 20))


def test_the_range_reruns_the_prediction_for_every_recipe_with_its_two_ceilings(tmp_path):
    log = write_run(tmp_path)
    rows = growth.prediction_range([log])
    assert [(r["lr"], r["batch"]) for r in rows] == growth.RECIPES and {r["init"] for r in rows} == {"code"}
    for r in rows:
        steps = 31900 * 16 // r["batch"]
        S = r["lr"] * (steps + 2) / 2  # the schedule's closed form (test above)
        h, b, a = 0.2 * S, 0.03 * S ** 0.5, 1 / 64 + 0.01 * S ** 0.6  # the synthetic run's laws, h_lr_ratio 1
        bound = 0.5 * 16 * h * b * a * 3
        assert r["steps"] == steps and r["cumulative_lr"] == pytest.approx(S, rel=1e-12)
        assert r["share"][0] == pytest.approx(bound / 20, rel=1e-9) and r["bound"] == pytest.approx(bound, rel=1e-9)
        # the worst case for h: |h| = h's own S in the bound, then the run's slack
        assert r["share_h_worst"] == pytest.approx(bound / h * S / 20, rel=1e-9)
    md = growth.range_markdown(rows)
    assert md.count("\n| code |") == 6 and f"{max(r['share_h_worst'] for r in rows):.1e} (the worst case for h)" in md


def test_a_log_without_the_bound_is_one_clear_error(tmp_path):
    (tmp_path / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "lr": 1e-3}) + "\n")
    with pytest.raises(ValueError, match="no PERA record with the bound"):
        growth.read_log(tmp_path / "log.jsonl")


def test_toy_marks_a_run_where_its_update_size_puts_it_on_the_eps_axis(tmp_path):
    log = write_run(tmp_path)
    eps, step = toy.fine_tuning_eps(log, floor=0.8)
    assert step == 200 and eps == pytest.approx(1e-3 / 0.6)  # RMS of sBA over √(1 − floor²)
    rows = [{"eps": e, "method": m, "target": "gaussian", "rank": 4, "steps": 10, "lr": 1e-3, "eckart_young_r": 0.8,
             "poly_share": e, "gain": e / 10} for e in (1e-4, 1e-2, 1) for m in ("lora", "pera")]
    toy.eps_plot(rows, tmp_path / "eps.svg", [log])
    svg = (tmp_path / "eps.svg").read_text()
    assert "step 200: ε ≈ 1.7e-03" in svg and svg.count('stroke-dasharray="6 4"') == 2  # its line and legend
