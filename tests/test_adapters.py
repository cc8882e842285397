"""The identities the LoRA, HiRA, PERA, DoRA and LoRAN papers state, checked numerically on lora.py, hira.py
(with HiLoRA, its LoRA part), pera.py, dora.py and loran.py.

Each test would fail if the code computed something else: ΔW against the paper's sums written out term
by term, the efficient forward and its gradients against x @ ΔW^T, merged layers against adapted ones,
ranks against the papers' bounds, DoRA against PEFT's computation written out, and the injection into
model.py's Transformer.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import dora
import hira
import lora
import loran
import pera
from model import Config, Transformer

METHODS = {"lora": lora, "hira": hira, "pera": pera, "dora": dora, "loran": loran}
FILE = {**METHODS, "hilora": hira}  # the file of each method in CASES
ADAPTER = {"lora": lora.LoRALinear, "hira": hira.HiRALinear, "pera": pera.PERALinear, "dora": dora.DoRALinear,
           "loran": loran.LoRANLinear, "hilora": hira.HiLoRALinear}
TRAINABLE = {"lora": {"A", "B"}, "hira": {"A", "B"}, "pera": {"A", "B", "h"}, "dora": {"A", "B", "m"},
             "loran": {"A", "B"}, "hilora": {"A", "B", "lora_A", "lora_B"}}
# (method, extra arguments): every variant the properties below must hold for
CASES = [("lora", {}), ("lora", {"alpha": 8}), ("hira", {}), ("pera", {}), ("pera", {"alpha": 2}),
         ("pera", {"terms": "square"}), ("pera", {"terms": "cross"}), ("pera", {"degree": 3}),
         ("pera", {"degree": 3, "terms": "cross"}), ("dora", {}), ("dora", {"alpha": 8}), ("loran", {}),
         ("loran", {"alpha": 2, "amplitude": 5e-2, "omega": 30.0}), ("hilora", {"lora_rank": 2}),
         ("hilora", {"lora_rank": 3, "alpha": 6})]
CASE_IDS = [m + "".join(f"-{k}={v}" for k, v in kw.items()) for m, kw in CASES]


def make_base(in_features=24, out_features=20, bias=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
    if bias:  # nn.Linear's bias is small; make it matter
        nn.init.normal_(base.bias)
    return base


def make(method, base, rank=4, **kw):
    return ADAPTER[method](base, rank, **kw)


def randomize(adapter, seed=1, std=0.5):
    """Random A, B (and h), so that every term of ΔW is nonzero; DoRA's magnitude m moved off ‖W0‖_row by ~std."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name == "m":  # a length: scale it, keep it positive
                p.mul_((1 + std * torch.randn(p.shape, generator=g, dtype=p.dtype)).abs())
            elif p.requires_grad:
                p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return adapter


