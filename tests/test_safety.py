"""A hostile world (issue 22): one writer per folder, SIGTERM as Ctrl-C, no evaluation or merge lost or left
half-done, a full or read-only disk said in one line with everything written before kept.

Real processes and real signals where it matters: the lock is raced by processes released together, runs
are stopped by SIGTERM and SIGKILL at random moments (the seed is in each assertion's message), and the disks
are full or read-only for real where this machine allows (a small tmpfs, a read-only mount: root; chmod:
any other user), with the same write failures also simulated, so that every machine runs the code paths.
"""
import contextlib
import errno
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, fixture
from test_robustness import (COMMON, assert_same_run, ctrl_c_is_a_keyboard_interrupt, data_dir,  # noqa: F401
                             lock_held_by_another_process, run_as_script, stories_dir, straight, train_args)

import eval as evaluate
import merge
import train
from model import Transformer
from support import adapters, cli, safetensors_io, safety
from support.safetensors_io import load_safetensors
from tokenizer import Tokenizer

SEED = int(os.environ.get("PERA_TEST_SEED", time.time_ns() % 10**6))  # the random moments; set it to replay a run


def start(tool, *argv, folder):
    """`python tool argv` in the background, its output in folder/<tool>.out and .err."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{tool}.out", "w") as out, open(folder / f"{tool}.err", "w") as err:
        return subprocess.Popen([sys.executable, tool, *map(str, argv)], cwd=ROOT, stdout=out, stderr=err,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})


def output(tool, folder):
    return (folder / f"{tool}.out").read_text() + (folder / f"{tool}.err").read_text()


def wait_for(condition, process, what, timeout=300):
    end = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"the process ended before {what} (seed {SEED})"
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.005)


def lines(path):
    return len(path.read_text().splitlines()) if path.is_file() else 0


def predictions(partial):
    """The whole predictions in eval.py's partial file (after its settings line)."""
    kept = []
    for line in partial.read_text().splitlines()[1:]:
        try:
            kept.append(json.loads(line))
        except ValueError:
            break
    return kept


# -----------------------------------------------------------------------------
# One writer per folder: the lock

def contend(folder, trials, start_line, end_line, holders):
    """One of several processes: in each trial, released with the others, try to take folder's lock and hold
    it until every process has tried. Puts (trial, pid, message) in holders: message None for the holder."""
    for trial in range(trials):
        start_line.wait()
        try:
            with safety.folder_lock(folder):
                holders.put((trial, os.getpid(), None))
                end_line.wait()
        except SystemExit as e:
            holders.put((trial, os.getpid(), str(e.code)))
            end_line.wait()
        end_line.wait()  # the holder has let go too


@pytest.mark.parametrize("left", ["nothing", "a dead process's lock", "an empty lock", "a live process's pid"])
def test_processes_released_together_find_exactly_one_holder(tmp_path, left):
    """4 processes released at once by a barrier, 25 times, against a fresh folder or a lock file that a kill
    left behind: naming a dead process, empty (killed before writing its name), or naming a live process that
    holds no lock (a pid reused). One holder every time; each refusal is one line naming the folder."""
    n, trials, folder = 4, 25, tmp_path / "run"
    fork = multiprocessing.get_context("fork")
    start_line, end_line, holders = fork.Barrier(n + 1, timeout=120), fork.Barrier(n + 1, timeout=120), fork.Queue()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"nothing": None, "a dead process's lock": dead.pid, "an empty lock": "", "a live process's pid": os.getpid()}[left]
    workers = [fork.Process(target=contend, args=(folder, trials, start_line, end_line, holders)) for _ in range(n)]
    for w in workers:
        w.start()
    results = []
    for _ in range(trials):
        if stale is not None:
            folder.mkdir(exist_ok=True)
            (folder / ".lock").write_text(stale if stale == "" else
                                          json.dumps({"tool": "train.py", "pid": stale, "host": socket.gethostname()}))
        start_line.wait()
        end_line.wait()
        end_line.wait()
        results += [holders.get(timeout=60) for _ in range(n)]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    for trial in range(trials):
        mine = [(pid, message) for t, pid, message in results if t == trial]
        held = [pid for pid, message in mine if message is None]
        assert len(held) == 1, f"trial {trial}: {len(held)} holders"
        # each refusal is one line naming whom the lock file names: the holder, no one yet, or (in the instant
        # between the holder's lock and its name written) the name a killed run left there
        named = {f"another train.py (pid {pid} on host {socket.gethostname()})" for pid in (held[0], stale)}
        for pid, message in mine:
            if message is not None:
                assert message in {f"error: {folder} is in use by {who}; wait for it to end or choose another --out"
                                   for who in named | {"another process"}}, message
    assert not (folder / ".lock").exists()


