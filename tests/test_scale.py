"""Past one process and one precision: torchrun (DDP on gloo), activation checkpointing, the bf16 recipe on CPU.

Each test compares against the plain float32, one-process run that the other tests already check.
"""
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from conftest import ROOT
from test_robustness import assert_same_run
from test_safety import SEED, lines, wait_for
from test_train_eval import data_dir, stories_dir, train_args  # noqa: F401  (fixtures)

import eval as evaluate
import train
from model import Transformer
from support import adapters
from support.safetensors_io import load_safetensors


def log(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def torchrun(n, script, *argv):
    """`torchrun --standalone --nproc_per_node n script argv` on CPU processes (gloo), as a user runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                             str(ROOT / script), *argv], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# 83 training examples: 10 batches of 8, then one of 3, which the second process has none of
COMMON = ["--method", "pera", "--val-size", "13", "--max-steps", "11", "--lr", "5e-3", "--eval-every", "5",
          "--save-every", "4", "--dropout", "0", "--warmup-steps", "2"]


@pytest.fixture(scope="module")
def two_processes(stories_dir, data_dir, tmp_path_factory):  # noqa: F811
    """The run of COMMON with 2 gloo processes under torchrun: its folder, and what torchrun printed."""
    out = tmp_path_factory.mktemp("two")
    return out, torchrun(2, "train.py", *train_args(stories_dir, data_dir, out, *COMMON))


@pytest.mark.slow
def test_two_processes_give_one_process_losses_at_every_step(stories_dir, data_dir, tmp_path, two_processes):  # noqa: F811
    one = train.main(train_args(stories_dir, data_dir, tmp_path / "one", *COMMON))
    result = two_processes[1]
    assert "2 processes (gloo), 4 examples of each batch of 8 each" in result.stdout
    assert result.stdout.count("trainable params") == 1  # only the first process speaks
    a, b = log(tmp_path / "one"), log(two_processes[0])
    assert [r["step"] for r in b] == list(range(1, 12))
    for key in ("loss", "grad_norm", "val_loss"):
        x, y = [r.get(key) for r in a], [r.get(key) for r in b]
        assert [v is None for v in x] == [v is None for v in y]
        error = max(abs(u - v) for u, v in zip(x, y) if u is not None)
        print(f"2 processes vs 1, largest difference over {len(a)} steps: {key} {error:.2e}")
        assert error < 2e-5, key
    assert json.loads((two_processes[0] / "metrics.json").read_text())["steps"] == one["steps"] == 11
    ours, theirs = load_safetensors(tmp_path / "one" / "adapter_model.safetensors"), \
        load_safetensors(two_processes[0] / "adapter_model.safetensors")
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-4


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_process_after_one_step_and_resumes_exactly(stories_dir, data_dir, tmp_path,  # noqa: F811
                                                                                   two_processes):
    """SIGTERM to torchrun at a random moment, as a scheduler sends it: torchrun passes it on, both processes
    finish the same step, save one state (both RNG states in it) and exit non-zero with the line; --resume with
    torchrun then ends on the uninterrupted run's adapter and log, byte for byte."""
    rng, out = random.Random(SEED), tmp_path / "run"
    argv = train_args(stories_dir, data_dir, out, *COMMON)
    with open(tmp_path / "torchrun.txt", "w") as said:
        run = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                str(ROOT / "train.py"), *argv], stdout=said, stderr=subprocess.STDOUT, cwd=ROOT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    k = rng.randint(1, 7)  # four steps are left: the signal comes inside the training
    wait_for(lambda: lines(out / "log.jsonl") >= k, run, f"step {k}")
    time.sleep(rng.uniform(0, 0.1))
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=300) != 0
    said = (tmp_path / "torchrun.txt").read_text()
    steps = re.findall(r"interrupted after step (\d+); state saved in", said)
    assert said.count("SIGTERM: finishing this step") == 2 and len(steps) == 2 and steps[0] == steps[1], \
        f"seed {SEED}: {said[-3000:]}"
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
    assert k <= state["step"] == int(steps[0]) <= 11 and len(state["rng_ranks"]) == 2, f"seed {SEED}"
    torchrun(2, "train.py", *argv, "--resume")
    assert_same_run(two_processes[0], out)


