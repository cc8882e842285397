"""The coding exercises' grader (exercises/grade.py) can pass and can fail.

The repository's own implementations (exercises/reference, which runs lora.py, hira.py, pera.py, dora.py,
eval.py and model.py) pass every property; each deliberately wrong solution in exercises/wrong fails, with the
property that catches it named, the input it failed on and the size of the error; the untouched exercise
files report "not yet implemented", and a student's error is one line naming the file and line, never a
traceback. The grader imports only torch: it grades a handout that holds the exercises folder alone.
A solution with one slip fails too: a sample of experiments/mutants.py's mutants of the references, and the
slips the grader once passed, are killed; results/mutants.json scores every exercise ≥ 95 %.
"""
import ast
import json
import os
import runpy
import shutil
import subprocess
import sys
import warnings

import pytest

from conftest import ROOT
from exercises import grade
from experiments import mutants

HERE = ROOT / "exercises"

# wrong solution -> (its exercise, the property that must catch it, what the failure must say)
WRONG = {
    "lora_forward_missing_scaling": ("lora_forward", "PERA paper, Eq. 8", "off by up to"),
    "lora_forward_transposed_factor": ("lora_forward", "merge = W0 + s·Σ_k b_k a_kᵀ", "on in=16, out=16"),
    "lora_forward_forms_delta": ("lora_forward", "activation side", "of shape (48, 40) formed"),
    "effective_rank_squared": ("effective_rank", "Roy & Vetterli", "off by up to"),
    "hira_update_bias_twice": ("hira_update", "y = x (W0 + W0 ⊙ B A)ᵀ + bias", "off by up to"),
    "pera_factors_h_both_sides": ("pera_factors", "term by term, h in torch.triu_indices order", "off by up to"),
    "pera_factors_pair_order": ("pera_factors", "term by term, h in torch.triu_indices order", "r=3, terms='all'"),
    "h_gradient_transposed_G": ("h_gradient", "autograd's ∂⟨G, ΔW⟩/∂h", "out=8, in=8"),
    "dora_norm_not_detached": ("dora_norm", "‖V‖_row detached (DoRA paper, §4.3)", "the gradient of A"),
    "dora_norm_forms_matrix": ("dora_norm", "row_norm forms no (out, in) matrix", "of shape (48, 40) formed"),
    "kv_cache_off_by_one": ("kv_cache", "over positions 0 .. length", "length=0"),
    "kv_cache_gqa_heads": ("kv_cache", "grouped-query attention", "n_head=4, n_kv_head=2"),
}


def run_grader(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "exercises.grade", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)


@pytest.mark.parametrize("exercise", grade.EXERCISES)
@pytest.mark.parametrize("folder", ["reference", "reference/plain"])
def test_the_reference_implementations_pass_every_property(exercise, folder):
    """reference/ runs the repository's files, reference/plain/ is the same written plainly, as a student would."""
    results = grade.grade(exercise, HERE / folder)
    assert [status for status, _, _ in results] == ["pass"] * len(grade.PROPERTIES[exercise]), results


@pytest.mark.parametrize("name", WRONG)
def test_each_wrong_solution_fails_with_the_property_named(name):
    exercise, prop, detail = WRONG[name]
    results = grade.grade(exercise, HERE / "wrong" / f"{name}.py")
    failed = {title: why for status, title, why in results if status == "FAIL"}
    caught = [title for title in failed if prop in title]
    assert caught, f"{name} passes '{prop}': {results}"
    assert detail in failed[caught[0]] and " on " in failed[caught[0]], failed[caught[0]]


def test_every_wrong_solution_is_tested_and_there_are_at_least_six():
    assert {p.stem for p in (HERE / "wrong").glob("*.py")} == set(WRONG)
    assert len(WRONG) >= 6 and len(grade.EXERCISES) >= 6


def test_untouched_exercises_report_not_yet_implemented():
    done = run_grader()
    assert done.returncode == 1 and not done.stderr, done.stderr
    assert done.stdout.splitlines() == [f"{e}: not yet implemented ({os.path.join('exercises', e + '.py')})"
                                        for e in grade.EXERCISES] + [f"0 of {len(grade.EXERCISES)} exercises passed"]


