"""The adapters' lean paths, which rebuild in the backward what the plain computation keeps from the forward,
against that plain computation (each class's `lean = False`): the same outputs and gradients, and nothing
sized like W0 (out, in) kept for the backward."""
import pytest
import torch
import torch.nn as nn

from support import adapters

LEAN = [("hira", {}), ("hilora", {"lora_rank": 2}), ("loran", {}), ("pera", {}), ("pera", {"alpha": 2}),
        ("pera", {"terms": "square"}), ("pera", {"terms": "cross"})]
IDS = [m + "".join(f"-{k}={v}" for k, v in kw.items()) for m, kw in LEAN]
HADAMARD = [(m, kw) for m, kw in LEAN if m != "pera"]  # those that build an (out, in) matrix
# (dtype of base and input, bf16 autocast, tolerance relative to the largest entry)
PRECISIONS = [(torch.float64, False, 1e-12), (torch.float32, False, 1e-6), (torch.float32, True, 1e-2),
              (torch.bfloat16, False, 1e-2)]


def make(method, kw, dtype, dropout, out_features=20, in_features=24, bias=True):
    torch.manual_seed(0)
    base = nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
    layer = adapters.METHODS[method](base, 4, dropout=dropout, **kw)
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    return layer


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("dtype,autocast,tol", PRECISIONS, ids=["float64", "float32", "autocast-bf16", "bf16"])
@pytest.mark.parametrize("method,kw", LEAN, ids=IDS)
def test_lean_backward_is_the_plain_one(method, kw, dtype, autocast, tol, dropout, train):
    layer = make(method, kw, dtype, dropout, bias=dropout == 0).train(train)
    x0 = torch.randn(2, 5, 24, dtype=dtype, requires_grad=True)
    g = torch.randn(2, 5, 20)
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    runs = []
    for lean in (False, True):
        layer.lean = lean
        torch.manual_seed(1)  # the same dropout mask
        x = 1.0 * x0  # not a leaf, as inside a model (autocast caches the casts of leaves)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = layer(x)
        runs.append([y, *torch.autograd.grad((y.float() * g).sum(), [x0, *(layer.get_parameter(n) for n in names)])])
    for name, plain, lean in zip(["y", "x", *names], *runs):
        assert plain.dtype == lean.dtype, name
        assert (lean - plain).abs().max() <= tol * plain.abs().max(), name


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("method,kw", HADAMARD, ids=[m for m, _ in HADAMARD])
def test_lean_path_keeps_nothing_sized_like_the_weight(method, kw, autocast):
    """A wide layer on few tokens: every tensor autograd keeps is far smaller than W0; the plain path keeps some."""
    dtype = torch.bfloat16 if autocast else torch.float32  # train.py's bf16: a bf16 base under autocast
    layer = make(method, kw, dtype, 0.0, out_features=96, in_features=80)
    x = torch.randn(3, 80, dtype=dtype, requires_grad=True)  # as inside a model, below other adapters
    largest = {}
    for lean in (False, True):
        layer.lean = lean
        kept = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            layer(x).float().sum().backward()
        largest[lean] = max(t.numel() for t in kept if t.untyped_storage()._cdata != layer.base.weight.untyped_storage()._cdata)
    assert largest[False] >= 96 * 80 and largest[True] < 96 * 80 // 4, largest