def rel_err(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def keep(term, terms):
    """Whether an index tuple is kept: "square" keeps pure powers (all indices equal), "cross" the rest."""
    return terms == "all" or (terms == "square") == (len(set(term)) == 1)


def paper_delta(adapter, kw, A=None, B=None, h=None, m=None, lora_A=None, lora_B=None):
    """ΔW as the papers write it, one rank-one term at a time (float64 in the tests that need it).

    kw: the arguments the adapter was built with; alpha, terms, degree, λ and ω come from them (or the
    papers' defaults), never from the adapter's attributes, so an argument the constructor drops is caught.

    LoRA: s B A (Eq. 8). HiRA: W0 ⊙ (B A) (HiRA Eq. 6). PERA: s (B A + Σ_{i≤j} h_ij (b_i ⊙ b_j)(a_i ⊙ a_j)^T)
    (Eq. 9; Eq. 10 keeps i = j, Eq. 11 i < j), then for degree 3 the triples i ≤ j ≤ l, h in that order.
    DoRA: m ⊙ (W0 + s B A) / ‖W0 + s B A‖_row − W0 (DoRA Eq. 5). LoRAN: s · Sinter(B A), entry by entry.
    HiLoRA: W0 ⊙ Σ_k b_k a_kᵀ + s Σ_k b'_k a'_kᵀ with b'_k, a'_k of lora_B, lora_A and s = alpha / r2 (HiRA §6.6).
    """
    A = adapter.A if A is None else A
    B = adapter.B if B is None else B
    if isinstance(adapter, hira.HiRALinear) and kw.get("lora_rank"):
        lora_A = adapter.lora_A if lora_A is None else lora_A
        lora_B, r2 = adapter.lora_B if lora_B is None else lora_B, kw["lora_rank"]
        return (adapter.base.weight * sum(torch.outer(B[:, k], A[k]) for k in range(A.shape[0]))
                + kw.get("alpha", r2) / r2 * sum(torch.outer(lora_B[:, k], lora_A[k]) for k in range(r2)))
    if isinstance(adapter, hira.HiRALinear):
        return adapter.base.weight * (B @ A)
    r = A.shape[0]
    s = kw.get("alpha", r) / r  # alpha defaults to r
    terms, degree = kw.get("terms", "all"), kw.get("degree", 2)
    if isinstance(adapter, dora.DoRALinear):
        # DoRA Eq. 5: W' = m ⊙ V / ‖V‖_row with V = W0 + s B A; the norm is a constant for autograd (§4.3)
        m = adapter.m if m is None else m
        V = adapter.base.weight + s * B @ A
        norm = torch.sqrt((V * V).sum(1, keepdim=True)).detach()
        return m.unsqueeze(1) * V / norm - adapter.base.weight
    if isinstance(adapter, loran.LoRANLinear):
        # LoRAN: s · Sinter(B A), Sinter(x) = x + λ x sin(ω x) on every entry
        BA = sum(torch.outer(B[:, k], A[k]) for k in range(A.shape[0]))
        lam, omega = kw.get("amplitude", 5e-4), kw.get("omega", 1e3)  # the authors' defaults
        return s * torch.stack([torch.stack([v + lam * v * torch.sin(omega * v) for v in row]) for row in BA])
    dW = B @ A
    if isinstance(adapter, pera.PERALinear):
        h = adapter.h if h is None else h
        k = 0
        for i in range(r):
            for j in range(i, r):
                if keep((i, j), terms):
                    dW = dW + h[k] * torch.outer(B[:, i] * B[:, j], A[i] * A[j])
                    k += 1
        if degree == 3:
            for i in range(r):
                for j in range(i, r):
                    for l in range(j, r):
                        if keep((i, j, l), terms):
                            dW = dW + h[k] * torch.outer(B[:, i] * B[:, j] * B[:, l], A[i] * A[j] * A[l])
                            k += 1
        assert degree <= 3 and k == len(h), "the reference covers degrees 2 and 3"
    return s * dW


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------------
# A fresh adapter is the base layer; only A, B (h) train; the base never moves.

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("method,kw", CASES, ids=CASE_IDS)
def test_fresh_adapter_leaves_output_unchanged(method, kw, bias):
    base = make_base(bias=bias)
    adapter = make(method, base, **kw)
    x = torch.randn(2, 5, 24)
    assert torch.equal(adapter(x), base(x))
    assert torch.equal(adapter.delta_weight(), torch.zeros_like(base.weight))


@pytest.mark.parametrize("method,kw", CASES, ids=CASE_IDS)
def test_only_adapter_parameters_train_and_base_is_untouched(method, kw):
    adapter = make(method, make_base(), **kw)
    trainable = {name for name, p in adapter.named_parameters() if p.requires_grad}
    assert trainable == TRAINABLE[method]
    before = snapshot(adapter)
    opt = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    x, target = torch.randn(16, 24), torch.randn(16, 20)
    for _ in range(3):  # B (and m) move at step 1, A and h (whose gradients carry a factor B) from step 2
        opt.zero_grad()
        F.mse_loss(adapter(x), target).backward()
        opt.step()
    after = adapter.state_dict()
    for name in ("base.weight", "base.bias"):
        assert torch.equal(after[name], before[name])
    for name in trainable:
        assert not torch.equal(after[name], before[name]), f"{name} did not train"


@pytest.mark.parametrize("method,kw,extra", [
    ("lora", {}, 0), ("hira", {}, 0),
    ("pera", {}, 4 * 5 // 2), ("pera", {"terms": "square"}, 4), ("pera", {"terms": "cross"}, 4 * 3 // 2),
    ("pera", {"degree": 3}, 10 + 20), ("pera", {"degree": 3, "terms": "square"}, 4 + 4),
    ("pera", {"degree": 3, "terms": "cross"}, 6 + 16),
    ("dora", {}, 20), ("loran", {}, 0),  # DoRA: one magnitude per output row
])
def test_trainable_parameter_count(method, kw, extra):
    adapter = make(method, make_base(24, 20), rank=4, **kw)
    count = sum(p.numel() for p in adapter.parameters() if p.requires_grad)
    assert count == 4 * (24 + 20) + extra
    if method == "pera":
        assert len(adapter.h) == extra


def unscaled_delta(method, adapter, s):
    """ΔW written with an explicit scaling s (no attribute of the adapter read): what each method scales."""
    W0, A, B, BA = adapter.base.weight, adapter.A, adapter.B, adapter.B @ adapter.A
    if method == "hira":  # no alpha at all: W0 ⊙ (B A)
        return W0 * BA
    if method == "pera":  # s · (B A + Σ_{i≤j} h_ij (b_i ⊙ b_j)(a_i ⊙ a_j)^T), pairs in triu order
        i, j = torch.triu_indices(A.shape[0], A.shape[0])
        return s * (BA + (B[:, i] * B[:, j] * adapter.h) @ (A[i] * A[j]))
    if method == "dora":  # the direction's update s·B A inside m ⊙ (W0 + s B A) / ‖W0 + s B A‖_row
        V = W0 + s * BA
        return adapter.m[:, None] * V / torch.linalg.norm(V, dim=1, keepdim=True) - W0
    if method == "loran":  # s · Sinter(B A)
        return s * (BA + adapter.amplitude * BA * torch.sin(adapter.omega * BA))
    return s * BA


@pytest.mark.parametrize("method", METHODS)
def test_alpha_defaults_to_rank(method):
    """alpha = r by default, so the scaling is 1 (the authors' code applies none): ΔW = B A for LoRA, PERA with
    h = 0 and LoRAN with amplitude 0; PERA's square and cross terms and DoRA's direction unscaled too. An
    alpha given at rank 4 scales by alpha / 4. Checked on ΔW and on the forward, with A, B (h, m) nonzero."""
    x = torch.randn(3, 24, dtype=torch.float64)
    for kw, s in [({}, 1.0), ({"alpha": 8}, 2.0)] if method != "hira" else [({}, 1.0)]:
        adapter = randomize(make(method, make_base(dtype=torch.float64), rank=4, **kw)).eval()
        expected = unscaled_delta(method, adapter, s)
        with torch.no_grad():
            assert rel_err(adapter.delta_weight(), expected) < 1e-13, kw
            assert rel_err(adapter(x), adapter.base(x) + x @ expected.T) < 1e-13, kw
        if method in ("pera", "loran"):  # h = 0 and amplitude 0: exactly LoRA's s · B A
            with torch.no_grad():
                adapter.h.zero_() if method == "pera" else setattr(adapter, "amplitude", 0.0)
                assert rel_err(adapter.delta_weight(), s * adapter.B @ adapter.A) < 1e-13, kw


def test_pera_pairs_are_triu_indices_and_not_saved():
    adapter = make("pera", make_base(), rank=5)
    assert torch.equal(adapter.idx, torch.triu_indices(5, 5))
    assert torch.equal(make("pera", make_base(), rank=5, terms="cross").idx, torch.triu_indices(5, 5, offset=1))
    assert torch.equal(make("pera", make_base(), rank=5, terms="square").idx, torch.arange(5).expand(2, 5))
    assert set(adapter.state_dict()) == {"A", "B", "h", "base.weight", "base.bias"}
    fresh = make("pera", make_base(), rank=5)
    fresh.load_state_dict(randomize(adapter).state_dict(), strict=True)
    x = torch.randn(3, 24)
    assert torch.equal(fresh(x), adapter(x))


# ---------------------------------------------------------------------------------------------------
# The special cases the papers name: PERA with h = 0 is LoRA; HiRA with W0 = ones is LoRA.

@pytest.mark.parametrize("alpha", [None, 8])
def test_pera_with_h_zero_is_lora(alpha):
    base = make_base(dtype=torch.float64)
    lo = randomize(make("lora", base, alpha=alpha))
    pe = make("pera", base, alpha=alpha)
    with torch.no_grad():
        pe.A.copy_(lo.A)
        pe.B.copy_(lo.B)
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    # Equal up to summation order only: BLAS blocks a rank-r and a rank-(r + P) product differently.
    assert rel_err(pe(x), lo(x)) < 1e-14
    assert rel_err(pe.delta_weight(), lo.delta_weight()) < 1e-14


@pytest.mark.parametrize("bias", [True, False])
def test_hira_with_ones_is_lora(bias):
    base = make_base(bias=bias)
    with torch.no_grad():
        base.weight.fill_(1.0)
    hi = randomize(make("hira", base))
    lo = make("lora", base)  # s = 1
    with torch.no_grad():
        lo.A.copy_(hi.A)
        lo.B.copy_(hi.B)
    assert torch.equal(hi.delta_weight(), lo.delta_weight())
    x = torch.randn(2, 5, 24)
    assert rel_err(hi(x), lo(x)) < 1e-5


# ---------------------------------------------------------------------------------------------------
# ΔW is the paper's sum; the efficient forward and its gradients are those of x @ ΔW^T.

@pytest.mark.parametrize("method,kw", CASES, ids=CASE_IDS)
def test_delta_weight_is_the_papers_sum(method, kw):
    adapter = randomize(make(method, make_base(dtype=torch.float64), **kw))
    assert adapter.A.dtype == torch.float64
    with torch.no_grad():
        assert rel_err(adapter.delta_weight(), paper_delta(adapter, kw)) < 1e-13


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("method,kw", CASES, ids=CASE_IDS)
def test_forward_and_gradients_equal_those_of_x_times_delta_weight(method, kw, train):
    adapter = randomize(make(method, make_base(6, 5, dtype=torch.float64), rank=3, **kw)).train(train)
    names = [n for n, p in adapter.named_parameters() if p.requires_grad]
    params = [adapter.get_parameter(n) for n in names]
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)

    def dense(x, *p):
        return adapter.base(x) + x @ paper_delta(adapter, kw, **dict(zip(names, p))).T

    def efficient(x, *p):
        return torch.func.functional_call(adapter, dict(zip(names, p)), (x,))

    y, y_ref = efficient(x, *params), dense(x, *params)
    assert rel_err(y, y_ref) < 1e-13
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), [x, *params])
    grads_ref = torch.autograd.grad((y_ref * g).sum(), [x, *params])
    for name, a, b in zip(["x", *names], grads, grads_ref):
        assert rel_err(a, b) < 1e-12, name
    if method != "dora":  # DoRA's norm is detached by design, so its gradient is not the numerical derivative
        assert torch.autograd.gradcheck(efficient, (x, *params))