@pytest.mark.slow
def test_a_sigkilled_run_never_blocks_the_next_and_two_resumes_at_once_give_one_run(straight, stories_dir, data_dir,
                                                                                   tmp_path):
    """A real train.py killed with SIGKILL at a random moment leaves its lock file (with its pid, which a live
    process may have by now); two `train.py --resume` started together on that folder: one continues the run to
    the uninterrupted run's adapter and log (every step once), the other is refused with one line."""
    rng, out = random.Random(SEED), tmp_path / "run"
    argv = train_args(stories_dir, data_dir, out, *COMMON, "--save-every", "2")
    run = start("train.py", *argv, folder=tmp_path / "killed")
    k = rng.randint(1, 4)
    wait_for(lambda: lines(out / "log.jsonl") >= k, run, f"step {k}")
    time.sleep(rng.uniform(0, 0.1))
    run.kill()
    run.wait()
    assert 0 < lines(out / "log.jsonl") < 6, f"not killed mid-run (seed {SEED})"
    assert json.loads((out / ".lock").read_text())["pid"] == run.pid
    (out / ".lock").write_text(json.dumps({"tool": "train.py", "pid": os.getpid(), "host": socket.gethostname()}))
    codes, outputs = released_together(tmp_path, [argv + ["--resume"]] * 2)
    assert sorted(codes) == [0, 1], f"{codes}: {outputs}"
    winner, loser = (outputs[codes.index(0)], outputs[codes.index(1)])
    refusal = [line for line in loser[1].splitlines() if line.strip()]
    # naming the winner (or, in the instant before it writes its name, the name the lock file held)
    assert len(refusal) == 1 and re.fullmatch(rf"error: {re.escape(str(out))} is in use by another train.py \(pid "
                                              rf"({winner[0]}|{os.getpid()}) on host {re.escape(socket.gethostname())}"
                                              rf"\); wait for it to end or choose another --out", refusal[0]), refusal
    assert_same_run(straight[0], out)


