"""Interrupted, concurrent and malformed runs (issue 15): never a wrong result, never a stuck folder, one clear line.

On the real stories260K model and small copies of the real data, like tests/test_train_eval.py.
"""
import contextlib
import json
import math
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import HERE_FIXTURES, ROOT, fixture

import eval as evaluate
import generate
import merge
import train
from experiments import bench
from model import Transformer
from support import adapters, cli, commonsense, safety
from support.safetensors_io import load_safetensors
from tokenizer import Tokenizer

# The run every interrupted or killed run below must end up as (save_every changes no result).
COMMON = ["--method", "pera", "--max-steps", "6", "--lr", "5e-3", "--eval-every", "3", "--dropout", "0.1"]


@pytest.fixture(autouse=True)
def ctrl_c_is_a_keyboard_interrupt():
    """Ctrl-C as in a terminal, even where the test runner itself ignores SIGINT (a shell's background job
    inherits SIG_IGN, and Python then installs no KeyboardInterrupt handler): these tests send real SIGINTs."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def stories_dir():
    return fixture("models", "stories260K")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """48 training records of two tasks and 12 boolq test records, from the real sets."""
    src, dst = fixture("commonsense"), tmp_path_factory.mktemp("data")
    for task, split, n in [("boolq", "train", 48), ("ARC-Easy", "train", 48), ("boolq", "test", 12)]:
        (dst / task).mkdir(exist_ok=True)
        (dst / task / f"{split}.json").write_text(json.dumps(json.loads((src / task / f"{split}.json").read_text())[:n]))
    return dst


def train_args(stories_dir, data_dir, out, *extra):
    return ["--model", str(stories_dir), "--data", str(data_dir), "--out", str(out), "--rank", "4",
            "--batch-size", "8", "--val-size", "16", "--warmup-steps", "2", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def straight(stories_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    metrics = train.main(train_args(stories_dir, data_dir, out, *COMMON))
    assert metrics["best_step"] == 6  # the last step has the best adapter: the interrupt in its save matters
    return out, metrics


def log(out):
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (out / "log.jsonl").read_text().splitlines()]


def assert_same_run(a, b):
    ta, tb = load_safetensors(a / "adapter_model.safetensors"), load_safetensors(b / "adapter_model.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert log(a) == log(b)
    timing = {"seconds_this_session", "seconds", "seconds_per_step", "tokens_per_second"}
    ma, mb = (json.loads((run / "metrics.json").read_text()) for run in (a, b))
    assert {k: v for k, v in ma.items() if k not in timing} == {k: v for k, v in mb.items() if k not in timing}


def interrupt_inside(monkeypatch, owner, name, hits, times, signum=signal.SIGINT):
    """Wrap owner.name so that its first call sends this process `times` real signals (SIGINT: Ctrl-C), then
    does its work."""
    real = getattr(owner, name)

    def wrapped(*a, **kw):
        hits.append(name)
        for _ in range(times if len(hits) == 1 else 0):
            signal.raise_signal(signum)
        return real(*a, **kw)

    monkeypatch.setattr(owner, name, wrapped)


# -----------------------------------------------------------------------------
# Interrupts and kills resume to the uninterrupted run

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C, and what schedulers send
def test_ctrl_c_inside_validation_or_saving_resumes_to_the_uninterrupted_run(straight, stories_dir, data_dir,
                                                                              tmp_path, monkeypatch, signum):
    out, handler = tmp_path / "run", signal.getsignal(signum)
    argv = train_args(stories_dir, data_dir, out, *COMMON, "--save-every", "2")
    # one session per place: validation (step 3), the forward pass and the state save (step 4, Ctrl-C twice: step 4
    # is abandoned and the next session starts after step 3), the best adapter's save (step 6)
    for owner, name, times, message in [(train, "validation_loss", 1, "interrupted after step 3;"),
                                        (train, "forward_backward", 2, "stopped inside step 4, without saving it; the "
                                                                       "state after step 3"),
                                        (safety, "save_state", 2, "stopped inside step 4, without saving it; the "
                                                                 "state after step 3"),
                                        (adapters, "save_adapter", 1, "interrupted after step 6;")]:
        hits = []
        with monkeypatch.context() as m:
            interrupt_inside(m, owner, name, hits, times, signum)
            with pytest.raises(SystemExit, match=message):
                train.main(argv + (["--resume"] if name != "validation_loss" else []))
        assert hits[:1] == [name], f"the SIGINT was not sent inside {name}"
        assert signal.getsignal(signum) is handler  # the signal is the user's again
    # the last session ended with the run's last step: resuming it (with the paths spelled differently) only
    # writes metrics.json, with the timings of the sessions that trained, not zeros
    clock = torch.load(out / "checkpoint" / "state.pt", weights_only=False)["clock"]
    metrics = train.main(train_args(f"{stories_dir}/", f"{data_dir}/./", out, *COMMON, "--resume"))
    assert metrics["seconds"] == round(clock["seconds"], 1) > 0 and metrics["seconds_per_step"] > 0
    assert metrics["tokens_per_second"] == round(clock["tokens"] / clock["seconds"], 1) and clock["tokens"] > 0
    assert_same_run(straight[0], out)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_ignored_signal_stays_ignored(signum):
    """Under nohup or as a background job SIGINT is ignored (SIGTERM where a caller chose to): holding it
    during a step must not undo that."""
    previous = signal.signal(signum, signal.SIG_IGN)
    try:
        stops = safety.StopSignals()
        stops.hold()
        signal.raise_signal(signum)
        stops.check()  # nothing held, nothing raised
        stops.release()
        assert signal.getsignal(signum) == signal.SIG_IGN
    finally:
        signal.signal(signum, previous)


class Killed(BaseException):
    """A SIGKILL, in process: no handler of train.py runs."""


def test_a_kill_between_first_adapter_and_first_state_resumes_and_leftovers_go(straight, stories_dir, data_dir,
                                                                               tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = train_args(stories_dir, data_dir, out, *COMMON, "--save-every", "20")

    def kill(step, record):
        if step == 4:  # the adapter of step 3 is written; the first --save-every state would be at step 20
            raise Killed

    monkeypatch.setattr(train, "on_step", kill)
    with pytest.raises(Killed):
        train.main(argv)
    monkeypatch.undo()
    assert (out / "adapter_model.safetensors").is_file()
    # what kills leave behind: temporary files half written, and a lock whose process is gone
    leftovers = [out / ".adapter_model.safetensors.tmp4242", out / ".adapter_config.json.tmp17",
                 out / "checkpoint" / "state.pt.tmp"]
    for f in leftovers:
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"half")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with pytest.raises(SystemExit, match="already holds a run; pass --resume"):
        train.main(argv)
    train.main(argv + ["--resume"])
    assert not any(f.exists() for f in leftovers) and not (out / ".lock").exists()
    assert_same_run(straight[0], out)


def test_a_second_writer_is_refused_with_one_line(stories_dir, data_dir, tmp_path, monkeypatch):
    out, refusals = tmp_path / "run", []
    argv = train_args(stories_dir, data_dir, out, "--max-steps", "2", "--eval-every", "2", "--val-size", "0")

    def second_writer(step, record):  # a second train.py on the same --out while the first trains
        with pytest.raises(SystemExit) as e:
            train.main(argv + ["--resume"])
        refusals.append(e.value.code)

    monkeypatch.setattr(train, "on_step", second_writer)
    train.main(argv)
    assert len(refusals) == 2 and f"error: {out} is in use by another train.py (pid {os.getpid()}" in refusals[0]
    assert len(log(out)) == 2 and not (out / ".lock").exists()
    # a lock held by another live process refuses a run before it writes anything
    monkeypatch.undo()
    other = tmp_path / "other"
    with lock_held_by_another_process(other) as holder:
        with pytest.raises(SystemExit, match=f"in use by another train.py \\(pid {holder.pid} on host"):
            train.main(train_args(stories_dir, data_dir, other, "--max-steps", "1"))
        assert [p.name for p in other.iterdir()] == [".lock"]


@contextlib.contextmanager
def lock_held_by_another_process(folder, tool="train.py"):
    """A process that holds folder's lock (as train.py, eval.py or merge.py would) until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, pathlib; from support import safety\n"
                               f"with safety.folder_lock(pathlib.Path(sys.argv[1]), {tool!r}):\n"
                               "    print('held', flush=True); sys.stdin.read()", str(folder)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0