# ---------------------------------------------------------------------------------------------------
# Merging: a new plain nn.Linear computing what the adapter computes; the adapter is left alone.

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("method,kw", CASES, ids=CASE_IDS)
def test_merge_equals_adapter_and_leaves_it_untouched(method, kw, bias):
    adapter = randomize(make(method, make_base(bias=bias), **kw)).eval()
    x = torch.randn(2, 5, 24)
    y = adapter(x)
    before = snapshot(adapter)
    merged = adapter.merged()
    assert type(merged) is nn.Linear
    assert merged.weight.dtype == adapter.base.weight.dtype and merged.weight.device == adapter.base.weight.device
    assert (merged.bias is None) == (not bias)
    if bias:
        assert torch.equal(merged.bias, adapter.base.bias)
    assert rel_err(merged(x), y) <= 1e-5
    assert all(torch.equal(v, before[k]) for k, v in adapter.state_dict().items())
    assert torch.equal(adapter(x), y)


def test_hira_fused_forward_is_the_merged_layer():
    adapter = randomize(make("hira", make_base())).eval()
    x = torch.randn(2, 5, 24)
    assert torch.equal(adapter(x), adapter.merged()(x))
    assert torch.equal(adapter.train()(x), adapter.merged()(x))  # p = 0: fused in training too


@pytest.mark.parametrize("method,kw", CASES, ids=CASE_IDS)
def test_bf16_base_float32_adapter_and_merge(method, kw):
    base = make_base(dtype=torch.bfloat16)
    adapter = randomize(make(method, base, **kw), std=0.1).eval()
    assert adapter.A.dtype == torch.float32 and base.weight.dtype == torch.bfloat16
    merged = adapter.merged()
    assert merged.weight.dtype == torch.bfloat16
    # Summed in float32 and rounded once: a bf16 sum would round ΔW first and differ in many entries.
    assert torch.equal(merged.weight, (base.weight.float() + adapter.delta_weight()).bfloat16())
    x = torch.randn(2, 5, 24, dtype=torch.bfloat16)
    exact = F.linear(x.double(), base.weight.double() + adapter.delta_weight().double(), base.bias.double())
    y = adapter(x)
    assert y.dtype == torch.bfloat16
    assert rel_err(y.double(), exact) < 2e-2 and rel_err(merged(x).double(), exact) < 2e-2


@pytest.mark.parametrize("bf16", ["weights", "autocast"])
def test_hira_keeps_a_young_update_visible_in_bf16(bf16):
    """|B A| ~ 1e-4 is below bf16's resolution of W0 (2^-9): fused into one rounded weight it vanishes exactly.

    Kept as its own matmul, the update survives up to the rounding of the bf16 output that every adapter
    has, so over many tokens it still points where the exact update points.
    """
    base = make_base(256, 256, bias=False, dtype=torch.bfloat16 if bf16 == "weights" else torch.float32)
    adapter = randomize(make("hira", base), std=0.01).eval()  # entries of B A around 1e-4
    x = torch.randn(4096, 256, dtype=base.weight.dtype)
    expected = x.double() @ adapter.delta_weight().double().T
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 == "autocast"):
        update = adapter(x).double() - base(x).double()
    cosine = (update * expected).sum() / (update.norm() * expected.norm())
    assert cosine > 0.2  # the fused bf16 form gives an update of exactly zero here


@pytest.mark.parametrize("method", METHODS)
def test_autocast_bf16_forward_and_backward(method):
    adapter = randomize(make(method, make_base()), std=0.1)
    x = torch.randn(2, 5, 24)
    y32 = adapter(x)
    grads32 = torch.autograd.grad(y32.square().sum(), [adapter.A, adapter.B])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = adapter(x)
    assert y.dtype == torch.bfloat16 and rel_err(y.float(), y32) < 2e-2
    y.float().square().sum().backward()
    assert adapter.A.grad.dtype == torch.float32
    # the gradients are float32's up to bf16 rounding (measured 0.3-0.6 %); the update's share of the output is
    # small (2 % for HiRA), so a wrongly scaled or signed update under autocast shows here, not in y
    for name, grad32 in zip("AB", grads32):
        assert rel_err(getattr(adapter, name).grad, grad32) < 2e-2, name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert adapter.delta_weight().dtype == torch.float32


# ---------------------------------------------------------------------------------------------------
# Rank: LoRA ≤ r; HiRA above r (≤ rank(W0) · r); PERA exactly r + P for random factors.

def rank_of(adapter):
    with torch.no_grad():
        return torch.linalg.matrix_rank(adapter.delta_weight()).item()


def test_lora_rank_is_r():
    for r in (1, 4, 8):
        assert rank_of(randomize(make("lora", make_base(64, 48, dtype=torch.float64), rank=r))) == r


def test_hira_rank_exceeds_r_and_is_bounded_by_rank_w0_times_r():
    full = randomize(make("hira", make_base(64, 64, dtype=torch.float64), rank=4))
    assert rank_of(full) == 64  # far above r = 4 for a random (full-rank) W0
    base = make_base(64, 64, dtype=torch.float64)
    with torch.no_grad():
        base.weight.copy_(torch.randn(64, 2, dtype=torch.float64) @ torch.randn(2, 64, dtype=torch.float64))
    assert rank_of(randomize(make("hira", base, rank=3))) == 2 * 3  # the bound rank(W0) · r, attained


