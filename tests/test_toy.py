"""toy.py, the expressiveness experiment: its floors are Eckart–Young's, LoRA never beats the rank-r one,
PERA and HiRA reach the targets built with their own structure, and what it prints is reproducible."""
import json

import pytest
import torch

from experiments import toy

SMALL = dict(out_features=16, in_features=12, rank=3, lr=2e-2, seed=0, tol=0.01, progress=False)


def test_eckart_young_floor_is_the_truncated_svd_and_no_rank_k_matrix_beats_it():
    T = torch.randn(16, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    U, s, Vh = torch.linalg.svd(T, full_matrices=False)
    for k in (0, 1, 3, 12):
        best = U[:, :k] @ torch.diag(s[:k]) @ Vh[:k]
        assert toy.eckart_young(T, k) == pytest.approx(((T - best).norm() / T.norm()).item(), abs=1e-12)
        for seed in range(20):  # random rank-k matrices, scaled optimally, all do worse
            g = torch.Generator().manual_seed(seed)
            M = torch.randn(16, k, dtype=torch.float64, generator=g) @ torch.randn(k, 12, dtype=torch.float64, generator=g)
            c = (T * M).sum() / M.square().sum() if M.any() else 0.0
            assert ((T - c * M).norm() / T.norm()).item() >= toy.eckart_young(T, k) - 1e-12


def test_targets_have_the_structure_they_are_named_after():
    g = torch.Generator().manual_seed(0)
    rank = lambda M: int(torch.linalg.matrix_rank(M))  # noqa: E731
    T, W0 = toy.make_target("pera-generated", 30, 25, 3, g)
    assert rank(T) == 3 + 6  # r + r(r+1)/2: beyond any rank-3 matrix
    T, W0 = toy.make_target("hadamard", 30, 25, 3, g)
    assert rank(T / W0) == 3 and rank(T) == 25  # W0 ⊙ (rank 3): full rank
    T, W0 = toy.make_target("low-rank", 30, 25, 3, g)
    assert rank(T) == 3
    T, W0 = toy.make_target("gaussian", 30, 25, 3, g)
    assert rank(T) == 25 and T.square().mean().item() == pytest.approx(1.0)


def test_lora_never_beats_the_rank_r_floor():
    rows = toy.run(list(toy.TARGETS), steps=400, methods=[("lora", "-", "-")], **SMALL)
    for row in rows:
        assert row["rel_error"] >= row["eckart_young_r"] - 1e-9, row["target"]
        assert row["eckart_young_bound"] == row["eckart_young_r"]  # LoRA's bound is r itself
    gaussian = next(r for r in rows if r["target"] == "gaussian")
    assert gaussian["rel_error"] < gaussian["eckart_young_r"] * 1.01  # and it does reach that floor


def test_pera_and_hira_beat_lora_on_their_own_structure():
    methods = [("lora", "-", "-"), ("hira", "-", "-"), ("pera", "all", "code")]
    rows = {(r["target"], r["method"]): r for r in
            toy.run(["pera-generated", "hadamard"], steps=800, methods=methods, **SMALL)}
    pera_fit = rows[("pera-generated", "pera")]
    assert pera_fit["rel_error"] < 0.9 * pera_fit["eckart_young_r"]  # below every rank-3 matrix
    assert pera_fit["rank_bound"] == 3 + 6 and pera_fit["eckart_young_bound"] < 1e-9
    hira_fit = rows[("hadamard", "hira")]
    assert hira_fit["rel_error"] < 0.05 < hira_fit["eckart_young_r"] and hira_fit["converged"]
    assert rows[("hadamard", "lora")]["rel_error"] >= rows[("hadamard", "lora")]["eckart_young_r"] - 1e-9


def test_an_unconverged_fit_is_flagged_in_the_rows_and_the_table():
    rows = toy.run(["gaussian"], steps=20, methods=[("lora", "-", "-"), ("pera", "all", "paper")], **SMALL)
    assert not any(r["converged"] for r in rows)
    assert all(r["rel_error_90"] > r["rel_error"] for r in rows)
    assert toy.table(rows).count(" …") == 2


def test_main_is_deterministic_and_writes_the_rows(tmp_path, capsys):
    argv = ["--size", "10x8", "--rank", "2", "--steps", "30", "--targets", "gaussian,hadamard", "--seed", "3"]
    toy.main(argv + ["--json", str(tmp_path / "a.json"), "--svg", str(tmp_path / "a.svg")])
    printed = capsys.readouterr().out
    toy.main(argv + ["--json", str(tmp_path / "b.json")])
    assert capsys.readouterr().out == printed
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a == b and len(a) == 2 * len(toy.METHODS)
    assert set(a[0]) >= {"target", "method", "terms", "init", "rank", "params", "rel_error", "eckart_young_r",
                         "eckart_young_bound"}
    assert {(r["method"], r["terms"], r["init"]) for r in a} == set(toy.METHODS)
    params = {(r["method"], r["terms"]): r["params"] for r in a}
    assert params[("lora", "-")] == params[("hira", "-")] == 2 * (10 + 8)
    assert params[("pera", "all")] == 2 * 18 + 3 and params[("pera", "cross")] == 2 * 18 + 1
    toy.main(argv[:-1] + ["4", "--json", str(tmp_path / "c.json")])
    assert json.loads((tmp_path / "c.json").read_text()) != a  # the seed matters
    assert "<svg" in (tmp_path / "a.svg").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--targets", "gaussian,cubic"], "unknown target(s) cubic"),
    (["--size", "64by64"], "--size must be OUTxIN"),
    (["--rank", "1"], "argument --rank: expected an integer >= 2, got '1'"),
])
def test_bad_arguments_are_one_clear_error(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        toy.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow  # 2 × 9 fits of 3,200 steps
def test_eps_sweep_the_terms_grow_with_the_target_scale_while_lora_stays_on_its_floor():
    """The law's direction: at one budget, PERA's polynomial share and its gain below the rank-r floor grow
    about tenfold with each tenfold target scale ε, while max |h| stays where the budget puts it (Adam moves h by
    about lr a step whatever ε is) and LoRA sits on its floor at every ε."""
    rows = toy.eps_sweep((1e-4, 1e-3, 1e-2), "gaussian", 16, 12, 3, steps=2000, lr=1e-3, seed=0, tol=0.01,
                         progress=False)
    lora_rows = [r for r in rows if r["method"] == "lora"]
    pera_rows = [r for r in rows if r["method"] == "pera"]
    assert [r["eps"] for r in pera_rows] == [1e-4, 1e-3, 1e-2]
    for r in lora_rows:
        assert r["eckart_young_r"] - 1e-9 <= r["rel_error"] <= r["eckart_young_r"] + 1e-6, r["eps"]
    shares, gains = [r["poly_share"] for r in pera_rows], [r["gain"] for r in pera_rows]
    assert all(5 < b / a for a, b in zip(shares, shares[1:])), shares
    assert 0 < gains[0] < gains[1] < gains[2], gains
    h_max = [r["h_max"] for r in pera_rows]
    assert max(h_max) < 1.5 * min(h_max) and max(h_max) <= 1e-3 * 2000, h_max
    assert all(r["eckart_young_r"] == pytest.approx(pera_rows[0]["eckart_young_r"], abs=1e-12) for r in rows)