def test_only_the_first_process_of_a_torchrun_job_takes_the_lock(tmp_path, monkeypatch):
    for rank, held in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        with safety.folder_lock(tmp_path / "run"):
            assert (tmp_path / "run" / ".lock").exists() == held
    assert not (tmp_path / "run" / ".lock").exists()


# -----------------------------------------------------------------------------
# Smaller: metrics.json, the adapter's base model, the NaN stop's message

def test_no_validation_set_and_another_directory(stories_dir, data_dir, tmp_path, monkeypatch):
    """--val-size 0 writes valid JSON; the adapter names its base model as given (relative here), and eval.py
    reads it from its own folder (a sibling, where the same relative path names the same model)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    model = os.path.relpath(stories_dir)
    train.main(train_args(model, data_dir, "run", "--max-steps", "2", "--eval-every", "2", "--val-size", "0"))

    def no_nan(constant):
        raise ValueError(f"{constant} is not JSON")

    metrics = json.loads((tmp_path / "a" / "run" / "metrics.json").read_text(), parse_constant=no_nan)
    assert metrics["best_val_loss"] is None and metrics["best_step"] == 2
    monkeypatch.chdir(tmp_path / "b")
    result = evaluate.main(["--adapter", str(tmp_path / "a" / "run"), "--data", str(data_dir), "--limit", "1",
                            "--max-new-tokens", "2", "--device", "cpu", "--out", "eval"])
    assert result["model"] == model and result["tasks"]["boolq"]["n"] == 1


def test_nan_stop_says_what_was_kept(stories_dir, data_dir, tmp_path, monkeypatch):
    real = train.loss_sum
    monkeypatch.setattr(train, "loss_sum", lambda model, ids, labels: (real(model, ids, labels)[0] * math.nan, 1))
    with pytest.raises(SystemExit) as e:
        train.main(train_args(stories_dir, data_dir, tmp_path / "run", "--max-steps", "4"))
    message = e.value.code
    assert message.startswith("error: loss is nan at step 1") and "the state after step 0" in message
    assert "no adapter (none was saved yet)" in message and not (tmp_path / "run" / "adapter_model.safetensors").exists()


# -----------------------------------------------------------------------------
# eval.py: gold answers, prompts longer than the model

def with_test_records(data_dir, tmp_path, edit):
    """A copy of data_dir whose boolq test set is edit(records)."""
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    records = json.loads((copy / "boolq" / "test.json").read_text())
    (copy / "boolq" / "test.json").write_text(json.dumps(edit(records)))
    return copy


@pytest.mark.parametrize("answer, output, message", [
    ("", "I cannot tell", "answer '', output 'I cannot tell'"),  # would match an unparsed output: None == None
    ("yes", "the correct answer is yes", "answer 'yes'"),  # another label set: a silent 0 % otherwise
])
def test_a_gold_answer_outside_the_tasks_labels_is_an_error_naming_file_and_record(stories_dir, data_dir, tmp_path,
                                                                                  answer, output, message):
    data = with_test_records(data_dir, tmp_path, lambda rs: rs[:3] + [{**rs[3], "answer": answer, "output": output}])
    with pytest.raises(SystemExit) as e:
        cli.run(evaluate.main, ["--model", str(stories_dir), "--data", str(data), "--device", "cpu",
                                "--out", str(tmp_path / "eval")])
    assert e.value.code.startswith(f"error: {data / 'boolq' / 'test.json'}: 1 of 4 records have no gold answer "
                                   f"among boolq's labels (true, false); the first is record 3: {message}")


def test_prompts_longer_than_the_model_keep_their_end_and_are_counted(stories_dir, tokenizer_and_model, data_dir,
                                                                     tmp_path):
    tokenizer, model = tokenizer_and_model
    long_text = " ".join(["Once upon a time there was a little dog who liked to run in the park."] * 60)
    data = with_test_records(data_dir, tmp_path, lambda rs: [{**rs[0], "instruction": long_text + rs[0]["instruction"]},
                                                             rs[1]])
    record = json.loads((data / "boolq" / "test.json").read_text())[0]
    ids = tokenizer.encode(commonsense.prompt(record), bos=True)
    assert len(ids) > 2 * model.config.max_position_embeddings  # 512 positions
    results = {}
    for mode in ("generate", "loglik"):
        results[mode] = evaluate.main(["--model", str(stories_dir), "--data", str(data), "--mode", mode,
                                       "--max-new-tokens", "4", "--device", "cpu", "--out", str(tmp_path / mode)])
        assert results[mode]["tasks"]["boolq"]["prompts_cut"] == 1
    first = json.loads((tmp_path / "generate" / "predictions.jsonl").read_text().splitlines()[0])
    kept = [ids[0]] + ids[len(ids) - 508 + 1:]  # BOS, then the last tokens: 512 positions less 4 for the answer
    assert first["tokens_cut"] == len(ids) - 508
    new = model.generate(torch.tensor([kept]), 4, eos_id=tokenizer.eos_id)[0, len(kept):].tolist()
    new = new[:new.index(tokenizer.eos_id)] if tokenizer.eos_id in new else new
    assert first["output"] == tokenizer.decode(new)
    # loglik: each candidate's full sequence keeps BOS and its last 512 tokens, and its whole response is scored
    scored = json.loads((tmp_path / "loglik" / "predictions.jsonl").read_text().splitlines()[0])
    assert scored["tokens_cut"] > 0 and set(scored["scores"]) == {"true", "false"}
    p = commonsense.prompt(record)
    for label, score in scored["scores"].items():
        full = tokenizer.encode(p + commonsense.response_for(record, label), bos=True)
        n = len(ids) if full[:len(ids)] == ids else len(ids) - 1  # the first response token (a merge moves it back)
        cut = len(full) - 512
        kept = [full[0]] + full[cut + 1:]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([kept]))[0], -1)
        expected = sum(logp[t - 1, kept[t]].item() for t in range(n - cut, len(kept)))
        assert score == pytest.approx(expected, abs=1e-3), label


@pytest.fixture(scope="module")
def tokenizer_and_model(stories_dir):
    return Tokenizer.from_file(stories_dir / "tokenizer.json"), Transformer.from_pretrained(stories_dir)


# -----------------------------------------------------------------------------
# Every expected bad input of every tool: one `error: ...` line naming the cause, no traceback

def model_copy(stories_dir, tmp_path, file, edit):
    """A copy of the stories260K folder with `file` replaced by edit(its text) (bytes when edit returns bytes)."""
    copy = tmp_path / "model"
    shutil.copytree(stories_dir, copy)
    new = edit((copy / file).read_text())
    (copy / file).write_bytes(new) if isinstance(new, bytes) else (copy / file).write_text(new)
    return copy


def data_copy(data_dir, tmp_path, content):
    """A copy of data_dir whose boolq train.json has this content (str or bytes)."""
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    path = copy / "boolq" / "train.json"
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return copy


def record(**fields):
    return {"instruction": "Is it?", "input": "", "output": "the correct answer is true", "answer": "true", **fields}


def add_token(text):
    spec = json.loads(text)
    spec["added_tokens"].append({"id": 600, "content": "<extra>", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    return json.dumps(spec)


def edit_config(**fields):
    return lambda text: json.dumps({**json.loads(text), **fields})


TRAIN_CASES = {  # name: (how to build the bad input: (stories, data, tmp) -> (model, data, extra args), message)
    "record without output": (lambda s, d, t: (s, data_copy(d, t, json.dumps([record(), {"instruction": "x",
                              "answer": "true"}])), []), "train.json: record 1 has no string field 'output'"),
    "no task files": (lambda s, d, t: (s, t, []), "no <task>/train.json for any of boolq"),
    "empty train.json": (lambda s, d, t: (s, data_copy(d, t, "[]"), []), "train.json: holds no records"),
    "not a list": (lambda s, d, t: (s, data_copy(d, t, json.dumps(record())), []), "expected a JSON list"),
    "non-string field": (lambda s, d, t: (s, data_copy(d, t, json.dumps([record(instruction=5)])), []),
                         "record 0 has no string field 'instruction'"),
    "UTF-16": (lambda s, d, t: (s, data_copy(d, t, json.dumps([record()]).encode("utf-16")), []),
               "train.json: not UTF-8 text"),
    "lone surrogate": (lambda s, d, t: (s, data_copy(d, t, '[' + json.dumps(record())[:-1] + ', "input": "a\\ud800"}]'),
                                       []), "record 0 field 'input' holds a lone surrogate ('\\ud800' at character 1)"),
    "config field missing": (lambda s, d, t: (model_copy(s, t, "config.json", edit_config(hidden_size=None)), d, []),
                             "config.json: config: required field 'hidden_size' is missing or not a positive integer"),
    "config field mistyped": (lambda s, d, t: (model_copy(s, t, "config.json", edit_config(num_key_value_heads="4")),
                                               d, []), "config.json: config: field 'num_key_value_heads' is '4'"),
    "truncated tokenizer": (lambda s, d, t: (model_copy(s, t, "tokenizer.json", lambda x: x[:len(x) // 2]), d, []),
                            "tokenizer.json: not valid JSON"),
    "binary tokenizer": (lambda s, d, t: (model_copy(s, t, "tokenizer.json", lambda x: b"\xff\xfe\x00\x81" * 64), d, []),
                         "tokenizer.json: not UTF-8 text"),
    "tokenizer beyond the vocabulary": (lambda s, d, t: (model_copy(s, t, "tokenizer.json", add_token), d, []),
                                        "tokenizer.json: token ids go up to 600, but"),
    "cross terms at rank 1": (lambda s, d, t: (s, d, ["--terms", "cross", "--rank", "1"]), "terms='cross' with rank 1"),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_bad_input_is_one_line_naming_the_cause(stories_dir, data_dir, tmp_path, case):
    build, message = TRAIN_CASES[case]
    model, data, extra = build(stories_dir, data_dir, tmp_path)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        cli.run(train.main, train_args(model, data, out, "--max-steps", "1", *extra))
    assert e.value.code.startswith("error: ") and "\n" not in e.value.code and message in e.value.code
    assert list(out.iterdir()) == []  # nothing written (the lock taken is given back)


@pytest.mark.parametrize("file, content, message", [
    ("args.json", "{", "args.json: Expecting property name"),
    ("checkpoint/state.pt", "not a zip", "state.pt: not a readable train.py state"),
])
def test_train_corrupt_run_files_on_resume_are_one_line(stories_dir, data_dir, tmp_path, file, content, message):
    out = tmp_path / "run"
    argv = train_args(stories_dir, data_dir, out, "--max-steps", "1")
    (out / "checkpoint").mkdir(parents=True)
    adapters.write_json(out / "args.json", vars(train.parse_args(argv)))
    (out / "checkpoint" / "state.pt").write_text("")
    (out / file).write_text(content)
    with pytest.raises(SystemExit) as e:
        cli.run(train.main, argv + ["--resume"])
    assert e.value.code.startswith("error: ") and message in e.value.code


EVAL_CASES = {  # name: (build: (stories, data, tmp) -> extra args, message)
    "unknown task": (lambda s, d, t: ["--data", str(d), "--tasks", "nope"], "unknown task 'nope'"),
    "no test files": (lambda s, d, t: ["--data", str(t)], "no <task>/test.json for any of"),
    "empty test.json": (lambda s, d, t: ["--data", str(with_test_records(d, t, lambda rs: []))],
                        "test.json: holds no records"),
    "corrupt adapter": (lambda s, d, t: ["--data", str(d), "--adapter", str(corrupt_adapter(t))],
                        "adapter_model.safetensors: not a safetensors file"),
    "adapter of another base model": (lambda s, d, t: ["--data", str(d), "--adapter", str(HERE_FIXTURES / "peft" / "lora")],
                                      "does not fit the model"),
    "results file missing": (lambda s, d, t: ["--table", str(t / "none.json")], "none.json"),
    "not a results file": (lambda s, d, t: ["--table", str(d / "boolq" / "train.json")],
                           "train.json: not an eval.py results.json"),
}


def corrupt_adapter(tmp_path):
    shutil.copytree(HERE_FIXTURES / "peft" / "lora", tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00" * 4)
    return tmp_path / "adapter"


@pytest.mark.parametrize("case", EVAL_CASES)
def test_eval_bad_input_is_one_line_naming_the_cause(stories_dir, data_dir, tmp_path, case):
    build, message = EVAL_CASES[case]
    with pytest.raises(SystemExit) as e:
        cli.run(evaluate.main, ["--model", str(stories_dir), "--device", "cpu", "--out", str(tmp_path / "eval"),
                                *build(stories_dir, data_dir, tmp_path)])
    assert e.value.code.startswith("error: ") and "\n" not in e.value.code and message in e.value.code


@pytest.mark.parametrize("argv, message", [
    (["--model", "no/such/folder"], "no/such/folder: no config.json"),
    (["--ranks", "0"], "rank must be a positive integer, got 0"),
])
def test_bench_bad_input_is_one_line_naming_the_cause(stories_dir, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.run(bench.main, ["--model", str(stories_dir), "--methods", "lora", "--no-memory", *argv])
    assert e.value.code.startswith("error: ") and message in e.value.code


def test_bench_ranks_that_are_not_numbers_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--ranks", "4,x"])
    assert e.value.code == 2 and "--ranks '4,x' is not a comma-separated list of integers" in capsys.readouterr().err


def test_prepare_ctrl_c_is_one_line(data_dir, tmp_path, monkeypatch, capsys):
    """`python prepare.py --data-from DIR`, and a real SIGINT while it checks the files."""
    real = commonsense.load_records

    def load_records(*a):
        signal.raise_signal(signal.SIGINT)
        return real(*a)

    monkeypatch.setattr(commonsense, "load_records", load_records)  # what prepare.py imports when it starts
    code = run_as_script("prepare.py", ["--skip-model", "--data-from", str(data_dir), "--data-dir", str(tmp_path)],
                         monkeypatch)
    assert code == 130 and capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only expected bad input becomes one line: an exception elsewhere is not hidden."""
    monkeypatch.setattr(bench, "report", lambda *a: {}["bug"])
    with pytest.raises(KeyError):
        cli.run(bench.main, ["--model", str(fixture("models", "stories260K")), "--methods", "lora",
                             "--ranks", "1", "--rounds", "1", "--infer-rounds", "1", "--warmup", "0", "--no-memory"])