@pytest.mark.parametrize("r", [4, 8])
@pytest.mark.parametrize("terms,P", [("all", lambda r: r * (r + 1) // 2), ("square", lambda r: r),
                                     ("cross", lambda r: r * (r - 1) // 2)])
def test_pera_rank_is_r_plus_P(r, terms, P):
    adapter = randomize(make("pera", make_base(64, 72, dtype=torch.float64), rank=r, terms=terms))
    assert rank_of(adapter) == r + P(r)
    with torch.no_grad():
        adapter.h.zero_()
    assert rank_of(adapter) == r  # h = 0: LoRA


def test_pera_degree_3_rank():
    adapter = randomize(make("pera", make_base(64, 72, dtype=torch.float64), rank=4, degree=3))
    assert rank_of(adapter) == 4 + 10 + 20


# ---------------------------------------------------------------------------------------------------
# Dropout: the adapter sees dropout(x), the base sees x; eval mode turns it off.

@pytest.mark.parametrize("method", [m for m in METHODS if m != "dora"])  # DoRA follows PEFT's rule: below
def test_dropout_acts_on_the_adapter_input_only(method):
    adapter = randomize(make(method, make_base(), dropout=0.5)).train()
    x = torch.randn(4, 24)
    dW = adapter.delta_weight().detach()
    torch.manual_seed(7)
    y = adapter(x)
    torch.manual_seed(7)
    expected = adapter.base(x) + F.dropout(x, 0.5, training=True) @ dW.T
    assert rel_err(y, expected) < 1e-5
    assert rel_err(y, adapter.base(x) + x @ dW.T) > 1e-2  # dropout really was applied
    with torch.no_grad():
        adapter.B.zero_()
    assert torch.equal(adapter(x), adapter.base(x))  # with no update, the output is the base's on undropped x

    adapter = randomize(make(method, make_base(), dropout=0.5)).eval()
    assert rel_err(adapter(x), adapter.base(x) + x @ adapter.delta_weight().detach().T) < 1e-5
    assert torch.equal(adapter(x), adapter(x))


# ---------------------------------------------------------------------------------------------------
# Cost: LoRA, PERA and DoRA never form an (out, in) matrix; HiRA and LoRAN do, and fuse base and update in
# one matmul.

class OpRecorder(TorchDispatchMode):
    """Records every aten op run (forward and backward): its input shapes and its output tensors' shapes."""

    def __init__(self, weight):
        super().__init__()
        self.weight_storage = weight.untyped_storage().data_ptr()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = lambda v: [t for t in (v if isinstance(v, (tuple, list)) else [v]) if isinstance(t, torch.Tensor)]
        # Views of the frozen W0 itself (the base matmul uses W0^T) are not new (out, in) matrices.
        new = [t for t in flat(out) if t.untyped_storage().data_ptr() != self.weight_storage]
        self.ops.append((func, [tuple(t.shape) for t in flat(args)], [tuple(t.shape) for t in new]))
        return out


def record_training_step(adapter, tokens=7):
    x = torch.randn(tokens, adapter.base.in_features, requires_grad=True)  # an inner layer: x needs its gradient
    with OpRecorder(adapter.base.weight) as rec:
        adapter(x).sum().backward()
    return rec.ops


def builds_out_by_in(ops, out_features=48, in_features=40):
    return any(s in [(out_features, in_features), (in_features, out_features)] for _, _, outs in ops for s in outs)


ACTIVATION_SIDE = [(c, i) for c, i in zip(CASES, CASE_IDS) if c[0] in ("lora", "pera", "dora")]


@pytest.mark.parametrize("method,kw", [c for c, _ in ACTIVATION_SIDE], ids=[i for _, i in ACTIVATION_SIDE])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_lora_pera_and_dora_never_build_an_out_by_in_matrix(method, kw, dropout):
    ops = record_training_step(randomize(make(method, make_base(40, 48), rank=3, dropout=dropout, **kw)))
    assert not builds_out_by_in(ops)
    assert any((7, 48) in outs for _, _, outs in ops)  # the recorder does see the layer's output


@pytest.mark.parametrize("method", ["hira", "loran"])
def test_hira_and_loran_build_out_by_in_and_fuse_the_base_matmul(method):
    def token_matmuls(adapter):
        ops = record_training_step(adapter)
        return sum(1 for f, ins, _ in ops if f in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
                   and any(7 in s for s in ins))

    fused = randomize(make(method, make_base(40, 48), rank=3))
    assert builds_out_by_in(record_training_step(fused))
    assert token_matmuls(fused) == 1 + 2  # one forward; input and weight gradients backward
    two = randomize(make(method, make_base(40, 48), rank=3, dropout=0.1))
    assert token_matmuls(two) == 2 + 3  # base and update forward; two input gradients and one weight gradient


def token_matmuls_forward(adapter, x):
    """The matmuls one forward runs on the tokens (an input shape holds their count), by aten op."""
    with OpRecorder(adapter.base.weight) as rec:
        adapter(x)
    tokens = x.reshape(-1, x.shape[-1]).shape[0]
    return [f for f, ins, _ in rec.ops if f in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default,
                                                torch.ops.aten.addmm_.default) and any(tokens in s for s in ins)]


FUSED_CASES = [(c, i) for c, i in zip(CASES, CASE_IDS) if c[0] in ("hira", "loran", "hilora")]


@pytest.mark.parametrize("method,kw", [c for c, _ in FUSED_CASES], ids=[i for _, i in FUSED_CASES])
def test_fused_forward_is_the_plain_one(method, kw):
    """HiRA's (HiLoRA's) and LoRAN's fused forward, x @ (W0 + ΔW)^T in one matmul, against their plain one,
    base(x) + x' @ ΔW^T.

    The plain form runs whenever dropout is active: a dropout of p = 0 in training reaches it with x' = x, so
    both paths run in float64 on the same numbers, and outputs and gradients agree to rounding.
    """
    adapter = randomize(make(method, make_base(dtype=torch.float64), dropout=0.1, **kw))
    adapter.dropout.p = 0.0  # still an active nn.Dropout in training: the plain path, dropping nothing
    x = torch.randn(2, 5, 24, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 5, 20, dtype=torch.float64)

    names = [n for n, p in adapter.named_parameters() if p.requires_grad]

    def run(train):
        y = adapter.train(train)(x)
        return [y, *torch.autograd.grad((y * g).sum(), [x, *(adapter.get_parameter(n) for n in names)])]

    fused, plain = run(False), run(True)
    assert len(token_matmuls_forward(adapter.eval(), x)) == 1  # base and update in one matmul
    assert len(token_matmuls_forward(adapter.train(), x)) == 2  # base(x) and x' @ ΔW^T
    for name, a, b in zip(["y", "x", *names], fused, plain):
        assert rel_err(a, b) < 1e-14, name


@pytest.mark.parametrize("bias", [True, False])
def test_dora_fast_forward_is_the_plain_one(bias):
    """DoRA's float32/float64 forward (LoRA's product added into base(x) in place, g ⊙ u + (1 − g) ⊙ bias with
    g = m / n) against its plain one, u + d ⊙ (u − bias) with d = m / n − 1, which runs under autocast.

    Autocast leaves float64 tensors alone, so under it the plain path runs in float64 too, on the same numbers.
    """
    adapter = randomize(make("dora", make_base(bias=bias, dtype=torch.float64), alpha=8)).eval()
    x = torch.randn(2, 5, 24, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 5, 20, dtype=torch.float64)

    def run(autocast):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = adapter(x)
            ops = token_matmuls_forward(adapter, x)
        assert y.dtype == torch.float64
        return ops, [y, *torch.autograd.grad((y * g).sum(), [x, adapter.A, adapter.B, adapter.m])]

    (fast_ops, fast), (plain_ops, plain) = run(False), run(True)
    assert torch.ops.aten.addmm_.default in fast_ops and torch.ops.aten.addmm_.default not in plain_ops
    for name, a, b in zip(["y", "x", "A", "B", "m"], fast, plain):
        assert rel_err(a, b) < 1e-14, name


# ---------------------------------------------------------------------------------------------------
# Arguments are checked with one clear error.

@pytest.mark.parametrize("build,error,match", [
    (lambda: lora.LoRALinear(nn.Conv1d(4, 4, 1), 4), TypeError, "nn.Linear"),
    (lambda: hira.HiRALinear(nn.Conv1d(4, 4, 1), 4), TypeError, "nn.Linear"),
    (lambda: pera.PERALinear(nn.Conv1d(4, 4, 1), 4), TypeError, "nn.Linear"),
    (lambda: lora.LoRALinear(nn.Linear(4, 4), 0), ValueError, "rank"),
    (lambda: hira.HiRALinear(nn.Linear(4, 4), 0), ValueError, "rank"),
    (lambda: pera.PERALinear(nn.Linear(4, 4), 0), ValueError, "rank"),
    (lambda: lora.LoRALinear(nn.Linear(4, 4), 2, dropout=1.0), ValueError, "dropout"),
    (lambda: pera.PERALinear(nn.Linear(4, 4), 2, terms="cubic"), ValueError, "terms"),
    (lambda: pera.PERALinear(nn.Linear(4, 4), 1, terms="cross"), ValueError, "cross"),
    (lambda: pera.PERALinear(nn.Linear(4, 4), 2, degree=1), ValueError, "degree"),
    (lambda: hira.HiLoRALinear(nn.Linear(4, 4), 2, lora_rank=0, alpha=4), ValueError, "lora_rank 0"),  # alpha is
    (lambda: hira.HiLoRALinear(nn.Linear(4, 4), 0, lora_rank=0), ValueError, "rank"),  # the LoRA part's
    (lambda: hira.HiLoRALinear(nn.Linear(4, 4), 2, lora_rank=-1), ValueError, "lora_rank"),
    (lambda: hira.HiLoRALinear(nn.Linear(4, 4), 2), TypeError, "lora_rank"),
    (lambda: dora.DoRALinear(nn.Conv1d(4, 4, 1), 4), TypeError, "nn.Linear"),
    (lambda: dora.DoRALinear(nn.Linear(4, 4), 0), ValueError, "rank"),
    (lambda: dora.DoRALinear(nn.Linear(4, 4), 2, dropout=-0.1), ValueError, "dropout"),
    (lambda: loran.LoRANLinear(nn.Conv1d(4, 4, 1), 4), TypeError, "nn.Linear"),
    (lambda: loran.LoRANLinear(nn.Linear(4, 4), 0), ValueError, "rank"),
    (lambda: loran.LoRANLinear(nn.Linear(4, 4), 2, omega=float("inf")), ValueError, "omega"),
])
def test_bad_arguments_raise(build, error, match):
    with pytest.raises(error, match=match):
        build()


# ---------------------------------------------------------------------------------------------------
# Injection into model.py's Transformer, training one step, merging back.

def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
    return Transformer(config)


def tokens(seed=0):
    return torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", METHODS)
def test_inject_wraps_the_targets_in_module_order(method):
    model = tiny_model()
    names = METHODS[method].inject(model, 4)
    parts = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj")
    expected = [f"model.layers.{i}.{part}" for i in range(2) for part in parts]
    assert names == expected
    assert all(isinstance(model.get_submodule(n), ADAPTER[method]) for n in names)
    assert type(model.get_submodule("model.layers.0.self_attn.o_proj")) is nn.Linear
    assert METHODS[method].inject(tiny_model(), 2, targets="lm_head") == ["lm_head"]  # a full name matches too


@pytest.mark.parametrize("method", METHODS)
def test_inject_then_training_changes_only_adapter_tensors(method):
    model = tiny_model()
    METHODS[method].inject(model, 4, dropout=0.05)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.rsplit(".", 1)[1] in TRAINABLE[method] for n in trainable)
    before = snapshot(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    idx = tokens()
    for _ in range(2):  # B and m move at step 1; A and h, whose gradients carry a factor B, at step 2
        opt.zero_grad()
        F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()).backward()
        opt.step()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]) != (name in trainable), name


