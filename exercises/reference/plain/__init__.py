"""The seven exercises solved as a student would write them: plain torch, each file alone, no repository file.

experiments/mutants.py mutates these too, so that the grader is tried on the slips of short, direct code as
well as on those of the repository's adapter classes. python -m exercises.grade --solutions exercises/reference/plain
"""
