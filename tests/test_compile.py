"""--compile (Transformer.compile: every block, adapters included) against eager: the same losses, gradients, files
and answers; runs that resume each other across the flag; Ctrl-C, SIGTERM and a machine without a compiler.

Compiling takes seconds per graph on a CPU, so each method compiles once, with train.py's default dropout:
torch.compile reuses the code for every later model of the same kind, in train.py's runs below too.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT
from test_robustness import ctrl_c_is_a_keyboard_interrupt, interrupt_inside, log  # noqa: F401  (autouse fixture)
from test_train_eval import data_dir, stories_dir, train_args  # noqa: F401  (fixtures)

import eval as evaluate
import train
from model import Transformer
from support import adapters
from support.safetensors_io import load_safetensors

pytestmark = pytest.mark.slow  # minutes of compiling: .ci/run's second stage, `python -m pytest -q -m slow`

COMMON = ["--method", "pera", "--max-steps", "6", "--lr", "5e-3", "--eval-every", "3"]  # pera's default dropout: 0.05


@pytest.mark.parametrize("method", list(adapters.METHODS))
def test_compiled_loss_and_gradients_are_eagers(stories_dir, method):  # noqa: F811
    torch.manual_seed(0)
    model = Transformer.from_pretrained(stories_dir)
    required = {k: 2 for k, v in adapters.options(method).items() if v is adapters.REQUIRED}  # HiLoRA's lora_rank
    adapters.inject(model, adapters.settings(method, 4, dropout=train.DEFAULT_DROPOUT[method], **required))
    with torch.no_grad():  # every factor away from zero, so that every gradient is
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    model.train()
    names = list(model.state_dict())
    ids = torch.tensor(json.loads((stories_dir / "input_ids.json").read_text())).repeat(3, 1)[:, :24]
    labels = ids.clone()
    labels[:, :8] = -100
    results = []
    for compiled in (False, True):
        if compiled:
            model.compile()
        torch.manual_seed(1)  # the same dropout masks, if the compiled code draws them as eager does
        loss, n = train.loss_sum(model, ids, labels)
        (loss / n).backward()
        results.append((loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad},
                        torch.get_rng_state()))
        model.zero_grad(set_to_none=True)
    (eager, g0, rng0), (comp, g1, rng1) = results
    scale = max(g.abs().max().item() for g in g0.values())
    error = max((g0[k] - g1[k]).abs().max().item() for k in g0)
    print(f"{method}: compiled vs eager: loss {abs(comp - eager):.2e} of {eager:.1f}, gradients {error:.2e} of {scale:.2e}")
    assert abs(comp - eager) <= 1e-5 * abs(eager) and error <= 1e-5 * scale
    assert 0 < abs(comp - eager) + error  # compiled code ran: its float32 rounding is not eager's
    assert torch.equal(rng0, rng1)  # dropout drew from torch's generator as eager does
    assert list(model.state_dict()) == names and g0.keys() == g1.keys()  # no `_orig_mod.` anywhere


@pytest.fixture(scope="module")
def straight(stories_dir, data_dir, tmp_path_factory):  # noqa: F811
    """The eager run every compiled or half-compiled run below must give."""
    out = tmp_path_factory.mktemp("straight")
    train.main(train_args(stories_dir, data_dir, out, *COMMON))
    return out


def assert_same_run(a, b):
    """The same steps, losses and adapter, within float32 rounding; the same tensor names in every file."""
    la, lb = log(a), log(b)
    assert [r.keys() for r in la] == [r.keys() for r in lb]
    for key in ("loss", "grad_norm", "val_loss"):
        assert [r[key] for r in la if key in r] == pytest.approx([r[key] for r in lb if key in r], rel=1e-4), key
    ta, tb = load_safetensors(a / "adapter_model.safetensors"), load_safetensors(b / "adapter_model.safetensors")
    assert ta.keys() == tb.keys()  # AdamW's steps magnify rounding a little: each tensor within 1e-3 of its size
    assert max(((ta[k] - tb[k]).norm() / ta[k].norm()).item() for k in ta) < 1e-3
    sa, sb = (torch.load(run / "checkpoint" / "state.pt", weights_only=False) for run in (a, b))
    assert sa["trainable"].keys() == sb["trainable"].keys() and sa["step"] == sb["step"]


def test_compiled_and_eager_runs_resume_each_other_after_ctrl_c(straight, stories_dir, data_dir, tmp_path,  # noqa: F811
                                                                monkeypatch):
    for first, then in ((["--compile"], []), ([], ["--compile"])):
        out = tmp_path / ("compiled-first" if first else "eager-first")
        argv = train_args(stories_dir, data_dir, out, *COMMON)
        hits = []
        with monkeypatch.context() as m:  # a real SIGINT inside step 3's validation, as in test_robustness.py
            interrupt_inside(m, train, "validation_loss", hits, 1)
            with pytest.raises(SystemExit, match="interrupted after step 3; state saved in"):
                train.main(argv + first)
        assert hits == ["validation_loss"]
        train.main(argv + then + ["--resume"])
        assert json.loads((out / "args.json").read_text())["compile"] == bool(first)
        assert_same_run(straight, out)


def test_eval_compiled_gives_eagers_answers(straight, data_dir, tmp_path):  # noqa: F811
    for mode in ("generate", "loglik"):
        argv = ["--adapter", str(straight), "--data", str(data_dir), "--tasks", "boolq,ARC-Easy", "--mode", mode,
                "--max-new-tokens", "6", "--batch-size", "8", "--device", "cpu"]
        eager = evaluate.main(argv + ["--out", str(tmp_path / f"{mode}-eager")])
        compiled = evaluate.main(argv + ["--out", str(tmp_path / f"{mode}-compiled"), "--compile"])
        a, b = ([json.loads(line) for line in (tmp_path / f"{mode}-{kind}" / "predictions.jsonl").read_text().splitlines()]
                for kind in ("eager", "compiled"))
        assert [r["prediction"] for r in a] == [r["prediction"] for r in b]
        if mode == "generate":
            assert [r["output"] for r in a] == [r["output"] for r in b]
        else:
            assert [s for r in a for s in r["scores"].values()] == pytest.approx(
                [s for r in b for s in r["scores"].values()], abs=1e-3)
        assert eager["tasks"] == compiled["tasks"]


# -----------------------------------------------------------------------------
# As processes: a machine without a compiler, Ctrl-C and SIGTERM while compiling

def compiling_env(tmp_path, **changes):
    """The environment of a tool run as a process, with a compile cache of its own (nothing compiled yet)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), **changes}