@pytest.mark.parametrize("method", METHODS)
def test_merged_model_gives_the_adapted_logits(method):
    model = tiny_model().eval()
    names = METHODS[method].inject(model, 4)
    for i, name in enumerate(names):
        randomize(model.get_submodule(name), seed=i, std=0.1)
    idx = tokens()
    with torch.no_grad():
        adapted = model(idx)
        assert METHODS[method].merge(model) is model
        merged = model(idx)
    assert all(type(model.get_submodule(n)) is nn.Linear for n in names)
    assert not any(isinstance(m, ADAPTER[method]) for m in model.modules())
    assert rel_err(merged, adapted) <= 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_inject_errors_leave_the_model_unchanged(method):
    model = tiny_model()
    before = [(n, type(m)) for n, m in model.named_modules()]
    with pytest.raises(ValueError, match="qproj"):
        METHODS[method].inject(model, 4, targets=("q_proj", "qproj"))
    with pytest.raises(ValueError, match="rank"):
        METHODS[method].inject(model, 0)
    assert [(n, type(m)) for n, m in model.named_modules()] == before
    assert all(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------------------------------------------
# The adapter files copied into someone else's code: other construction paths, other modules, other calls.

class Toy(nn.Module):
    """A plain PyTorch model with the papers' layer names (and an o_proj that is not a target)."""

    def __init__(self, d=12, f=20):
        super().__init__()
        self.q_proj, self.o_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.up_proj, self.down_proj = nn.Linear(d, f), nn.Linear(f, d)

    def forward(self, x):
        return self.down_proj(torch.tanh(self.up_proj(self.o_proj(self.q_proj(x)))))


@pytest.mark.parametrize("rank", [4, 16])
@pytest.mark.parametrize("method,kw", CASES, ids=CASE_IDS)
def test_meta_device_then_to_empty_and_load_state_dict_gives_the_same_model(method, kw, rank):
    """How large models are built: no memory until to_empty(), then every tensor comes from a state_dict."""
    torch.manual_seed(0)
    model = Toy()
    names = FILE[method].inject(model, rank, targets=("q_proj", "up_proj", "down_proj"), adapter=ADAPTER[method], **kw)
    for i, name in enumerate(names):
        randomize(model.get_submodule(name), seed=i, std=0.3)
    with torch.device("meta"):
        built = Toy()
        FILE[method].inject(built, rank, targets=("q_proj", "up_proj", "down_proj"), adapter=ADAPTER[method], **kw)
    built.to_empty(device="cpu")
    with torch.no_grad():  # to_empty leaves memory uninitialised: make that garbage deterministic
        for t in [*built.parameters(), *built.buffers()]:
            t.fill_(7)
    built.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(3, 12)
    with torch.no_grad():
        assert torch.equal(built(x), model(x))
    if method == "pera":
        assert torch.equal(built.q_proj.idx, model.q_proj.idx)


@pytest.mark.parametrize("second", METHODS)
@pytest.mark.parametrize("first", METHODS)
def test_a_second_inject_leaves_the_first_adapters_trainable(first, second):
    model = tiny_model()
    attention = METHODS[first].inject(model, 8, targets=("q_proj", "k_proj", "v_proj"))
    mlp = METHODS[second].inject(model, 2, targets=("up_proj", "down_proj"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"{name}.{p}" for names, method in ((attention, first), (mlp, second)) for name in names
                for p in TRAINABLE[method]}
    assert trainable == expected
    before = snapshot(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    idx = tokens()
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()).backward()
        opt.step()
    moved = {n for n, v in model.state_dict().items() if not torch.equal(v, before[n])}
    assert moved == expected


class Conv1D(nn.Module):
    """GPT-2's Conv1D: y = x W + b with W stored as (in, out), the transpose of nn.Linear's."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(nx, nf)), nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


@pytest.mark.parametrize("method", METHODS)
def test_inject_names_a_layer_it_refuses_and_changes_nothing(method):
    cls = ADAPTER[method].__name__
    model = tiny_model()
    METHODS[method].inject(model, 4, targets="q_proj")
    gpt2 = nn.ModuleDict({"c_attn": Conv1D(36, 12), "c_proj": nn.Linear(12, 12)})
    cases = [
        (model, "q_proj", rf"model\.layers\.0\.self_attn\.q_proj is already adapted \(a {cls}\); adapters do not nest"),
        (model, "base", rf"model\.layers\.0\.self_attn\.q_proj\.base is part of the adapter at "
                        rf"model\.layers\.0\.self_attn\.q_proj \(a {cls}\)"),
        (model, "mlp", r"model\.layers\.0\.mlp is a MLP, not an nn\.Linear"),
        (gpt2, ("c_attn", "c_proj"), rf"c_attn is a Conv1D, not an nn\.Linear: {cls} adapts y = x W0\^T \+ b"),
        (gpt2, (), "targets must name one or more layers"),
        (gpt2, "", "targets must name one or more layers"),
        (gpt2, ("c_proj", ""), "targets must name one or more layers"),
    ]
    for m, targets, message in cases:
        before = [(n, type(x), p.requires_grad) for n, x in m.named_modules() for p in x.parameters(recurse=False)]
        with pytest.raises(ValueError, match=message):
            METHODS[method].inject(m, 4, targets=targets)
        assert [(n, type(x), p.requires_grad) for n, x in m.named_modules() for p in x.parameters(recurse=False)] == before
    with pytest.raises(ValueError, match="rank must be a positive integer, got True"):
        METHODS[method].inject(gpt2, True, targets="c_proj")
    with pytest.raises(ValueError, match="rank must be a positive integer, got True"):
        ADAPTER[method](nn.Linear(4, 4), True)


@pytest.mark.parametrize("method", METHODS)
def test_code_that_reads_layer_weight_computes_the_adapted_layer(method, monkeypatch):
    """nn.MultiheadAttention hands out_proj.weight to its functional form, and nn.TransformerEncoderLayer's
    eval fast path reads linear1/linear2.weight: wrapped, they must give what the merged layers give."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=24, dropout=0.0, batch_first=True)
    names = METHODS[method].inject(layer, 4, targets=("out_proj", "linear1", "linear2"))
    assert names == ["self_attn.out_proj", "linear1", "linear2"]
    for i, name in enumerate(names):
        randomize(layer.get_submodule(name), seed=i, std=0.2)
    merged = METHODS[method].merge(copy.deepcopy(layer))
    x = torch.randn(2, 5, 16)
    fast_path = []
    original = torch._transformer_encoder_layer_fwd
    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", lambda *a: fast_path.append(1) or original(*a))
    with torch.no_grad():
        expected = merged.eval()(x)
        assert rel_err(layer.eval()(x), expected) < 1e-5
    assert len(fast_path) == 2  # both went through the fused kernel, which reads .weight
    out = layer.train()(x)  # the module path: MultiheadAttention's functional form reads out_proj.weight
    assert rel_err(out, expected) < 1e-5
    out.square().sum().backward()
    adapter = layer.self_attn.out_proj
    assert adapter.A.grad.abs().sum() > 0 and adapter.B.grad.abs().sum() > 0
    assert adapter.bias is adapter.base.bias and torch.equal(adapter.weight, merged.self_attn.out_proj.weight)

    model = tiny_model()  # the model's own output head reads lm_head.weight
    METHODS[method].inject(model, 4, targets="lm_head")
    randomize(model.lm_head, std=0.1)
    with torch.no_grad():
        adapted = model(tokens())
        assert rel_err(METHODS[method].merge(model)(tokens()), adapted) < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_inject_and_load_adapter_keep_the_models_mode(method, tmp_path):
    from support import adapters
    model = tiny_model().eval()
    METHODS[method].inject(model, 4, dropout=0.1)
    assert not any(m.training for m in model.modules())
    trained = tiny_model().train()
    METHODS[method].inject(trained, 4, dropout=0.1)
    assert all(m.training for m in trained.modules())
    assert not any(m.training for m in METHODS[method].merge(model.eval()).modules())

    # an adapter with dropout, loaded into a model in eval mode, gives the merged model's logits
    spec = adapters.settings(method, 4, dropout=0.1)
    model = tiny_model()
    adapters.inject(model, spec)
    for i, layer in enumerate(adapters.adapter_layers(model, method).values()):
        randomize(layer, seed=i, std=0.1)
    adapters.save_adapter(model, tmp_path, spec, base_model="tiny")
    loaded = tiny_model().eval()
    adapters.load_adapter(loaded, tmp_path)
    with torch.no_grad():
        logits = loaded(tokens())
        assert torch.equal(loaded(tokens()), logits)  # no dropout: the same logits twice
        assert rel_err(adapters.merge(loaded, method)(tokens()), logits) < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_adapters_are_float32_unless_the_model_is_converted_after_injection(method):
    """What the docstrings say: A, B, h are float32 on a bf16 model; model.to(bf16) afterwards converts them."""
    model = tiny_model().to(torch.bfloat16)
    names = METHODS[method].inject(model, 4)
    adapter = model.get_submodule(names[0])
    assert {p.dtype for p in adapter.parameters() if p.requires_grad} == {torch.float32}
    assert adapter.base.weight.dtype == torch.bfloat16 and model(tokens()).dtype == torch.bfloat16
    model.to(torch.bfloat16)
    assert {p.dtype for p in adapter.parameters() if p.requires_grad} == {torch.bfloat16}


@pytest.mark.parametrize("method", METHODS)
def test_the_readmes_adapter_only_state_dict_round_trip(method, tmp_path):
    model = tiny_model()
    METHODS[method].inject(model, 4)
    for i, layer in enumerate(m for m in model.modules() if isinstance(m, ADAPTER[method])):
        randomize(layer, seed=i, std=0.1)
    # docs/usage.md's three lines
    keys = (".A", ".B", ".h", ".m", ".lora_A", ".lora_B")
    torch.save({k: v for k, v in model.state_dict().items() if k.endswith(keys)}, tmp_path / "adapter.pt")
    fresh = tiny_model()
    METHODS[method].inject(fresh, 4)
    result = fresh.load_state_dict(torch.load(tmp_path / "adapter.pt"), strict=False)
    assert not result.unexpected_keys
    assert sorted(result.missing_keys) == sorted(k for k in model.state_dict() if not k.endswith(keys))
    with torch.no_grad():
        assert torch.equal(fresh(tokens()), model(tokens()))


# ---------------------------------------------------------------------------------------------------
# DoRA: the row norms, and PEFT's computation (peft 0.21, DoraLinearLayer.forward and
# DoraLinearVariant.forward) written out in float64 as the reference for the forward and the gradients.

def direct_row_norm(adapter):
    V = adapter.base.weight.double() + adapter.scaling * adapter.B.double() @ adapter.A.double()  # (out, in)
    return torch.sqrt((V * V).sum(1))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-14), (torch.float32, 1e-6), (torch.bfloat16, 1e-3)])
