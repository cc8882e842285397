"""Wrong on purpose (exercise 1): the α/r scaling is missing, so ΔW = B A whatever alpha is."""


def forward(x, W0, bias, A, B, alpha):
    return x @ W0.T + bias + (x @ A.T) @ B.T  # BUG: s = alpha / r left out


def merge(W0, A, B, alpha):
    return W0 + B @ A  # BUG: s = alpha / r left out
