"""PERA's two initialisations, the gradient of h, and the polynomial share (pera.py).

The docstring of PERALinear says h starts silent because its gradient is quadratic in the factor that
starts at zero (docs/methods.md#pera derives it). Here that sentence is an identity: h's autograd gradient
equals s · (b_i ⊙ b_j)ᵀ G (a_i ⊙ a_j), G = ∂L/∂ΔW, written out in float64, and it is exactly zero at step 0
under both inits.
"""
import math

import pytest
import torch
import torch.nn as nn

import pera
from model import Config, Transformer


def make_base(in_features=24, out_features=20, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(in_features, out_features, dtype=dtype)
    nn.init.normal_(base.bias)
    return base


def randomize(layer, seed=1, std=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (layer.A, layer.B, layer.h):
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


@pytest.mark.parametrize("terms", ["all", "square"])
def test_code_init_is_kaiming_A_zero_B_zero_h(terms):
    layer = pera.PERALinear(make_base(600, 40), rank=4, terms=terms)
    assert layer.init == "code"
    assert not layer.B.any() and not layer.h.any() and not layer.delta_weight().any()
    bound = 1 / math.sqrt(600)  # kaiming_uniform_(a=√5): U(-1/√in, 1/√in), as nn.Linear's own weight
    assert layer.A.abs().max() <= bound and layer.A.abs().max() > 0.95 * bound
    assert layer.A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


@pytest.mark.parametrize("rank", [2, 4, 8])
def test_paper_init_is_zero_A_gaussian_B_zero_h(rank):
    base = make_base(24, 3000)
    layer = pera.PERALinear(base, rank=rank, init="paper")
    assert not layer.A.any() and not layer.h.any() and not layer.delta_weight().any()
    assert layer.B.mean().abs() < 0.05 / rank and layer.B.std().item() == pytest.approx(1 / rank, rel=0.03)
    x = torch.randn(3, 24)
    assert torch.equal(layer(x), base(x))  # ΔW = 0: a fresh adapter changes nothing


def test_unknown_init_is_a_value_error_and_inject_passes_init():
    with pytest.raises(ValueError, match="init must be one of"):
        pera.PERALinear(nn.Linear(4, 4), 2, init="gaussian")
    torch.manual_seed(0)
    model = Transformer(Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2))
    names = pera.inject(model, 4, init="paper")
    layers = [model.get_submodule(n) for n in names]
    assert all(layer.init == "paper" and not layer.A.any() and layer.B.any() for layer in layers)


def h_gradient_by_the_formula(layer, G):
    """∂L/∂h_p = s · (b_i ⊙ b_j)ᵀ G (a_i ⊙ a_j) for term p = (i, j), with G = ∂L/∂ΔW; float64, one term at a time."""
    A, B, s = layer.A.detach(), layer.B.detach(), layer.scaling
    pairs = [(i, j) for i in range(layer.rank) for j in range(i, layer.rank)
             if layer.terms == "all" or (layer.terms == "square") == (i == j)]
    return torch.stack([s * (B[:, i] * B[:, j]) @ G @ (A[i] * A[j]) for i, j in pairs])


def loss_and_G(layer, x, target):
    """L (a squared error through the adapted layer) and G = ∂L/∂ΔW, computed through ΔW as a leaf."""
    loss = ((layer(x) - target) ** 2).sum()
    dW = layer.delta_weight().detach().requires_grad_(True)
    y = layer.base(x) + x @ dW.T  # the same function, with ΔW a leaf of its own
    (G,) = torch.autograd.grad(((y - target) ** 2).sum(), dW)
    return loss, G


@pytest.mark.parametrize("terms, alpha", [("all", None), ("all", 2.0), ("square", 8.0), ("cross", None)])
def test_h_gradient_is_s_times_bb_G_aa(terms, alpha):
    layer = randomize(pera.PERALinear(make_base(dtype=torch.float64), rank=4, alpha=alpha, terms=terms))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 24, generator=g, dtype=torch.float64)
    target = torch.randn(7, 20, generator=g, dtype=torch.float64)
    loss, G = loss_and_G(layer, x, target)
    loss.backward()
    expected = h_gradient_by_the_formula(layer, G)
    assert layer.h.grad.abs().max() > 1e-3  # a real, nonzero gradient
    torch.testing.assert_close(layer.h.grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("init", ["code", "paper"])
def test_h_gradient_is_zero_at_step_0_and_quadratic_in_the_zero_factor(init):
    """At step 0 one factor is zero, so ∂L/∂h = 0 although ∂L/∂ΔW is not; it grows as that factor squared."""
    layer = pera.PERALinear(make_base(dtype=torch.float64), rank=4, init=init)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 24, generator=g, dtype=torch.float64)
    target = torch.randn(7, 20, generator=g, dtype=torch.float64)
    loss, G = loss_and_G(layer, x, target)
    loss.backward()
    assert G.abs().max() > 1 and torch.equal(layer.h.grad, torch.zeros_like(layer.h))
    zero = layer.B if init == "code" else layer.A
    grads = []
    for eps in (1e-3, 2e-3):  # move the zero factor off zero by eps (h stays 0, so G stays the LoRA one)
        with torch.no_grad():
            zero.copy_(eps * torch.ones_like(zero))
        layer.h.grad = None
        loss_and_G(layer, x, target)[0].backward()
        grads.append(layer.h.grad.clone())
    assert grads[0].abs().min() > 0
    ratio = grads[1] / grads[0]
    assert ratio.min() > 3.5 and ratio.max() < 4.5  # doubling the factor multiplies h's gradient by ~4