def test_dora_row_norm_form_is_the_direct_norm(dtype, tol):
    adapter = randomize(make("dora", make_base(64, 48, dtype=dtype), alpha=8), std=0.1)
    n = adapter.weight_norm()
    assert n.dtype == torch.promote_types(dtype, torch.float32) and not n.requires_grad
    assert rel_err(n.double(), direct_row_norm(adapter)) < tol


def test_dora_magnitude_starts_at_the_row_norm_of_w0():
    adapter = make("dora", make_base(64, 48))
    assert torch.allclose(adapter.m, torch.linalg.norm(adapter.base.weight, dim=1), rtol=1e-6, atol=0)
    assert torch.equal(adapter.m / adapter.weight_norm(), torch.ones(48))  # exactly: a fresh adapter is the base


def peft_dora(adapter, x, A, B, m, drop=None):
    """PEFT 0.21's DoRA layer, step by step: B A through an identity, the (out, in) norm, then
    base(x) + (g − 1) ⊙ (base(x) − bias) + g ⊙ s·B A x; with dropout in training, x' = drop(x) in both terms."""
    W0, bias, s = adapter.base.weight, adapter.base.bias, adapter.scaling
    eye = torch.eye(A.shape[1], dtype=A.dtype)
    lora_weight = ((eye @ A.T) @ B.T).T
    norm = torch.linalg.norm(W0 + s * lora_weight.detach(), dim=1).detach()
    g = (m / norm).view(1, -1)
    result = x @ W0.T + bias
    if drop is None:
        base_result = result - bias
    else:
        x = drop(x)
        base_result = x @ W0.T
    return result + (g - 1) * base_result + g * ((x @ A.T) @ B.T) * s


