"""Exercise 1's reference: lora.py."""
import lora
from exercises.reference import linear, using


def forward(x, W0, bias, A, B, alpha):
    return using(lora.LoRALinear(linear(W0, bias), A.shape[0], alpha=alpha), A=A, B=B)(x)


def merge(W0, A, B, alpha):
    return using(lora.LoRALinear(linear(W0), A.shape[0], alpha=alpha), A=A, B=B).merged().weight