@pytest.mark.parametrize("kw", [{}, {"alpha": 2.0}, {"terms": "cross"}, {"degree": 3}])
def test_polynomial_share_is_the_norm_ratio_of_delta_weight(kw):
    layer = randomize(pera.PERALinear(make_base(dtype=torch.float64), rank=3, **kw), std=0.7)
    dW = layer.delta_weight()
    lora_part = layer.scaling * layer.B @ layer.A
    expected = ((dW - lora_part).norm() / lora_part.norm()).item()
    assert expected > 0.01
    assert pera.polynomial_share(layer) == pytest.approx(expected, rel=1e-9)
    with torch.no_grad():
        layer.h.zero_()
    assert pera.polynomial_share(layer) == 0.0  # h = 0: PERA is LoRA
    assert pera.polynomial_share(pera.PERALinear(make_base(), rank=3, **kw)) == 0.0  # fresh: B A = 0


@pytest.mark.parametrize("kw", [{}, {"alpha": 8.0}, {"terms": "square"}, {"terms": "cross"}, {"degree": 3}])
def test_polynomial_share_bound_is_above_the_share_and_attained_by_one_entry(kw):
    """pera.polynomial_share_bound: max|h| · Σ_m M^(m−1) · ‖|B||A|‖/‖BA‖ is never below the share, whatever the
    sizes of A, B and h (docs/study.md derives it), and it is exact when each factor has a single nonzero entry."""
    for seed in range(40):
        layer = pera.PERALinear(make_base(dtype=torch.float64, seed=seed), rank=4, **kw)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p, scale in zip((layer.A, layer.B, layer.h), 10 ** (4 * torch.rand(3, generator=g, dtype=torch.float64) - 3)):
                p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        share, bound = pera.polynomial_share(layer), pera.polynomial_share_bound(layer)
        assert share > 0 and bound >= share * (1 - 1e-12), (seed, share, bound)
    one = pera.PERALinear(make_base(dtype=torch.float64), rank=1)  # one square term: h (b ⊙ b)(a ⊙ a)ᵀ
    with torch.no_grad():
        one.A.zero_(), one.B.zero_(), one.h.fill_(-0.3)
        one.A[0, 5], one.B[3, 0] = 0.2, 0.05
    assert pera.polynomial_share_bound(one) == pytest.approx(pera.polynomial_share(one), rel=1e-12)
    assert pera.polynomial_share(one) == pytest.approx(0.3 * 0.2 * 0.05, rel=1e-12)  # |h| · |b| · |a|
    assert pera.polynomial_share_bound(pera.PERALinear(make_base(), rank=3, **kw)) == 0.0  # fresh: B A = 0


@pytest.mark.parametrize("degree", [2, 3, 4])
def test_multinomial_coefficients_make_pera_an_elementwise_polynomial_of_BA(degree):
    """With h fixed at the multinomial coefficients (1 for squares, 2 for pairs at degree 2), the terms are
    (B A)^⊙2 + ... + (B A)^⊙k exactly: ΔW = s Σ_{m=1..k} (B A)^⊙m (docs/methods.md#pera)."""
    torch.manual_seed(0)
    layer = pera.PERALinear(nn.Linear(7, 5, dtype=torch.float64), 3, alpha=6.0, degree=degree,
                            coefficients="multinomial")
    with torch.no_grad():
        layer.A.normal_()
        layer.B.normal_()
    assert not layer.h.requires_grad and layer.A.requires_grad and layer.B.requires_grad
    BA = layer.B @ layer.A
    want = layer.scaling * sum(BA ** m for m in range(1, degree + 1))
    assert torch.allclose(layer.delta_weight(), want, rtol=1e-12, atol=1e-12 * want.abs().max().item())
    if degree == 2:
        assert layer.h.tolist() == [1.0, 2.0, 2.0, 1.0, 2.0, 1.0]  # triu order: (0,0), (0,1), (0,2), (1,1), ...