def _rank_main(rank, world, port, argv, stop_at):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    if stop_at:
        def interrupt(step, record):
            if step == stop_at:
                raise KeyboardInterrupt
        train.on_step = interrupt
    try:
        train.main(argv)
    except SystemExit as e:
        assert "interrupted after step" in str(e)


def spawn(world, argv, stop_at=None):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(world, port, argv, stop_at), nprocs=world)


@pytest.mark.slow
def test_resume_across_process_counts(stories_dir, data_dir, tmp_path, monkeypatch):  # noqa: F811
    train.main(train_args(stories_dir, data_dir, tmp_path / "straight", *COMMON))
    # two processes stop after step 6 (state of step 4 kept), one process resumes
    spawn(2, train_args(stories_dir, data_dir, tmp_path / "two-then-one", *COMMON), stop_at=6)
    assert torch.load(tmp_path / "two-then-one" / "checkpoint" / "state.pt", weights_only=False)["step"] == 4
    train.main(train_args(stories_dir, data_dir, tmp_path / "two-then-one", *COMMON, "--resume"))
    # one process stops after step 5 (state saved), two processes resume
    monkeypatch.setattr(train, "on_step", lambda step, record: (_ for _ in ()).throw(KeyboardInterrupt) if step == 5 else None)
    with pytest.raises(SystemExit, match="interrupted after step 5"):
        train.main(train_args(stories_dir, data_dir, tmp_path / "one-then-two", *COMMON))
    monkeypatch.undo()
    spawn(2, train_args(stories_dir, data_dir, tmp_path / "one-then-two", *COMMON, "--resume"))
    straight = log(tmp_path / "straight")
    for run in ("two-then-one", "one-then-two"):
        resumed = log(tmp_path / run)
        assert [r["step"] for r in resumed] == list(range(1, 12))
        assert max(abs(r["loss"] - s["loss"]) for r, s in zip(resumed, straight)) < 2e-5, run


@pytest.mark.slow
def test_eval_with_two_processes_gives_one_process_results(stories_dir, data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "lora"
    train.main(train_args(stories_dir, data_dir, out, "--method", "lora", "--max-steps", "3", "--lr", "1e-2",
                          "--eval-every", "3"))
    common = ["--adapter", str(out), "--data", str(data_dir), "--limit", "7", "--max-new-tokens", "8",
              "--batch-size", "3", "--device", "cpu"]
    evaluate.main([*common, "--out", str(tmp_path / "one")])
    result = torchrun(2, "eval.py", *common, "--out", str(tmp_path / "two"))
    for name in ("predictions.jsonl",):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    one, two = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("one", "two"))
    assert {k: v for k, v in one.items() if k != "seconds"} == {k: v for k, v in two.items() if k != "seconds"}
    assert evaluate.table([one]) in result.stdout and result.stdout.count("| Method |") == 1


# -----------------------------------------------------------------------------
# Activation checkpointing

@pytest.mark.parametrize("method", ["lora", "hira", "pera"])
def test_grad_checkpoint_gives_the_same_loss_and_adapter_gradients(stories_dir, method):  # noqa: F811
    torch.manual_seed(0)
    model = Transformer.from_pretrained(stories_dir)
    adapters.inject(model, adapters.settings(method, 4, dropout=0.1))  # dropout: recomputed with the same masks
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    model.train()
    ids = torch.tensor(json.loads((stories_dir / "input_ids.json").read_text()))
    labels = ids.clone()
    labels[:, :2] = -100
    results = []
    for checkpoint in (False, True):
        model.grad_checkpoint = checkpoint
        torch.manual_seed(1)
        loss, n = train.loss_sum(model, ids, labels)
        (loss / n).backward()
        results.append((loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}))
        model.zero_grad(set_to_none=True)
    (plain, g0), (ckpt, g1) = results
    print(f"{method}: checkpointing vs not: loss {abs(plain - ckpt):.2e}, adapter gradients "
          f"{max((g0[k] - g1[k]).abs().max().item() for k in g0):.2e} (largest gradient "
          f"{max(g.abs().max().item() for g in g0.values()):.2e})")
    assert abs(plain - ckpt) < 1e-5 * abs(plain)
    assert max((g0[k] - g1[k]).abs().max().item() for k in g0) < 1e-6
    assert any(g.abs().max() > 0 for g in g0.values())