@pytest.mark.parametrize("mode", ["eval", "train", "train-dropout", "eval-dropout"])
def test_dora_forward_and_gradients_are_pefts(mode):
    dropout = 0.3 if mode.endswith("dropout") else 0.0
    adapter = randomize(make("dora", make_base(24, 20, dtype=torch.float64), alpha=8, dropout=dropout))
    adapter.train(mode.startswith("train"))
    x = torch.randn(3, 5, 24, dtype=torch.float64)
    torch.manual_seed(3)
    y = adapter(x)
    torch.manual_seed(3)
    drop = (lambda v: F.dropout(v, dropout, training=True)) if mode == "train-dropout" else None
    y_ref = peft_dora(adapter, x, adapter.A, adapter.B, adapter.m, drop)
    assert rel_err(y, y_ref) < 1e-14
    g = torch.randn_like(y)
    params = [adapter.A, adapter.B, adapter.m]
    for name, a, b in zip("ABm", torch.autograd.grad((y * g).sum(), params),
                          torch.autograd.grad((y_ref * g).sum(), params)):
        assert rel_err(a, b) < 1e-13, name
    if mode == "train-dropout":  # both corrections saw the dropped input: not the no-dropout output
        assert rel_err(y, peft_dora(adapter, x, adapter.A, adapter.B, adapter.m)) > 1e-2


def test_dora_merged_weight_is_magnitude_times_direction():
    adapter = randomize(make("dora", make_base(dtype=torch.float64), alpha=8))
    V = adapter.base.weight + adapter.scaling * adapter.B @ adapter.A
    expected = adapter.m.unsqueeze(1) * V / torch.linalg.norm(V, dim=1, keepdim=True)
    merged = adapter.merged()
    assert rel_err(merged.weight, expected) < 1e-14
    assert torch.allclose(torch.linalg.norm(merged.weight, dim=1), adapter.m, rtol=1e-13, atol=0)  # ‖W'‖_row = m


@pytest.mark.parametrize("bf16", ["weights", "autocast"])
def test_dora_keeps_a_young_magnitude_update_visible_in_bf16(bf16):
    """m / n = 1 + 1e-3 rounds to 1 in bf16 (steps of 2^-8 near 1): the forward works with d = m / n − 1.

    As for HiRA above, the update then survives up to the rounding of the bf16 output, so over many tokens
    it points where the exact update points; with g = m / n cast to bf16, most rows' update is exactly zero.
    """
    base = make_base(256, 256, dtype=torch.bfloat16 if bf16 == "weights" else torch.float32)
    adapter = make("dora", base).eval()
    with torch.no_grad():
        adapter.m.mul_(1 + 1e-3 * torch.randn(256, generator=torch.Generator().manual_seed(0)))
    x = torch.randn(512, 256, dtype=base.weight.dtype)
    d = (adapter.m / adapter.weight_norm() - 1).double()
    expected = d * (x.double() @ base.weight.double().T)  # the update: (m/n − 1) ⊙ W0 x
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 == "autocast"):
        update = adapter(x).double() - base(x).double()
        g_form = ((adapter.m / adapter.weight_norm()).bfloat16() * base(x)).double() - base(x).double()
    cosine = lambda u: ((u * expected).sum() / (u.norm() * expected.norm())).item()  # noqa: E731
    assert cosine(update) > 0.3 and cosine(g_form) < 0.2  # measured: 0.39 and 0.10


def test_dora_rank_is_r_plus_the_rows_whose_magnitude_moved():
    adapter = randomize(make("dora", make_base(64, 72, dtype=torch.float64), rank=3))
    assert rank_of(adapter) == 64  # (m/n − 1) ⊙ W0 rescales every row of a full-rank W0
    with torch.no_grad():
        n = adapter.weight_norm()
        adapter.m.copy_(n)
        adapter.m[:5] *= 1.5
    assert rank_of(adapter) == 3 + 5


# ---------------------------------------------------------------------------------------------------
# LoRAN: amplitude 0 is LoRA; the sine lifts the rank.

@pytest.mark.parametrize("alpha", [None, 8])
def test_loran_with_amplitude_zero_is_lora(alpha):
    base = make_base()
    lo = randomize(make("lora", base, alpha=alpha))
    ln = make("loran", base, alpha=alpha, amplitude=0.0)
    with torch.no_grad():
        ln.A.copy_(lo.A)
        ln.B.copy_(lo.B)
    assert torch.equal(ln.delta_weight(), lo.delta_weight())
    assert torch.equal(ln.merged().weight, lo.merged().weight)
    x = torch.randn(2, 5, 24)
    assert rel_err(ln(x), lo(x)) < 1e-6  # the fused matmul sums in another order than LoRA's two thin ones


def test_loran_defaults_are_the_authors_and_the_sine_is_small():
    adapter = randomize(make("loran", make_base(64, 48, dtype=torch.float64)), std=0.1)
    assert (adapter.amplitude, adapter.omega) == (5e-4, 1e3)
    lora_part = adapter.scaling * adapter.B @ adapter.A
    with torch.no_grad():
        share = ((adapter.delta_weight() - lora_part).norm() / lora_part.norm()).item()
    assert 0 < share <= 5e-4  # |λ x sin(ω x)| ≤ λ |x|


