"""Exercise 5 (medium, about 30 minutes): the gradient of PERA's coefficients h in closed form.

With ΔW as in exercise 4 (PERA paper, Eq. 9), s = alpha / r, and G = ∂L/∂ΔW (out, in) the gradient of a
loss L with respect to the update, the chain rule gives for each kept pair (i, j)

    ∂L/∂h_ij = s · (b_i ⊙ b_j)ᵀ G (a_i ⊙ a_j),

with b_i column i of B (out, r) and a_i row i of A (r, in). (Derive it first: docs/exercises.md, derivation 1.)

h_gradient(A, B, G, alpha, terms) returns the (P,) vector of these in h's order (exercise 4's: pairs in
torch.triu_indices order, filtered by terms). Compute it without autograd: the grader calls it under
torch.no_grad(). It does not depend on h, since ΔW is linear in h. At step 0 one factor is zero (B in the
authors' code, A in the paper's text), so the polynomial terms start silent: your formula shows why.

Grade it: python -m exercises.grade h_gradient
"""
import torch


def h_gradient(A, B, G, alpha, terms="all"):
    raise NotImplementedError