def released_together(tmp_path, argvs):
    """Run train.py once per argv, each in its own process, released together once all have started
    (train.main under cli.run, as `python train.py` runs it): the exit codes and each (pid, stdout + stderr)."""
    go = tmp_path / "go"
    code = ("import os, sys, time; sys.argv = sys.argv[1:]; import train; from support import cli\n"
            f"print('ready', flush=True)\nwhile not os.path.exists({str(go)!r}): time.sleep(0.001)\ncli.run(train.main)")
    runs = [subprocess.Popen([sys.executable, "-c", code, "train.py", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            for argv in argvs]
    for r in runs:
        assert r.stdout.readline() == "ready\n"
    go.touch()
    outputs = [r.communicate(timeout=600) for r in runs]
    return [r.returncode for r in runs], [(r.pid, o + e) for r, (o, e) in zip(runs, outputs)]


def test_eval_and_merge_hold_their_folders_too(stories_dir, tmp_path):
    out = tmp_path / "eval"
    with lock_held_by_another_process(out, "eval.py") as holder:
        with pytest.raises(SystemExit) as e:
            evaluate.main(["--model", str(stories_dir), "--data", str(fixture("commonsense")), "--out", str(out),
                           "--device", "cpu"])
    assert e.value.code.startswith(f"error: {out} is in use by another eval.py (pid {holder.pid} on host")
    adapter = small_adapter(stories_dir, tmp_path / "adapter", 1)
    merged = tmp_path / "merged"
    with lock_held_by_another_process(tmp_path / ".merged.partial", "merge.py") as holder:
        with pytest.raises(SystemExit) as e:
            cli.run(merge.main, ["--adapter", str(adapter), "--out", str(merged)])
    assert e.value.code.startswith(f"error: {merged} is in use by another merge.py (pid {holder.pid} on host")
    assert not merged.exists()


# -----------------------------------------------------------------------------
# SIGTERM is Ctrl-C: the step finishes, the state is saved, the run resumes to the uninterrupted one

@pytest.mark.slow
def test_sigterm_at_random_moments_resumes_to_the_uninterrupted_run(straight, stories_dir, data_dir, tmp_path):
    """Two sessions of a real train.py, each stopped by SIGTERM at a random moment of its training; then
    --resume ends on the uninterrupted run's adapter, log and metrics, byte for byte."""
    rng, out = random.Random(SEED), tmp_path / "run"
    argv = train_args(stories_dir, data_dir, out, *COMMON, "--save-every", "4")
    for session in range(2):
        logged = lines(out / "log.jsonl")
        run = start("train.py", *argv, *(["--resume"] if session else []), folder=tmp_path / str(session))
        k = min(logged + rng.randint(1, 2), 4)  # two steps are left: the signal comes inside the training
        wait_for(lambda: lines(out / "log.jsonl") >= k, run, f"step {k}")
        time.sleep(rng.uniform(0, 0.1))
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=300) == 1
        said = output("train.py", tmp_path / str(session))
        stopped = re.search(r"interrupted after step (\d+); state saved in (\S+)\. Continue", said)
        assert "SIGTERM: finishing this step, then saving" in said and stopped, f"seed {SEED}: {said}"
        step = int(stopped[1])
        assert k <= step <= 6 and stopped[2] == str(out / "checkpoint" / "state.pt"), f"seed {SEED}"
        assert torch.load(out / "checkpoint" / "state.pt", weights_only=False)["step"] == step
    train.main(argv + ["--resume"])
    assert_same_run(straight[0], out)


# -----------------------------------------------------------------------------
# eval.py: an evaluation is never lost, never replaced silently, never mixed with another

@pytest.fixture(scope="module")
def eval_common(stories_dir):
    """Zero-shot stories260K on the fixtures' 62 test records of the seven tasks, one example a batch."""
    return ["--model", str(stories_dir), "--data", str(fixture("commonsense")), "--batch-size", "1",
            "--max-new-tokens", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def eval_straight(eval_common, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "straight"
    return out, evaluate.main([*eval_common, "--out", str(out)])


def same_evaluation(a, b):
    assert (a / "predictions.jsonl").read_text() == (b / "predictions.jsonl").read_text()
    ra, rb = (json.loads((x / "results.json").read_text()) for x in (a, b))
    assert {k: v for k, v in ra.items() if k != "seconds"} == {k: v for k, v in rb.items() if k != "seconds"}
    assert not (b / evaluate.PARTIAL).exists()


def answered(monkeypatch):
    """The examples eval.py answers from now on, counted."""
    count = []
    real = evaluate.generate_answers
    monkeypatch.setattr(evaluate, "generate_answers", lambda m, t, task, records, *a: count.extend(records) or
                        real(m, t, task, records, *a))
    return count


@pytest.mark.slow
def test_eval_sigterm_keeps_the_predictions_and_the_same_command_continues(eval_common, eval_straight, tmp_path,
                                                                          monkeypatch):
    rng, out = random.Random(SEED), tmp_path / "eval"
    run = start("eval.py", *eval_common, "--out", out, folder=tmp_path)
    k = rng.randint(2, 40)
    wait_for(lambda: lines(out / evaluate.PARTIAL) >= 1 + k, run, f"{k} predictions")
    time.sleep(rng.uniform(0, 0.05))
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=300) == 1
    said = output("eval.py", tmp_path)
    stopped = re.search(r"interrupted after (\d+) of 62 examples; their predictions are kept in (\S+): the same "
                        r"command continues from there", said)
    assert "SIGTERM: finishing this step" in said and stopped, f"seed {SEED}: {said}"
    n = int(stopped[1])
    assert k <= n < 62 and lines(out / evaluate.PARTIAL) == 1 + n, f"seed {SEED}"
    # other settings do not continue it (nor mix with it); the same command does, answering only the rest
    with pytest.raises(SystemExit) as e:
        evaluate.main([*eval_common, "--out", str(out), "--limit", "3"])
    assert e.value.code == (f"error: {out} holds an unfinished evaluation with other settings (limit None there, 3 "
                            f"here); pass --overwrite to discard it, or choose another --out")
    count = answered(monkeypatch)
    evaluate.main([*eval_common, "--out", str(out)])
    assert len(count) == 62 - n
    same_evaluation(eval_straight[0], out)


def test_eval_a_second_signal_stops_at_once(eval_common, eval_straight, tmp_path, monkeypatch):
    """Two real SIGTERMs inside the third batch: it is abandoned, the two before it are kept and continued."""
    out, real, calls = tmp_path / "eval", evaluate.generate_answers, []

    def twice(*a):
        calls.append(1)
        for _ in range(2 if len(calls) == 3 else 0):
            signal.raise_signal(signal.SIGTERM)
        return real(*a)

    monkeypatch.setattr(evaluate, "generate_answers", twice)
    with pytest.raises(SystemExit) as e:
        evaluate.main([*eval_common, "--out", str(out)])
    assert e.value.code == (f"\ninterrupted twice after 2 of 62 examples; their predictions are kept in "
                            f"{out / evaluate.PARTIAL}: the same command continues from there")
    assert len(predictions(out / evaluate.PARTIAL)) == 2 and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    monkeypatch.undo()
    count = answered(monkeypatch)
    evaluate.main([*eval_common, "--out", str(out)])
    assert len(count) == 60
    same_evaluation(eval_straight[0], out)


def test_eval_never_replaces_an_evaluation_silently(eval_common, eval_straight, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    shutil.copytree(eval_straight[0], out)
    before = (out / "results.json").read_text()
    with pytest.raises(SystemExit) as e:  # the 2.5-hour evaluation and a quick look into the same folder
        evaluate.main([*eval_common, "--out", str(out), "--limit", "1"])
    assert e.value.code == (f"error: {out} already holds an evaluation (results.json); pass --overwrite to replace "
                            f"it, or choose another --out")
    assert (out / "results.json").read_text() == before
    result = evaluate.main([*eval_common, "--out", str(out), "--limit", "1", "--overwrite"])
    assert json.loads((out / "results.json").read_text()) == result and result["tasks"]["boolq"]["n"] == 1


def test_eval_a_late_write_failure_keeps_the_predictions(eval_common, eval_straight, tmp_path, monkeypatch):
    """The disk is full when results.json is written, after every example: one line, and the predictions are
    kept; the same command, once there is room, answers nothing again."""
    out, real = tmp_path / "eval", adapters.write_json

    def full(path, obj):
        if Path(path).name == "results.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write's error: no file named
        real(path, obj)

    monkeypatch.setattr(adapters, "write_json", full)
    with pytest.raises(SystemExit) as e:
        evaluate.main([*eval_common, "--out", str(out)])
    assert e.value.code == (f"error: {out}: No space left on device; the predictions of 62 examples are kept in "
                            f"{out / evaluate.PARTIAL}; the same command continues")
    monkeypatch.setattr(adapters, "write_json", real)
    count = answered(monkeypatch)
    evaluate.main([*eval_common, "--out", str(out)])
    assert count == []
    same_evaluation(eval_straight[0], out)


# -----------------------------------------------------------------------------
# merge.py: no partial folder left behind, no adapter merged twice

def small_adapter(stories_dir, folder, seed):
    """A LoRA adapter of stories260K with random B (a nonzero update), written as train.py writes one."""
    torch.manual_seed(seed)
    model = Transformer.from_pretrained(stories_dir)
    spec = adapters.settings("lora", 2)
    adapters.inject(model, spec)
    for layer in adapters.adapter_layers(model, "lora").values():
        torch.nn.init.normal_(layer.B, std=0.02)
    adapters.save_adapter(model, folder, spec, base_model=str(stories_dir))
    return folder


MERGE_PARTS = {"loading the adapter": (adapters, "load_adapter"), "merging": (adapters, "merge"),
               "writing the weights": (safetensors_io, "save_safetensors"), "copying the tokenizer": (shutil, "copyfile")}


@pytest.mark.parametrize("part", MERGE_PARTS)
def test_merge_sigterm_in_any_part_leaves_nothing(stories_dir, tmp_path, monkeypatch, capsys, part):
    """`python merge.py`, and a real SIGTERM while it does one of its parts: one line, exit 130, no --out and no
    partial folder."""
    adapter, out = small_adapter(stories_dir, tmp_path / "adapter", 1), tmp_path / "merged"
    owner, name = MERGE_PARTS[part]
    real, arrived = getattr(owner, name), []

    def signalled(*a, **kw):
        arrived.append(name)
        signal.raise_signal(signal.SIGTERM)
        return real(*a, **kw)

    monkeypatch.setattr(owner, name, signalled)
    code = run_as_script("merge.py", ["--adapter", str(adapter), "--out", str(out)], monkeypatch)
    assert arrived and code == 130 and capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


@pytest.mark.slow
def test_merge_sigkill_leaves_a_partial_folder_that_the_next_merge_removes(stories_dir, tmp_path):
    """A real merge.py killed with SIGKILL after one of its parts, chosen at random, leaves its partial folder
    (the lock file, made first, in it); the next merge into the same --out removes it and writes what an
    uninterrupted merge writes."""
    adapter, out = small_adapter(stories_dir, tmp_path / "adapter", 1), tmp_path / "merged"
    owner, name = MERGE_PARTS[random.Random(SEED).choice(sorted(MERGE_PARTS))]
    killer = (f"import importlib, os, signal, sys; sys.argv = sys.argv[1:]\n"
              f"owner = importlib.import_module({owner.__name__!r}); real = owner.{name}\n"
              f"def killed(*a, **kw):\n    real(*a, **kw); os.kill(os.getpid(), signal.SIGKILL)\n"
              f"owner.{name} = killed\nimport merge; from support import cli; cli.run(merge.main)")
    kill = subprocess.run([sys.executable, "-c", killer, "merge.py", "--adapter", str(adapter), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert kill.returncode == -signal.SIGKILL, kill.stderr
    assert (tmp_path / ".merged.partial" / ".lock").is_file() and not out.exists(), f"seed {SEED}"
    merge.main(["--adapter", str(adapter), "--out", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "merged"]
    clean = tmp_path / "clean" / "merged"
    merge.main(["--adapter", str(adapter), "--out", str(clean)])
    assert (out / "model.safetensors").read_bytes() == (clean / "model.safetensors").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean.iterdir())


def test_merge_refuses_a_folder_in_its_way_that_it_did_not_make(stories_dir, tmp_path):
    adapter, partial = small_adapter(stories_dir, tmp_path / "adapter", 1), tmp_path / ".merged.partial"
    partial.mkdir()
    (partial / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        cli.run(merge.main, ["--adapter", str(adapter), "--out", str(tmp_path / "merged")])
    assert e.value.code == (f"error: {partial} is in the way: merge.py writes there, and it was not made by merge.py")
    assert (partial / "notes.txt").read_text() == "mine"


def test_merge_refuses_an_adapter_the_model_already_has(stories_dir, tmp_path):
    """W0 + ΔW merged again would be W0 + 2ΔW: refused, naming both, however far back in the chain of merges,
    and wherever the adapter was copied; another adapter merges onto a merged model."""
    a, b = small_adapter(stories_dir, tmp_path / "a", 1), small_adapter(stories_dir, tmp_path / "b", 2)
    merge.main(["--adapter", str(a), "--out", str(tmp_path / "m1")])
    shutil.copytree(a, tmp_path / "a-copy")
    with pytest.raises(SystemExit) as e:
        cli.run(merge.main, ["--adapter", str(tmp_path / "a-copy"), "--model", str(tmp_path / "m1"),
                             "--out", str(tmp_path / "twice")])
    assert e.value.code == (f"error: {tmp_path / 'm1'} already has {tmp_path / 'a-copy'} merged into it (its "
                            f"merged_from.json: adapter {a}, merged into {stories_dir}); merging it again would add "
                            f"its update twice")
    merge.main(["--adapter", str(b), "--model", str(tmp_path / "m1"), "--out", str(tmp_path / "m2")])
    with pytest.raises(SystemExit) as e:
        cli.run(merge.main, ["--adapter", str(a), "--model", str(tmp_path / "m2"), "--out", str(tmp_path / "twice")])
    assert f"(its merged_from.json: adapter {a}, merged into {stories_dir})" in e.value.code
    assert not (tmp_path / "twice").exists() and not (tmp_path / ".twice.partial").exists()
    # what was allowed is right: m2 holds W0 + ΔW_a, then + ΔW_b, as the adapters merged in turn in memory
    model = Transformer.from_pretrained(stories_dir)
    for adapter in (a, b):
        adapters.merge(model, adapters.load_adapter(model, adapter)["method"])
    m2 = load_safetensors(tmp_path / "m2" / "model.safetensors")
    assert m2.keys() == model.state_dict().keys() and all(torch.equal(m2[k], t) for k, t in model.state_dict().items())


# -----------------------------------------------------------------------------
# A full or read-only disk: one line naming the path and the cause; what was written before stays

@contextlib.contextmanager
def small_disk(folder, size):
    """folder on a tmpfs of `size` bytes: a disk that fills for real. Mounting needs root."""
    if os.geteuid() != 0:
        pytest.skip("a real full disk is a small tmpfs, and mounting one needs root (the simulated tests "
                    "cover the same code)")
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]).returncode:
        pytest.skip("root here may not mount a tmpfs (no CAP_SYS_ADMIN)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@contextlib.contextmanager
def read_only(folder):
    """folder made read-only for real: chmod for a user; for root, whom modes do not stop, a read-only bind mount."""
    if os.geteuid() != 0:
        folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
        for f in folders:
            f.chmod(0o555)
        try:
            yield
        finally:
            for f in folders:
                f.chmod(0o755)
        return
    if subprocess.run(["mount", "--bind", str(folder), str(folder)]).returncode:
        pytest.skip("root here may not mount, and modes do not stop root: no read-only folder can be made")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def fill(folder, leave):
    """Fill the disk of folder to `leave` bytes free."""
    free = shutil.disk_usage(folder).free
    (folder / "filler").write_bytes(b"\0" * (free - leave))
    return folder / "filler"


def test_train_on_a_disk_that_fills_stops_with_one_line_and_resumes(straight, stories_dir, data_dir, tmp_path,
                                                                    monkeypatch):
    """A real full disk in the middle of a run (a tmpfs, filled after step 3): one line naming the folder and the
    cause, the state and best adapter saved before are kept, and once there is room --resume ends on the
    uninterrupted run."""
    with small_disk(tmp_path / "disk", 2 << 20) as disk:
        out = disk / "run"
        argv = train_args(stories_dir, data_dir, out, *COMMON, "--save-every", "2")
        filler = []
        monkeypatch.setattr(train, "on_step", lambda step, record: step == 3 and filler.append(fill(disk, 4096)))
        with pytest.raises(SystemExit) as e:
            train.main(argv)
        monkeypatch.undo()
        state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
        assert e.value.code == (f"error: {out}: No space left on device: stopped without saving this step. Kept: the "
                                f"state after step 2 in {out / 'checkpoint' / 'state.pt'}, and the best adapter so far "
                                f"(step 3) in {out}. Make room (or make it writable), then continue with the same "
                                f"arguments plus --resume.")
        assert state["step"] == 2 and not [p for p in out.rglob("*") if safety.TEMPORARY.fullmatch(p.name)]
        filler[0].unlink()
        train.main(argv + ["--resume"])
        assert_same_run(straight[0], out)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS])
def test_train_write_refused_simulated(straight, stories_dir, data_dir, tmp_path, monkeypatch, error):
    """The same as the real full disk, anywhere: every file written after step 3 is refused as a full (or
    read-only) disk refuses it, at the rename that would replace the old file."""
    out = tmp_path / "run"
    argv = train_args(stories_dir, data_dir, out, *COMMON, "--save-every", "2")
    real_replace, after_step_3 = os.replace, []

    def refused(src, dst, **kw):
        if after_step_3:
            raise OSError(error, os.strerror(error), str(src))
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", refused)
    monkeypatch.setattr(train, "on_step", lambda step, record: step == 3 and after_step_3.append(step))
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    monkeypatch.undo()
    assert re.fullmatch(rf"error: {re.escape(str(out))}/checkpoint/state\.pt\.tmp: {os.strerror(error)}: stopped "
                        rf"without saving this step\. Kept: the state after step 2 in .*, and the best adapter so far "
                        rf"\(step 3\) in {re.escape(str(out))}\. .*", e.value.code)
    train.main(argv + ["--resume"])
    assert_same_run(straight[0], out)


def test_read_only_folders_are_one_line_before_any_work(stories_dir, data_dir, tmp_path, monkeypatch):
    """train.py, eval.py (and --rank-report) and merge.py on a read-only folder: one line naming the path and
    the cause, before the model is loaded (a bug would keep its traceback)."""
    adapter = small_adapter(stories_dir, tmp_path / "ro" / "adapter", 1)
    monkeypatch.setattr(Transformer, "from_pretrained", lambda *a, **kw: pytest.fail("the model was loaded"))
    cause = os.strerror(errno.EACCES if os.geteuid() else errno.EROFS)
    ro = tmp_path / "ro"
    with read_only(ro):
        for tool, argv, path in [
                (train, train_args(stories_dir, data_dir, ro / "run"), ro / "run"),
                (evaluate, ["--model", str(stories_dir), "--data", str(data_dir), "--out", str(ro / "eval")],
                 ro / "eval"),
                (evaluate, ["--adapter", str(adapter), "--rank-report", "--device", "cpu"], adapter),
                (merge, ["--adapter", str(adapter), "--out", str(ro / "merged")], ro / ".merged.partial")]:
            with pytest.raises(SystemExit) as e:
                cli.run(tool.main, argv)
            assert re.fullmatch(rf"error: {re.escape(str(path))}(/\S*)?: {cause}", e.value.code), e.value.code
    assert sorted(p.name for p in ro.iterdir()) == ["adapter"]
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_eval_on_a_disk_that_fills_keeps_what_it_answered(eval_common, eval_straight, tmp_path, monkeypatch):
    with small_disk(tmp_path / "disk", 1 << 20) as disk:
        out, real = disk / "eval", evaluate.generate_answers

        def fills(*a):
            if lines(out / evaluate.PARTIAL) > 10 and not (disk / "filler").exists():
                fill(disk, 0)
            return real(*a)

        monkeypatch.setattr(evaluate, "generate_answers", fills)
        with pytest.raises(SystemExit) as e:
            evaluate.main([*eval_common, "--out", str(out)])
        kept = len(predictions(out / evaluate.PARTIAL))  # the last line may be cut short: it is not kept
        assert e.value.code == (f"error: {out}: No space left on device; the predictions of {kept} examples are "
                                f"kept in {out / evaluate.PARTIAL}; the same command continues")
        assert kept > 10
        (disk / "filler").unlink()
        monkeypatch.undo()
        count = answered(monkeypatch)
        evaluate.main([*eval_common, "--out", str(out)])
        assert len(count) == 62 - kept
        same_evaluation(eval_straight[0], out)


def test_merge_write_refused_simulated(stories_dir, tmp_path, monkeypatch):
    """A full disk anywhere: the weights' rename refused as ENOSPC; one line, and nothing left behind."""
    adapter, out = small_adapter(stories_dir, tmp_path / "adapter", 1), tmp_path / "merged"
    real_replace = os.replace

    def full(src, dst, **kw):
        if Path(dst).name == "model.safetensors":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(SystemExit) as e:
        cli.run(merge.main, ["--adapter", str(adapter), "--out", str(out)])
    assert e.value.code == f"error: {tmp_path}: No space left on device; nothing was written to {out}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_merge_on_a_disk_too_small_leaves_nothing(stories_dir, tmp_path):
    adapter = small_adapter(stories_dir, tmp_path / "adapter", 1)
    with small_disk(tmp_path / "disk", 512 << 10) as disk:  # the merged weights are 1.1 MB
        with pytest.raises(SystemExit) as e:
            cli.run(merge.main, ["--adapter", str(adapter), "--out", str(disk / "merged")])
        assert e.value.code == f"error: {disk}: No space left on device; nothing was written to {disk / 'merged'}"
        assert list(disk.iterdir()) == []


# -----------------------------------------------------------------------------
# A non-finite step keeps the last finite state; positions; what --resume compares

def test_a_non_finite_step_keeps_the_last_state_whose_next_step_was_finite(stories_dir, data_dir, tmp_path):
    """--lr 1e30: step 1's update leaves finite parameters (about 1e30) whose forward pass is NaN at step 2. The state
    after step 1, saved (--save-every 1), is not the one kept: the state before it is put back and named."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        train.main(train_args(stories_dir, data_dir, out, "--max-steps", "3", "--lr", "1e30", "--save-every", "1"))
    assert e.value.code.startswith("error: loss is nan at step 2: stopped without saving this step. Kept: the state "
                                   "after step 0 in "), e.value.code
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 0 and state["history"] == []
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["fingerprint.json", "state.pt"]


def test_training_cuts_examples_to_the_models_positions(stories_dir, data_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(stories_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 64}))
    args = train.parse_args(train_args(model, data_dir, tmp_path / "run", "--max-steps", "1"))
    tokenizer = Tokenizer.from_file(model / "tokenizer.json")
    _, whole, _ = train.load_examples(args, tokenizer, tokenizer.add_bos)
    _, cut, _ = train.load_examples(args, tokenizer, tokenizer.add_bos, positions=64)
    assert max(len(ids) for ids, _ in whole) > 64 and max(len(ids) for ids, _ in cut) == 64
    for (ids, labels), (kept, kept_labels) in zip(whole, cut):  # BOS, then the last tokens, the response's
        assert (kept, kept_labels) == ((ids, labels) if len(ids) <= 64 else (ids[:1] + ids[-63:], labels[:1] + labels[-63:]))
    n = sum(len(ids) > 64 for ids, _ in whole) + sum(len(ids) > 64 for ids, _ in train.load_examples(
        args, tokenizer, tokenizer.add_bos)[2])
    capsys.readouterr()
    train.main(train_args(model, data_dir, tmp_path / "run", "--max-steps", "1"))
    assert f"cut {n} training examples to the model's 64 positions (max_position_embeddings)" in capsys.readouterr().out


def test_resume_refuses_what_would_change_the_run_and_takes_respelled_paths(stories_dir, data_dir, tmp_path,
                                                                            monkeypatch):
    model, data = tmp_path / "model", tmp_path / "data"
    shutil.copytree(stories_dir, model)
    shutil.copytree(data_dir, data)
    out = tmp_path / "run"
    argv = train_args(model, data, out, "--max-steps", "1", "--dropout", "0.1", "--eval-every", "5")
    train.main(argv)

    def refused(argv, message):
        with pytest.raises(SystemExit) as e:
            train.main(argv + ["--resume"])
        assert message in e.value.code and e.value.code.startswith("error: --resume: "), e.value.code

    refused(argv + ["--micro-batch-size", "4"], "--micro-batch-size differ")  # other dropout masks per example
    refused(argv + ["--eval-every", "3"], "--eval-every differ")
    records = json.loads((data / "boolq" / "train.json").read_text())
    (data / "boolq" / "train.json").write_text(json.dumps(records[::-1]))  # the same path, other contents
    refused(argv, "the files of --data differ from the saved run's in")
    (data / "boolq" / "train.json").write_text(json.dumps(records))
    config = (model / "config.json").read_text()
    (model / "config.json").write_text(config.replace("512", "511", 1))
    refused(argv, "the files of --model differ from the saved run's in")
    (model / "config.json").write_text(config)
    # the same files under other spellings: a link to the model, a relative path to the data
    (tmp_path / "link").symlink_to(model)
    monkeypatch.chdir(tmp_path)
    metrics = train.main(train_args(Path("link"), Path("./data/."), out, "--max-steps", "1", "--dropout", "0.1",
                                    "--eval-every", "5", "--resume"))
    assert metrics["steps"] == 1
    # --train-file: a link to the file is the file; other contents are refused
    (tmp_path / "mix.json").write_text(json.dumps(records))
    (tmp_path / "mix-link.json").symlink_to(tmp_path / "mix.json")
    argv = train_args(model, data, tmp_path / "mixed", "--max-steps", "1", "--train-file", "mix.json")
    train.main(argv)
    train.main(argv[:argv.index("mix.json")] + ["mix-link.json", "--resume"] + argv[argv.index("mix.json") + 1:])
    (tmp_path / "mix.json").write_text(json.dumps(records[1:]))
    refused(argv, "the files of --train-file differ")