@pytest.mark.parametrize("tool", ["train.py", "eval.py", "experiments.bench"])
def test_a_machine_without_a_compiler_is_told_in_one_line(tool, straight, stories_dir, data_dir, tmp_path):  # noqa: F811
    no_bin = tmp_path / "bin"  # PATH without gcc, CXX and CC naming compilers that do not exist
    no_bin.mkdir()
    env = compiling_env(tmp_path, PATH=str(no_bin), CXX=str(no_bin / "g++"), CC=str(no_bin / "gcc"))
    out = tmp_path / "run"
    argv = {"train.py": train_args(stories_dir, data_dir, out, *COMMON),
            "eval.py": ["--adapter", str(straight), "--data", str(data_dir), "--tasks", "boolq", "--limit", "2",
                        "--device", "cpu", "--out", str(out)],
            "experiments.bench": ["--model", str(stories_dir), "--methods", "lora", "--ranks", "2", "--rounds", "1",
                                  "--no-memory", "--batch-size", "2", "--seq-len", "32"]}[tool]
    command = [sys.executable, *(["-m", tool] if tool.startswith("experiments") else [str(ROOT / tool)])]
    result = subprocess.run(command + argv + ["--compile"], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=300)
    message = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert message.startswith(f"error: --compile: torch.compile cannot build code on this machine (No working C++ "
                              f"compiler found in torch._inductor.config.cpp.cxx: (None, '{no_bin / 'g++'}'); it "
                              f"needs a C++ compiler on a CPU, g++ or the one CXX names"), message
    assert message.endswith("run without --compile" if tool != "train.py" else
                            f"the state saved last in {out / 'checkpoint' / 'state.pt'} is kept: continue with the "
                            f"same arguments plus --resume, without --compile")
    if tool == "train.py":  # it came at the first step, and the run stands where it was: step 0, nothing logged
        assert torch.load(out / "checkpoint" / "state.pt", weights_only=False)["step"] == 0
        assert (out / "log.jsonl").read_text() == "" and not (out / ".lock").exists()
        train.main(train_args(stories_dir, data_dir, out, *COMMON, "--resume"))
        assert_same_run(straight, out)