# -----------------------------------------------------------------------------
# The entry points themselves (`python tool.py ...`, run as __main__ in this process)

def run_as_script(tool, argv, monkeypatch):
    """What `python tool argv` (or `python -m tool argv`) exits with; an exception other than SystemExit is the traceback it would print."""
    monkeypatch.setattr(sys, "argv", [tool, *argv])
    handler, term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        if tool.endswith(".py"):  # `python train.py ...`
            runpy.run_path(str(ROOT / tool), run_name="__main__")
        else:  # `python -m experiments.bench ...`
            with warnings.catch_warnings():  # the test imported it already: runpy's warning says so
                warnings.simplefilter("ignore", RuntimeWarning)
                runpy.run_module(tool, run_name="__main__")
    except SystemExit as e:
        # the process is ending: no Ctrl-C (or SIGTERM) traceback now
        assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        return e.code
    except KeyboardInterrupt:  # not left to reach pytest, which would take it for the user's and stop
        pytest.fail(f"{tool}: Ctrl-C ended in a traceback")
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, term)
    pytest.fail(f"{tool} did not exit")


@pytest.mark.parametrize("tool, argv, message", [
    ("eval.py", ["--data", "no/such/data", "--tasks", "nope"], "error: unknown task 'nope'"),
    ("experiments.bench", ["--model", "no/such/model"], "error: no/such/model: no config.json"),
])
def test_the_tools_print_one_error_line(tool, argv, message, monkeypatch):
    assert run_as_script(tool, argv, monkeypatch).startswith(message)