def test_the_documented_commands_on_the_reference_and_on_a_wrong_solution(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert grade.main(["--solutions", "exercises/reference"]) == 0
    assert capsys.readouterr().out.endswith(f"{len(grade.EXERCISES)} of {len(grade.EXERCISES)} exercises passed\n")
    assert grade.main(["kv_cache", "--solutions", "exercises/wrong/kv_cache_off_by_one.py"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("kv_cache (exercises/wrong/kv_cache_off_by_one.py)\n")
    assert "  FAIL  each step returns softmax" in out


def test_the_grader_grades_a_handout_of_the_exercises_folder_alone(tmp_path):
    """Without the repository around it (no lora.py, no reference/, no wrong/), with a student's wrong file in it."""
    (tmp_path / "exercises").mkdir()
    for file in HERE.glob("*.py"):
        shutil.copy(file, tmp_path / "exercises")
    shutil.copy(HERE / "wrong" / "pera_factors_h_both_sides.py", tmp_path / "exercises" / "pera_factors.py")
    done = run_grader(cwd=tmp_path)
    assert done.returncode == 1 and not done.stderr, done.stderr
    assert "lora_forward: not yet implemented (exercises/lora_forward.py)" in done.stdout
    assert "pera_factors (exercises/pera_factors.py)\n  pass  B̂ is (out, r + P)" in done.stdout
    assert "  FAIL  B̂ Â = B A + Σ h_ij" in done.stdout


def test_a_students_error_is_one_line_naming_the_file_and_line(tmp_path):
    (tmp_path / "lora_forward.py").write_text("def forward(x, W0, bias, A, B, alpha):\n    return x @ A\n\n\n"
                                               "def merge(W0, A, B, alpha):\n    raise NotImplementedError\n")
    (tmp_path / "hira_update.py").write_text("def delta_weight(W0, A, B)\n    return W0\n")
    (tmp_path / "kv_cache.py").write_text("def decode(q, k, v, cache_k, cache_v, length):\n    pass\n")
    results = {e: grade.grade(e, tmp_path) for e in ("lora_forward", "hira_update", "kv_cache", "dora_norm")}
    statuses = [status for status, _, _ in results["lora_forward"]]
    assert statuses == ["FAIL"] * 4 + ["todo"] * 2  # merge() not written yet: todo, not FAIL
    assert results["lora_forward"][0][2].startswith("forward() raised RuntimeError: ")
    assert results["lora_forward"][0][2].endswith(f"(at {tmp_path / 'lora_forward.py'}:2)")
    assert results["lora_forward"][4][2] == "merge() is not yet implemented"
    [(status, title, why)] = results["hira_update"]
    assert (status, title) == ("FAIL", "the solution file loads") and why.endswith("(line 1)")
    assert why.startswith(f"{tmp_path / 'hira_update.py'} does not load: SyntaxError: ")
    assert results["kv_cache"][0][2] == f"{tmp_path / 'kv_cache.py'} defines no function decode_step()"
    assert results["dora_norm"] == [("FAIL", "the solution file loads", f"{tmp_path / 'dora_norm.py'}: no such file")]


@pytest.mark.parametrize("argv,message", [
    (["lora"], "unknown exercise 'lora'; the exercises are lora_forward, "),
    (["--solutions", "no/such/folder"], "--solutions no/such/folder: no such file or folder"),
    (["--solutions", "exercises/wrong/kv_cache_gqa_heads.py"], "is one file: name the one exercise it solves"),
])
def test_a_wrong_command_line_is_one_error_line(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit:
        grade.main(argv)
    err = capsys.readouterr().err.splitlines()
    assert exit.value.code == 2 and message in err[-1] and err[-1].startswith("python -m exercises.grade: error: ")


# Mutants the grader passed before its properties were sharpened: slips a student makes. (Those of the same slips
# in lora.py, dora.py and eval.py are in results/mutants.json; these are in exercises/, which this test owns.)
ONCE_PASSED = [
    *[f"{e} | exercises/reference/plain/{e}.py:{f} | alpha / A.shape[0] → alpha // A.shape[0]"  # s = 2 at 8 / 4
      for e, f in [("lora_forward", "forward"), ("lora_forward", "merge"), ("dora_norm", "row_norm"),
                   ("dora_norm", "forward")]],
    "effective_rank | exercises/reference/plain/effective_rank.py:rank | s.max() * max(M.shape) → "
    "s.max() + max(M.shape)",  # a threshold not relative to σ_1
    "dora_norm | exercises/reference/plain/dora_norm.py:row_norm | square.clamp_min(0) → square.clamp_min(1)",
    *[f"kv_cache | exercises/reference/kv_cache.py:decode_step | (torch.ones(1, 1, 1, hd, dtype=q.dtype), "
      f"torch.zeros(1, 1, 1, hd, dtype=q.dtype)) → (torch.{a}, torch.{b})"  # a batch of 2 only
      for a, b in [("ones(2, 1, 1, hd, dtype=q.dtype)", "zeros(1, 1, 1, hd, dtype=q.dtype)"),
                   ("ones(1, 1, 1, hd, dtype=q.dtype)", "zeros(2, 1, 1, hd, dtype=q.dtype)")]],
]


@pytest.mark.parametrize("exercise", grade.EXERCISES)
def test_a_sample_of_the_mutants_and_those_once_passed_are_killed(exercise):
    """Every 8th mutant not listed as equivalent, and those the grader once passed: each fails a property.

    The equivalents in exercises/ must still be made; those in lora.py ... model.py may go stale when those files
    change (the script then names them), and `python -m experiments.mutants --json results/mutants.json` is rerun."""
    made = mutants.mutants(exercise)
    listed = [k for k in mutants.EQUIVALENT if k.startswith(f"{exercise} | exercises/")]
    assert set(listed) <= set(made), f"EQUIVALENT names a mutant no longer made: {set(listed) - set(made)}"
    live = [k for k in made if k not in mutants.EQUIVALENT]
    sample = live[::8] + [k for k in ONCE_PASSED if k.startswith(exercise + " | ")]
    assert all(k in made for k in sample), [k for k in sample if k not in made]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a mutant's x.T on a 3-d tensor
        survivors = [k for k in sample if made[k][1]() is None]
    assert not survivors, survivors


def test_the_committed_mutation_results_score_every_exercise_at_least_95_percent():
    results = json.loads((ROOT / "results" / "mutants.json").read_text())
    assert set(results["exercises"]) == set(grade.EXERCISES)
    for exercise, r in results["exercises"].items():
        statuses = [row["status"] for row in r["rows"]]
        assert r["mutants"] == len(statuses) and r["killed"] == statuses.count("killed"), exercise
        assert r["killed"] / (r["mutants"] - r["equivalent"]) >= 0.95 and r["survived"] == 0, (exercise, r["score"])
    assert results["equivalent"] == mutants.EQUIVALENT  # each with its reason, the list the script holds
    assert {row["mutant"] for r in results["exercises"].values() for row in r["rows"]
            if row["status"] == "equivalent"} == set(mutants.EQUIVALENT)


def test_the_grader_imports_torch_alone_and_one_private_module_it_explains():
    tree = ast.parse((HERE / "grade.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    third_party = {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names}
    assert third_party == {"torch", "torch.utils._python_dispatch"}, third_party


def test_a_torch_without_the_dispatch_mode_is_one_line_naming_it(monkeypatch):
    """sys.exit(message): Python prints the one line to stderr and exits with 1, no traceback."""
    monkeypatch.setitem(sys.modules, "torch.utils._python_dispatch", None)  # what a torch that moved it looks like
    with pytest.raises(SystemExit) as exit:
        runpy.run_path(str(HERE / "grade.py"))
    message = exit.value.code
    assert isinstance(message, str) and "\n" not in message and "TorchDispatchMode" in message, message
    assert message.startswith("python -m exercises.grade: this torch (")