def test_grad_checkpoint_in_train_py_changes_nothing(stories_dir, data_dir, tmp_path):  # noqa: F811
    common = ["--method", "pera", "--max-steps", "3", "--lr", "1e-2", "--eval-every", "3", "--dropout", "0.05"]
    train.main(train_args(stories_dir, data_dir, tmp_path / "a", *common))
    train.main(train_args(stories_dir, data_dir, tmp_path / "b", *common, "--grad-checkpoint"))
    assert [r["loss"] for r in log(tmp_path / "a")] == pytest.approx([r["loss"] for r in log(tmp_path / "b")], abs=1e-5)


# -----------------------------------------------------------------------------
# The bf16 recipe, on CPU

@pytest.mark.parametrize("method, lr", [("lora", "1e-2"), ("hira", "1e-3")])
def test_bf16_step_matches_fp32_within_bf16_tolerance(stories_dir, data_dir, tmp_path, method, lr):  # noqa: F811
    """The GPU recipe on CPU: a bf16 base under autocast trains the float32 adapter as float32 does. For HiRA the
    update W0 ⊙ BA starts far below bf16's resolution of W0 (hira.py keeps it out of the rounded weight)."""
    common = ["--method", method, "--max-steps", "2", "--lr", lr, "--eval-every", "2", "--dropout", "0"]
    train.main(train_args(stories_dir, data_dir, tmp_path / "fp32", *common))
    train.main(train_args(stories_dir, data_dir, tmp_path / "bf16", *common, "--precision", "bf16"))
    a, b = log(tmp_path / "fp32"), log(tmp_path / "bf16")
    assert a[0]["loss"] != b[0]["loss"]  # it did run in bf16
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) < 0.01 * x["loss"] and abs(x["grad_norm"] - y["grad_norm"]) < 0.03 * x["grad_norm"]
    saved = load_safetensors(tmp_path / "bf16" / "adapter_model.safetensors")
    assert all(t.dtype == torch.float32 for t in saved.values())
    state = torch.load(tmp_path / "bf16" / "checkpoint" / "state.pt", weights_only=False)
    assert all(t.dtype == torch.float32 for t in state["trainable"].values())
    assert all(v.dtype == torch.float32 for s in state["optimizer"]["state"].values() for k, v in s.items()
               if k in ("exp_avg", "exp_avg_sq"))
    fp32 = load_safetensors(tmp_path / "fp32" / "adapter_model.safetensors")
    B = [k for k in fp32 if "_B" in k]  # B starts at 0: all of it is what the two steps learned
    errors = [((fp32[k] - saved[k]).norm() / fp32[k].norm()).item() for k in B]
    print(f"{method}: bf16 vs fp32 after 2 steps: loss {[x['loss'] - y['loss'] for x, y in zip(a, b)]}, "
          f"B relative error median {sorted(errors)[len(errors) // 2]:.2e}, max {max(errors):.2e}")
    # Adam's first steps move each entry by about ±lr whatever its gradient's size, so entries whose gradient is
    # near zero may go either way under bf16's noise: measured 13% (median); a wrong gradient gives ~100%
    assert all(fp32[k].norm() > 0 for k in B) and sorted(errors)[len(errors) // 2] < 0.25


# -----------------------------------------------------------------------------
# commonsense_170k: train.py takes it when it is there, and says so

def test_train_file_is_used_when_present_and_the_choice_is_printed(stories_dir, data_dir, tmp_path, capsys):  # noqa: F811
    import shutil
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    mix = [r for t in ("boolq", "ARC-Easy") for r in json.loads((data / t / "train.json").read_text())[:20]]
    (data / "commonsense_170k.json").write_text(json.dumps(mix))
    common = ["--max-steps", "1", "--eval-every", "1"]
    metrics = train.main(train_args(stories_dir, data, tmp_path / "mix", *common))
    out = capsys.readouterr().out
    assert f"training data: {data / 'commonsense_170k.json'}" in out and "24 training / 16 validation" in out
    assert metrics["tasks"] == ["commonsense_170k"]
    assert json.loads((tmp_path / "mix" / "args.json").read_text())["train_file"] == str(data / "commonsense_170k.json")
    train.main(train_args(stories_dir, data, tmp_path / "sets", *common, "--train-file", "none"))
    assert "training data: the per-task train sets" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train.parse_args(["--train-file", "x.json", "--tasks", "boolq"])