@pytest.mark.parametrize("r", [1, 4])
def test_loran_rank_is_full(r):
    # entries of B A around 0.1, so ω x spans many periods (at r = 1 and |BA| ~ 0.01 the numerical rank is ~25)
    adapter = randomize(make("loran", make_base(64, 48, dtype=torch.float64), rank=r), std=0.3)
    assert rank_of(adapter) == 48  # the elementwise sine of a rank-r matrix: full rank, for LoRA's parameters
    adapter.amplitude = 0.0
    assert rank_of(adapter) == r


# ---------------------------------------------------------------------------------------------------
# HiLoRA (HiRA paper §6.6): ΔW = W0 ⊙ (B A) + s · lora_B lora_A. r2 = 0 is HiRA and r1 = 0 is LoRA, bit for bit.

def outputs_gradients_and_merge(layer, params, x, seed=7):
    """What a layer computes from x, each bit of it: the output in training (dropout drawn from `seed`), the
    gradients of params, ΔW, the merged weight and the output in eval mode."""
    torch.manual_seed(seed)
    y = layer.train()(x)
    grads = torch.autograd.grad(y.float().square().sum(), params)
    with torch.no_grad():
        return [y, *grads, layer.delta_weight(), layer.merged().weight, layer.eval()(x)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("alpha", [None, 8])
def test_hilora_at_r1_zero_is_lora_bit_for_bit(alpha, dtype):
    base = make_base(dtype=dtype)
    torch.manual_seed(0)
    lo = lora.LoRALinear(base, 4, alpha=alpha, dropout=0.1)
    torch.manual_seed(0)
    hl = hira.HiLoRALinear(base, 0, lora_rank=4, alpha=alpha, dropout=0.1)
    assert hl.A is None and hl.B is None and torch.equal(hl.lora_A, lo.A)  # the same random draws
    assert {n for n, p in hl.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}
    with torch.no_grad():
        lo.B.normal_()
        hl.lora_B.copy_(lo.B)
    x = torch.randn(2, 5, 24, dtype=dtype)
    ours = outputs_gradients_and_merge(hl, [hl.lora_A, hl.lora_B], x)
    theirs = outputs_gradients_and_merge(lo, [lo.A, lo.B], x)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert not torch.equal(ours[0], ours[-1])  # dropout was drawn, the same masks for both


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_hilora_at_r2_zero_is_hira_and_its_lora_part_adds_to_it(dropout):
    base = make_base()
    torch.manual_seed(0)
    hi = hira.HiRALinear(base, 4, dropout=dropout)
    torch.manual_seed(0)
    hl = hira.HiLoRALinear(base, 4, lora_rank=2, dropout=dropout)
    assert torch.equal(hl.A, hi.A)  # the Hadamard part is drawn first: HiRA's A for the same seed
    assert set(hira.HiLoRALinear(base, 4, lora_rank=0).state_dict()) == set(hi.state_dict())  # r2 = 0: HiRA's tensors
    with torch.no_grad():
        hi.B.normal_()
        hl.B.copy_(hi.B)
    x = torch.randn(2, 5, 24)
    # a LoRA part with lora_B = 0 (a fresh one) adds exactly nothing: HiRA's outputs, gradients and merge
    ours = outputs_gradients_and_merge(hl, [hl.A, hl.B], x)
    assert all(torch.equal(a, b) for a, b in zip(ours, outputs_gradients_and_merge(hi, [hi.A, hi.B], x)))
    with torch.no_grad():
        hl.lora_B.normal_()
        assert torch.equal(hl.delta_weight(), hi.delta_weight() + hl.lora_B @ hl.lora_A)  # s = 1: alpha = r2
        # one dropout mask for the whole update: y = W0 x + bias + ΔW dropout(x), ΔW both parts
        torch.manual_seed(3)
        y = hl.train()(x)
        torch.manual_seed(3)
        expected = base(x) + F.dropout(x, dropout, training=True) @ hl.delta_weight().T
        assert rel_err(y, expected) < 1e-6


def test_hilora_rank_is_above_r1_plus_r2_and_bounded_by_rank_w0_times_r1_plus_r2():
    full = randomize(make("hilora", make_base(64, 64, dtype=torch.float64), rank=3, lora_rank=2))
    assert rank_of(full) == 64  # min(out, in), far above r1 + r2 = 5, for a random (full-rank) W0
    base = make_base(64, 64, dtype=torch.float64)
    with torch.no_grad():
        base.weight.copy_(torch.randn(64, 2, dtype=torch.float64) @ torch.randn(2, 64, dtype=torch.float64))
    assert rank_of(randomize(make("hilora", base, rank=3, lora_rank=2))) == 2 * 3 + 2  # rank(W0) · r1 + r2
    assert rank_of(randomize(make("hilora", base, rank=0, lora_rank=2))) == 2  # r1 = 0: LoRA's r2


@pytest.mark.parametrize("r1, r2", [(4, 0), (3, 1), (2, 2), (1, 3), (0, 4)])
def test_hilora_trainable_parameters_are_out_plus_in_times_r1_plus_r2(r1, r2):
    adapter = make("hilora", make_base(24, 20), rank=r1, lora_rank=r2)
    assert sum(p.numel() for p in adapter.parameters() if p.requires_grad) == (20 + 24) * (r1 + r2)


def test_hilora_costs_hiras_token_matmuls_and_at_r1_zero_builds_no_out_by_in_matrix():
    def token_matmuls(adapter):
        return sum(1 for f, ins, _ in record_training_step(adapter)
                   if f in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default) and any(7 in s for s in ins))

    both = randomize(make("hilora", make_base(40, 48), rank=3, lora_rank=2))
    assert token_matmuls(both) == 1 + 2  # as HiRA's: the LoRA part is summed into the (out, in) matrix
    lora_only = randomize(make("hilora", make_base(40, 48), rank=0, lora_rank=2, dropout=0.1))
    assert not builds_out_by_in(record_training_step(lora_only))  # r1 = 0: lora.py's activation side


def test_hilora_inject_train_save_alone_and_merge():
    model = tiny_model()
    names = hira.inject(model, 2, adapter=hira.HiLoRALinear, lora_rank=3, alpha=6)
    layer = model.get_submodule(names[0])
    assert (layer.rank, layer.lora_rank, layer.scaling) == (2, 3, 2.0)
    assert {n.rsplit(".", 1)[1] for n, p in model.named_parameters() if p.requires_grad} == TRAINABLE["hilora"]
    for i, name in enumerate(names):
        randomize(model.get_submodule(name), seed=i, std=0.1)
    # docs/usage.md's adapter-only state dict, HiLoRA's LoRA part included
    keys = (".A", ".B", ".h", ".m", ".lora_A", ".lora_B")
    saved = {k: v for k, v in model.state_dict().items() if k.endswith(keys)}
    fresh = tiny_model()
    hira.inject(fresh, 2, adapter=hira.HiLoRALinear, lora_rank=3, alpha=6)
    assert not fresh.load_state_dict(saved, strict=False).unexpected_keys
    with torch.no_grad():
        adapted = model(tokens())
        assert torch.equal(fresh(tokens()), adapted)
        assert rel_err(hira.merge(model)(tokens()), adapted) < 1e-5
    assert all(type(model.get_submodule(n)) is nn.Linear for n in names)
