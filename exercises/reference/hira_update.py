"""Exercise 3's reference: hira.py."""
import hira
from exercises.reference import linear, using


def delta_weight(W0, A, B):
    return using(hira.HiRALinear(linear(W0), A.shape[0]), A=A, B=B).delta_weight()


def forward(x, W0, bias, A, B):
    return using(hira.HiRALinear(linear(W0, bias), A.shape[0]), A=A, B=B)(x)  # no dropout: the fused forward