def test_toy_plot_and_study_print_one_error_line(tmp_path, monkeypatch):
    bad_log = tmp_path / "run" / "log.jsonl"
    bad_log.parent.mkdir()
    bad_log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # cut off by a kill
    code = run_as_script("experiments.plot", [str(bad_log), "--out", str(tmp_path / "loss.svg")], monkeypatch)
    assert code.startswith(f"error: {bad_log}: line 2 is not JSON") and not (tmp_path / "loss.svg").exists()
    code = run_as_script("experiments.toy", ["--targets", "gaussian", "--size", "4x4", "--rank", "2", "--steps", "10",
                                    "--json", str(tmp_path / "no" / "such" / "dir" / "toy.json")], monkeypatch)
    assert code.startswith("error: ") and "toy.json" in code
    code = run_as_script("experiments.study", ["label-loss", "--adapter", str(tmp_path / "nope")], monkeypatch)
    assert code.startswith("error: ") and "args.json" in code


def test_prepare_entry_point_exits_1_with_one_line(tmp_path, monkeypatch, capsys):
    code = run_as_script("prepare.py", ["--gguf", str(tmp_path / "no.gguf"), "--out", str(tmp_path / "out")], monkeypatch)
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "no.gguf" in err and len(err.strip().splitlines()) == 1


