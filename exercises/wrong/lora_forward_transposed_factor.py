"""Wrong on purpose (exercise 1): merge adds ΔWᵀ, the factors taken transposed, which only a square layer accepts."""


def forward(x, W0, bias, A, B, alpha):
    s = alpha / A.shape[0]
    return x @ W0.T + bias + s * (x @ A.T) @ B.T


def merge(W0, A, B, alpha):
    return W0 + alpha / A.shape[0] * A.T @ B.T  # BUG: Aᵀ Bᵀ = (B A)ᵀ, not B A
