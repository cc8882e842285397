"""Wrong on purpose (exercise 1): the right numbers, but the forward forms the (out, in) matrix ΔW, which costs
in · out per token instead of r · (in + out), and as much memory as the frozen weight."""


def merge(W0, A, B, alpha):
    return W0 + alpha / A.shape[0] * B @ A


def forward(x, W0, bias, A, B, alpha):
    return x @ merge(W0, A, B, alpha).T + bias  # BUG: not on the activation side
