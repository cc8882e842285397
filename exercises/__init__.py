"""Coding exercises: seven files to fill in, graded by the properties the repository's tests check.

    lora_forward.py    1  LoRA's forward on the activation side, and its merge                 easy
    effective_rank.py  2  the rank and the effective rank of ΔW                                easy
    hira_update.py     3  HiRA's update, and its forward in one matmul                         medium
    pera_factors.py    4  PERA's expanded factors B̂, Â, with the square and cross ablations    medium
    h_gradient.py      5  ∂L/∂h_ij in closed form                                              medium
    dora_norm.py       6  DoRA's row norms without an (out, in) temporary, and its forward     hard
    kv_cache.py        7  one decode step of attention with a KV cache                         hard

    python -m exercises.grade                  # grade every exercise (your files, here)
    python -m exercises.grade lora_forward     # grade one

grade.py imports only torch. reference/ runs the repository's own implementations behind the exercises'
signatures, wrong/ holds deliberately wrong solutions the grader must catch; leave both out of a handout.
docs/exercises.md has the table, the references and the derivation exercises.
"""