def test_ctrl_c_while_tokenizing_is_one_line(stories_dir, data_dir, tmp_path, monkeypatch, capsys):
    """`python train.py`, and a real SIGINT while it tokenizes: no traceback, and nothing left in --out."""
    real = commonsense.encode_example

    def encode(*a, **kw):
        signal.raise_signal(signal.SIGINT)
        return real(*a, **kw)

    monkeypatch.setattr(commonsense, "encode_example", encode)
    code = run_as_script("train.py", train_args(stories_dir, data_dir, tmp_path / "run"), monkeypatch)
    assert code == 130 and capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    assert list((tmp_path / "run").iterdir()) == []


# -----------------------------------------------------------------------------
# merge.py and generate.py

@pytest.fixture(scope="module")
def trained_adapter(stories_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter")
    train.main(train_args(stories_dir, data_dir, out, "--method", "lora", "--max-steps", "1", "--val-size", "0"))
    return out


def test_merge_bad_output_folder_and_config_are_one_line(trained_adapter, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as e:  # --out inside a file: an OSError, today a traceback
        cli.run(merge.main, ["--adapter", str(trained_adapter), "--out", str(tmp_path / "file" / "merged")])
    assert e.value.code.startswith("error: ") and "file" in e.value.code
    shutil.copytree(trained_adapter, tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_config.json").write_text("[]")
    with pytest.raises(SystemExit) as e:
        cli.run(merge.main, ["--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged")])
    assert e.value.code.startswith(f"error: {tmp_path / 'adapter' / 'adapter_config.json'}: expected a JSON object")


def test_merge_and_generate_ctrl_c_is_one_line(trained_adapter, stories_dir, tmp_path, monkeypatch, capsys):
    from support import safetensors_io

    def interrupting(real):
        def wrapped(*a, **kw):
            signal.raise_signal(signal.SIGINT)
            return real(*a, **kw)
        return wrapped

    with monkeypatch.context() as m:  # while merge.py writes the weights
        m.setattr(safetensors_io, "save_safetensors", interrupting(safetensors_io.save_safetensors))
        code = run_as_script("merge.py", ["--adapter", str(trained_adapter), "--out", str(tmp_path / "merged")], m)
    assert code == 130 and capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    assert not (tmp_path / "merged").exists()
    with monkeypatch.context() as m:  # while generate.py generates
        m.setattr(Transformer, "generate", interrupting(Transformer.generate))
        code = run_as_script("generate.py", ["--model", str(stories_dir), "--device", "cpu", "Hi"], m)
    assert code == 130 and capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"


def test_generate_cuts_a_prompt_longer_than_the_model(stories_dir, tokenizer_and_model, capsys):
    tokenizer, model = tokenizer_and_model
    text = " ".join(["Once upon a time there was a little dog who liked to run in the park."] * 60)
    ids = tokenizer.encode(text, bos=True)
    ids_out, _ = generate.main(["--model", str(stories_dir), "--raw", text, "--max-new-tokens", "4", "--device", "cpu"])
    assert f"its first {len(ids) - 508} tokens were cut" in capsys.readouterr().err
    kept = [ids[0]] + ids[len(ids) - 508 + 1:]
    new = model.generate(torch.tensor([kept]), 4, eos_id=tokenizer.eos_id)[0, len(kept):].tolist()
    assert ids_out == (new[:new.index(tokenizer.eos_id)] if tokenizer.eos_id in new else new)
