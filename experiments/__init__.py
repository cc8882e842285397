"""The experiments behind docs/, each run from the repository root as `python -m experiments.NAME`
(the two shell scripts as `bash experiments/NAME.sh`); every figure they make lands in results/.

    toy.py             which matrices LoRA, PERA and HiRA reach at the same rank (docs/study.md)
    study.sh, study.py the real-model PERA study: init, h's learning rate, label-only loss, its table
    reproduce.sh       the small-scale commonsense reproduction (docs/results.md)
    bench.py           step time, memory, merged inference; the memory planner (docs/bench.md, docs/scale.md)
    plot.py            the project's own SVG line plot; `python -m experiments.plot LOG... --key loss`
    mutants.py         mutation testing of the exercises' grader: can a solution with one slip pass? (docs/exercises.md)
    dora_magnitude.py  how much of a trained DoRA ΔW is the magnitude's rescaling of W0's rows
    dora_vs_peft.py, peft_roundtrip.py   checks against Hugging Face PEFT (need peft; not tests)
    relative_paths.py  rewrote the machine paths in results/ to repository-relative ones (run once)
"""