# How a signal reaches a compiling run, sent by the compiler itself at the first of the model's kernels (after
# inductor's instruction-set probes, which may fail), so that it comes in the middle of the first step's compiling
SIGNALS = {"Ctrl-C": "trap '' INT; kill -INT 0",   # the terminal's: the whole process group; this compile goes on
           "Ctrl-C into the compiler": "kill -INT 0",  # the same, and it stops the compiler: the kernel is not built
           "SIGTERM": "kill -TERM $PPID"}  # a scheduler's: train.py alone


@pytest.mark.parametrize("how", list(SIGNALS))
def test_ctrl_c_and_sigterm_while_compiling_end_the_run_in_one_line_and_it_resumes(how, straight, stories_dir,  # noqa: F811
                                                                                   data_dir, tmp_path):
    """Either the step being compiled finishes, its state is saved and the run ends with its one line, as without
    --compile; or, when the Ctrl-C stopped the compiler, the step cannot finish: the line says so and the state
    before it is kept. Either way no process is left behind and --resume gives the uninterrupted run."""
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *train_args(stories_dir, data_dir, out, *COMMON),
                                "--compile"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=signalling_compiler(tmp_path, how), cwd=ROOT,
                               start_new_session=True)  # its own process group, as a terminal gives a command
    _, stderr = process.communicate(timeout=300)
    assert (tmp_path / "bin" / "g++.signalled").exists(), "no kernel was compiled"
    assert process.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    state = out / "checkpoint" / "state.pt"
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted while compiling (the compiler got SIGINT): stopped inside step 1, without saving it; the state "
        f"after step 0 in {state} is kept. Continue with the same arguments plus --resume."
        if how == "Ctrl-C into the compiler" else
        f"interrupted after step 1; state saved in {state}. Continue with the same arguments plus --resume.")
    assert torch.load(state, weights_only=False)["step"] == (0 if how == "Ctrl-C into the compiler" else 1)
    deadline = time.time() + 10
    while group(process.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not group(process.pid), "a compiler process outlived train.py"
    train.main(train_args(stories_dir, data_dir, out, *COMMON, "--resume"))
    assert_same_run(straight, out)


def test_eval_stopped_while_compiling_keeps_what_it_answered(straight, data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "eval"
    result = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--adapter", str(straight), "--data", str(data_dir),
                             "--tasks", "boolq", "--limit", "2", "--device", "cpu", "--out", str(out), "--compile"],
                            capture_output=True, text=True, env=signalling_compiler(tmp_path, "Ctrl-C into the compiler"),
                            cwd=ROOT, start_new_session=True, timeout=300)
    assert (tmp_path / "bin" / "g++.signalled").exists(), "no kernel was compiled"
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (f"interrupted after 0 of 2 examples; their predictions are kept "
                                                      f"in {out / evaluate.PARTIAL}: the same command continues from there")


def signalling_compiler(tmp_path, how):
    """The environment of a tool run as a process whose C++ compiler is g++ but sends SIGNALS[how] first, once."""
    cxx = tmp_path / "bin" / "g++"
    cxx.parent.mkdir()
    cxx.write_text(f"""#!/bin/bash
for arg; do [[ $arg == *.cpp ]] && source=$arg; done
if [[ -n $source ]] && ! grep -q _chk_kernel "$source" && mkdir "$0.signalled" 2>/dev/null; then
    {SIGNALS[how]}
fi
exec {shutil.which("g++")} "$@"
""")
    cxx.chmod(0o755)
    # "Ctrl-C" stands for one that comes while no compiler runs: with one compile thread none runs beside this one
    return compiling_env(tmp_path, CXX=str(cxx), **{"TORCHINDUCTOR_COMPILE_THREADS": "1"} if how == "Ctrl-C" else {})


def group(pgid):
    """The live processes of process group pgid (Linux)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split() if entry.isdigit() else None
        except OSError:
            continue
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found
