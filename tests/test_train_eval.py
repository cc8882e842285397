"""The commonsense protocol, train.py and eval.py, on the real stories260K model and real data records."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import HERE_FIXTURES, fixture

import eval as evaluate
import merge
import train
from model import Transformer
from support import adapters, cli, commonsense
from support.safetensors_io import load_safetensors
from tokenizer import Tokenizer

SPEC_PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.  \n\n### Instruction:\n{instruction}\n\n### Response:\n")


@pytest.fixture(scope="module")
def stories_dir():
    return fixture("models", "stories260K")


@pytest.fixture(scope="module")
def tokenizer(stories_dir):
    return Tokenizer.from_file(stories_dir / "tokenizer.json")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small copy of the real sets: 48 training records from each of two tasks, 12 test records of three."""
    src, dst = fixture("commonsense"), tmp_path_factory.mktemp("data")
    for task, split, n in [("boolq", "train", 48), ("ARC-Easy", "train", 48), ("boolq", "test", 12),
                           ("ARC-Easy", "test", 12), ("winogrande", "test", 12)]:
        (dst / task).mkdir(exist_ok=True)
        records = json.loads((src / task / f"{split}.json").read_text())[:n]
        (dst / task / f"{split}.json").write_text(json.dumps(records))
    return dst


# -----------------------------------------------------------------------------
# The protocol

def test_prompt_is_exactly_the_spec_template():
    record = {"instruction": "Is the sky blue?\n\nAnswer format: true/false", "input": "", "output": "x", "answer": "x"}
    assert commonsense.prompt(record) == SPEC_PROMPT.format(instruction=record["instruction"])


def test_masking_puts_the_loss_on_the_response_and_end_token_only(tokenizer):
    record = json.loads(fixture("commonsense", "boolq", "train.json").read_text())[0]
    ids, labels = commonsense.encode_example(tokenizer, record, bos=True, target_cutoff=64)  # stories260K's
    text = commonsense.prompt(record) + record["output"]  # 512-token vocabulary spells the output in ~20 tokens
    assert ids == tokenizer.encode(text, bos=True) + [tokenizer.eos_id]
    scored = [i for i, y in zip(ids, labels) if y != -100]
    assert labels[0] == -100 and scored == labels[len(labels) - len(scored):]  # one block, at the end
    assert tokenizer.decode(scored[:-1]).strip() == record["output"] and scored[-1] == tokenizer.eos_id
    assert all(y == -100 for y in labels[:len(ids) - len(scored)])
    _, everything = commonsense.encode_example(tokenizer, record, bos=True, train_on_inputs=True, target_cutoff=64)
    assert everything == ids


def test_cutoffs_bound_prompt_and_response(tokenizer):
    record = {"instruction": "word " * 400, "input": "", "output": "the correct answer is " + "true " * 30, "answer": "true"}
    ids, labels = commonsense.encode_example(tokenizer, record, bos=True, prompt_cutoff=256, target_cutoff=16)
    n_target = sum(y != -100 for y in labels)
    assert n_target == 17 and len(ids) == 256 + 17  # 16 response tokens + the end token


@pytest.mark.parametrize("task, text, expected", [
    ("boolq", "the correct answer is false", "false"),
    ("boolq", "true or false? false", "true"),  # the FIRST match, as LLM-Adapters does
    ("boolq", "The correct answer is True", None),  # patterns are case-sensitive
    ("piqa", "the correct answer is solution2", "solution2"),
    ("social_i_qa", "answer3", "answer3"),
    ("ARC-Easy", "the correct answer is answer5.", "answer5"),
    ("ARC-Challenge", "answer4answer1", "answer4"),
    ("openbookqa", "the correct answer is answer6", None),
    ("hellaswag", "ending4", "ending4"),
    ("winogrande", "the correct answer is option1", "option1"),
    ("winogrande", "I don't know", None),
])
def test_answer_extraction(task, text, expected):
    assert commonsense.extract_answer(task, text) == expected


def test_candidates_come_from_the_answer_format_line():
    # the sample holds ARC-Challenge's first test records and the first with 3 and with 5 choices
    arc = json.loads(fixture("commonsense", "ARC-Challenge", "test.json").read_text())
    sizes = {len(commonsense.candidates("ARC-Challenge", r)) for r in arc}
    assert 4 in sizes and sizes <= {3, 4, 5}
    assert all(commonsense.gold_answer("ARC-Challenge", r) in commonsense.candidates("ARC-Challenge", r) for r in arc)
    winogrande = json.loads(fixture("commonsense", "winogrande", "test.json").read_text())[0]
    assert commonsense.candidates("winogrande", winogrande) == ["option1", "option2"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"instruction": "x"}), "expected a JSON list"),
    (json.dumps([{"instruction": "x", "output": "y", "answer": "z"}, {"instruction": "x", "output": "y"}]),
     "record 1 has no string field 'answer'"),
    (json.dumps([["not", "an", "object"]]), "record 0 is not an object"),
])
def test_malformed_data_is_an_error_naming_file_and_record(tmp_path, content, message):
    path = tmp_path / "train.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as e:
        commonsense.load_records(path)
    assert str(path) in str(e.value)


def test_unknown_or_absent_tasks_are_named(data_dir):
    with pytest.raises(ValueError, match="unknown task 'sciq'"):
        commonsense.resolve_tasks(data_dir, "train", "boolq,sciq")
    with pytest.raises(FileNotFoundError, match="piqa"):
        commonsense.resolve_tasks(data_dir, "train", "piqa")
    assert commonsense.resolve_tasks(data_dir, "train") == ["boolq", "ARC-Easy"]


# -----------------------------------------------------------------------------
# train.py

def train_args(stories_dir, data_dir, out, *extra):
    return ["--model", str(stories_dir), "--data", str(data_dir), "--out", str(out), "--rank", "4",
            "--batch-size", "8", "--micro-batch-size", "4", "--val-size", "16", "--warmup-steps", "2",
            "--device", "cpu", *extra]


@pytest.mark.parametrize("argv, message", [
    (["--rank", "four"], "argument --rank: expected an integer >= 0, got 'four'"),
    (["--method", "vera"], "invalid choice"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--batch-size", "10", "--micro-batch-size", "4"], "must be a multiple of --micro-batch-size"),
    (["--rank", "0"], "argument --rank: expected an integer >= 1 for --method pera, got '0'"),
    (["--method", "hilora", "--rank", "2"], "--method hilora needs --lora-rank"),
    (["--method", "hira", "--lora-rank", "2"], "--lora-rank is HiLoRA's, not hira's"),
    (["--method", "hira", "--alpha", "2"], "--alpha is LoRA/PERA/DoRA/LoRAN/HiLoRA's, not hira's"),
])
def test_bad_arguments_are_one_clear_error(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        train.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


SLOW = pytest.mark.slow  # the default stage trains LoRA and PERA; the slow stage (CI) every other method too


@pytest.mark.parametrize("method", ["lora", pytest.param("hira", marks=SLOW), "pera", pytest.param("dora", marks=SLOW),
                                    pytest.param("loran", marks=SLOW), pytest.param("hilora", marks=SLOW)])
def test_training_lowers_the_loss_and_writes_a_peft_style_adapter(stories_dir, data_dir, tmp_path, method,
                                                                   monkeypatch):
    out = tmp_path / method
    ids = torch.tensor(json.loads((stories_dir / "input_ids.json").read_text()))
    saved, real_save = [], adapters.save_adapter  # the live model's logits at each save of the adapter

    def save_and_record(model, folder, spec, base_model):
        real_save(model, folder, spec, base_model)
        with torch.no_grad():  # eval mode: no dropout, so no random numbers drawn and training goes on unchanged
            saved.append(model.eval()(ids))
        model.train()

    monkeypatch.setattr(adapters, "save_adapter", save_and_record)
    metrics = train.main(train_args(stories_dir, data_dir, out, "--method", method, "--max-steps", "12",
                                    "--lr", "2e-2" if "hi" in method else "3e-3", "--eval-every", "6",
                                    *(["--lora-rank", "2"] if method == "hilora" else [])))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))
    # Steps 1-4 and 9-12 see different batches: the loss falls by a margin no batch-to-batch noise explains
    # (measured: 4.73 -> 3.21 LoRA and PERA, 4.74 -> 3.22 LoRAN, 4.78 -> 2.97 HiRA, 4.61 -> 3.01 DoRA, 3.91 -> 0.87
    # HiLoRA r1 = 4, r2 = 2, its LoRA part at HiRA's lr; the first step is the base model's 5.22 for every method;
    # with no optimizer step it is 5.21 -> 5.16), and so does the validation loss on the same 16 held-out examples
    # (steps 6 and 12: 3.49 -> 3.03 LoRA and PERA, 3.50 -> 3.04 LoRAN, 3.35 -> 2.78 HiRA, 3.29 -> 2.83 DoRA,
    # 1.41 -> 0.64 HiLoRA).
    first, last = (sum(r["loss"] for r in window) / 4 for window in (log[:4], log[-4:]))
    assert last < first - 1.0, (first, last)
    val = [r["val_loss"] for r in log if "val_loss" in r]
    assert [r["step"] for r in log if "val_loss" in r] == [6, 12] and val[1] < val[0] - 0.3, val
    assert metrics["first_loss"] == log[0]["loss"] and metrics["last_loss"] == log[-1]["loss"]
    assert {p.name for p in out.iterdir()} >= {"adapter_model.safetensors", "adapter_config.json", "args.json",
                                                "log.jsonl", "metrics.json", "checkpoint"}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == adapters.METHODS[method].peft_type and config["r"] == 4
    assert config["base_model_name_or_path"] == str(stories_dir)  # --model as given
    # the adapter kept is the best by validation loss, here the last step's; loaded the way eval.py loads it (the
    # base model named in adapter_config.json), it gives the logits of the model that training left
    assert metrics["best_step"] == 12 and len(saved) == 2
    reloaded, _, spec = evaluate.load(evaluate.parse_args(["--adapter", str(out), "--device", "cpu"]))
    assert spec["method"] == method
    with torch.no_grad():
        logits = reloaded(ids)
        base = Transformer.from_pretrained(stories_dir).eval()(ids)
    assert torch.equal(logits, saved[-1])
    assert (logits - base).abs().max() > 0.1 and (saved[0] - saved[1]).abs().max() > 0.1  # both trained, apart


def test_a_run_shorter_than_its_warm_up_still_reaches_the_learning_rate(stories_dir, data_dir, tmp_path, capsys):
    args = train.parse_args(["--max-steps", "12", "--lr", "1e-4"])  # --warmup-steps 100 by default
    assert [train.lr_at(step, args, 12) for step in range(3)] == [1e-4, 1e-4, pytest.approx(1e-4 * 10 / 11)]
    assert train.warmup_steps(100, 3306) == 100 and train.warmup_steps(100, 500) == 50  # a tenth of a short run
    assert train.warmup_steps(20, 200) == 20 and train.warmup_steps(0, 12) == 0
    assert train.lr_at(49, args, 3306) == pytest.approx(0.5e-4)  # a long run keeps its 100 warm-up steps
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    assert "at most a tenth of the run" in " ".join(capsys.readouterr().out.split())
    out = tmp_path / "short"
    train.main(train_args(stories_dir, data_dir, out, "--method", "lora", "--max-steps", "5", "--lr", "1e-3",
                          "--warmup-steps", "100", "--eval-every", "5"))
    assert "warm-up: 1 step(s) to lr 0.001, then linear decay to 0 (--warmup-steps 100 capped at a tenth of this " \
           "5-step run)" in capsys.readouterr().out
    lrs = [json.loads(line)["lr"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-3, 1e-3, 0.75e-3, 0.5e-3, 0.25e-3])


def test_saved_adapter_reloads_to_the_same_logits(stories_dir, data_dir, tmp_path):
    out = tmp_path / "pera"
    train.main(train_args(stories_dir, data_dir, out, "--method", "pera", "--max-steps", "4", "--lr", "1e-2",
                          "--eval-every", "4", "--dropout", "0"))
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
    trained = Transformer.from_pretrained(stories_dir)
    spec = adapters.settings("pera", 4, dropout=0.0)
    adapters.inject(trained, spec)
    params = dict(trained.named_parameters())
    for name, t in state["trainable"].items():
        params[name].data.copy_(t)
    assert any(t.abs().sum() > 0 for n, t in state["trainable"].items() if n.endswith(".h"))  # h was trained
    reloaded = Transformer.from_pretrained(stories_dir)
    adapters.load_adapter(reloaded, out)
    ids = torch.tensor(json.loads((stories_dir / "input_ids.json").read_text()))
    with torch.no_grad():
        assert torch.equal(trained.eval()(ids), reloaded.eval()(ids))


def test_resume_ends_where_an_uninterrupted_run_ends(stories_dir, data_dir, tmp_path, monkeypatch):
    common = ["--method", "pera", "--max-steps", "8", "--lr", "5e-3", "--eval-every", "4", "--save-every", "2",
              "--dropout", "0.1"]  # dropout: the resumed run must also draw the same random masks
    train.main(train_args(stories_dir, data_dir, tmp_path / "straight", *common))

    def interrupt(step, record):
        if step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "on_step", interrupt)
    with pytest.raises(SystemExit, match="interrupted after step 5"):
        train.main(train_args(stories_dir, data_dir, tmp_path / "resumed", *common))
    monkeypatch.undo()
    with pytest.raises(SystemExit, match="already holds a run"):
        train.main(train_args(stories_dir, data_dir, tmp_path / "resumed", *common))
    with pytest.raises(SystemExit, match="--rank differ"):
        train.main(train_args(stories_dir, data_dir, tmp_path / "resumed", *common, "--resume", "--rank", "2"))
    train.main(train_args(stories_dir, data_dir, tmp_path / "resumed", *common, "--resume"))
    straight = load_safetensors(tmp_path / "straight" / "adapter_model.safetensors")
    resumed = load_safetensors(tmp_path / "resumed" / "adapter_model.safetensors")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    log = lambda run: [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]  # noqa: E731
    drop_time = lambda records: [{k: v for k, v in r.items() if k != "time"} for r in records]  # noqa: E731
    assert drop_time(log("straight")) == drop_time(log("resumed"))


def test_paths_are_written_as_given_and_read_from_the_current_folder(stories_dir, data_dir, tmp_path, monkeypatch):
    """A relative --model and --out stay relative in adapter_config.json, args.json, merged_from.json and
    results.json; from a folder where the adapter's relative base names nothing, eval.py and merge.py say so
    in one line that names the path and suggests --model."""
    monkeypatch.chdir(tmp_path)
    model = os.path.relpath(stories_dir)
    train.main(train_args(model, data_dir, "run", "--method", "lora", "--max-steps", "1", "--eval-every", "1"))
    assert json.loads(Path("run/adapter_config.json").read_text())["base_model_name_or_path"] == model
    saved = json.loads(Path("run/args.json").read_text())
    assert (saved["model"], saved["out"]) == (model, "run")
    merge.main(["--adapter", "run", "--out", "merged"])
    merged_from = json.loads(Path("merged/merged_from.json").read_text())
    assert (merged_from["adapter"], merged_from["base_model"]) == ("run", model)
    result = evaluate.main(["--adapter", "run", "--data", str(data_dir), "--tasks", "boolq", "--limit", "1",
                            "--max-new-tokens", "2", "--device", "cpu"])
    assert (result["model"], result["adapter"]) == (model, "run")
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    for tool, argv in [(evaluate, ["--data", str(data_dir), "--device", "cpu"]), (merge, ["--out", "merged"])]:
        with pytest.raises(SystemExit) as e:
            tool.main(["--adapter", "../../run", *argv])
        message = str(e.value)
        assert message.startswith(f"error: {model} (the base model ../../run/adapter_config.json names): no such "
                                  f"folder") and "pass --model DIR" in message and "\n" not in message


def test_micro_batches_do_not_change_the_step(stories_dir, data_dir, tmp_path):
    """The loss is a mean over the batch's response tokens, so accumulation gives the same update."""
    common = ["--method", "lora", "--max-steps", "3", "--lr", "1e-2", "--eval-every", "3", "--dropout", "0"]
    whole = train.main(train_args(stories_dir, data_dir, tmp_path / "a", *common, "--micro-batch-size", "8"))
    split = train.main(train_args(stories_dir, data_dir, tmp_path / "b", *common, "--micro-batch-size", "2"))
    a = load_safetensors(tmp_path / "a" / "adapter_model.safetensors")
    b = load_safetensors(tmp_path / "b" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)  # float noise that Adam's first steps amplify
    assert abs(whole["last_loss"] - split["last_loss"]) < 1e-4
    # Adam hides a wrongly scaled gradient; the logged gradient norm (before clipping) does not.
    norms = [[json.loads(line)["grad_norm"] for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
             for run in ("a", "b")]
    assert norms[0] == pytest.approx(norms[1], rel=1e-4)


def test_nan_loss_stops_with_a_clear_message_and_keeps_what_was_saved(stories_dir, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = train.loss_sum
    calls = {"n": 0}

    def poisoned(model, ids, labels):
        calls["n"] += 1
        loss, n = real(model, ids, labels)
        return (loss * float("nan"), n) if calls["n"] > 8 else (loss, n)  # steps 1-4 fine (2 micro-batches each)

    monkeypatch.setattr(train, "loss_sum", poisoned)
    with pytest.raises(SystemExit, match="loss is nan at step"):
        train.main(train_args(stories_dir, data_dir, out, "--max-steps", "10", "--eval-every", "2", "--val-size", "0"))
    saved = load_safetensors(out / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())
    # the state kept is the last one whose next step was finite: step 4's led to step 5's NaN, so step 2's
    # (saved every 2 steps) is kept, and the message names it (issue 34: a kept state that cannot take a step)
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=False)["step"] == 2


# -----------------------------------------------------------------------------
# eval.py

def test_eval_is_batch_size_invariant_and_merge_invariant(stories_dir, data_dir, tmp_path):
    out = tmp_path / "lora"
    train.main(train_args(stories_dir, data_dir, out, "--method", "lora", "--max-steps", "3", "--lr", "1e-2",
                          "--eval-every", "3"))
    runs = {}
    for name, extra in [("b1", ["--batch-size", "1"]), ("b5", ["--batch-size", "5"]),
                        ("b16", ["--batch-size", "16"]), ("merged", ["--batch-size", "5", "--merge"])]:
        evaluate.main(["--adapter", str(out), "--data", str(data_dir), "--limit", "10", "--max-new-tokens", "12",
                       "--device", "cpu", "--out", str(tmp_path / name), *extra])
        runs[name] = [json.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
    assert len(runs["b1"]) == 30
    outputs = lambda name: [(p["task"], p["index"], p["output"]) for p in runs[name]]  # noqa: E731
    assert outputs("b1") == outputs("b5") == outputs("b16") == outputs("merged")
    results = json.loads((tmp_path / "b5" / "results.json").read_text())
    assert set(results["tasks"]) == {"boolq", "winogrande", "ARC-Easy"}
    for task, r in results["tasks"].items():
        preds = [p for p in runs["b5"] if p["task"] == task]
        assert r["correct"] == sum(p["correct"] for p in preds) and r["n"] == 10
        assert r["parse_failures"] == sum(p["prediction"] is None for p in preds)


def test_eval_generations_are_the_models_greedy_continuations(stories_dir, data_dir, tmp_path):
    """Zero-shot: each output is what model.generate gives for that prompt alone, decoded up to the end token."""
    evaluate.main(["--model", str(stories_dir), "--data", str(data_dir), "--tasks", "boolq", "--limit", "3",
                   "--max-new-tokens", "10", "--batch-size", "3", "--device", "cpu", "--out", str(tmp_path)])
    model, tokenizer = Transformer.from_pretrained(stories_dir), Tokenizer.from_file(stories_dir / "tokenizer.json")
    records = json.loads((data_dir / "boolq" / "test.json").read_text())[:3]
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    for r, p in zip(records, predictions):
        ids = tokenizer.encode(commonsense.prompt(r), bos=tokenizer.add_bos)
        new = model.generate(torch.tensor([ids]), 10, eos_id=tokenizer.eos_id)[0, len(ids):].tolist()
        new = new[:new.index(tokenizer.eos_id)] if tokenizer.eos_id in new else new
        assert p["output"] == tokenizer.decode(new)


def test_loglik_scores_are_the_response_log_probabilities(stories_dir, data_dir, tmp_path):
    evaluate.main(["--model", str(stories_dir), "--data", str(data_dir), "--tasks", "winogrande", "--limit", "4",
                   "--mode", "loglik", "--batch-size", "3", "--device", "cpu", "--out", str(tmp_path)])
    model, tokenizer = Transformer.from_pretrained(stories_dir), Tokenizer.from_file(stories_dir / "tokenizer.json")
    record = json.loads((data_dir / "winogrande" / "test.json").read_text())[0]
    first = json.loads((tmp_path / "predictions.jsonl").read_text().splitlines()[0])
    for label, score in first["scores"].items():
        p = commonsense.prompt(record)
        prompt_ids = tokenizer.encode(p, bos=True)
        full = tokenizer.encode(p + commonsense.response_for(record, label), bos=True)
        n = len(prompt_ids) if full[:len(prompt_ids)] == prompt_ids else len(prompt_ids) - 1
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full]))[0], -1)
        expected = sum(logp[t - 1, full[t]].item() for t in range(n, len(full)))
        assert abs(score - expected) < 1e-3
    assert first["prediction"] == max(first["scores"], key=first["scores"].get)


def test_loglik_progress_counts_each_example_once(stories_dir, data_dir):
    class Bar:  # tqdm's update(), counted
        n = 0
        def update(self, k):
            self.n += k
    model, tokenizer = Transformer.from_pretrained(stories_dir), Tokenizer.from_file(stories_dir / "tokenizer.json")
    records = json.loads((data_dir / "ARC-Easy" / "test.json").read_text())[:5]  # several candidates each,
    bar = Bar()                                                                  # spread over batches by length
    with torch.no_grad():
        evaluate.loglik_answers(model, tokenizer, "ARC-Easy", records, 3, bar)
    assert bar.n == len(records)


def test_table_is_the_papers_layout_with_the_papers_names():
    settings = {"method": "pera", "rank": 4, "terms": "cross"}
    rows = [{"name": evaluate.run_name(None), "average": 50.0,
             "tasks": {"boolq": {"accuracy": 60.0}, "piqa": {"accuracy": 40.0}}},
            {"name": evaluate.run_name(settings), "trainable_percent": 0.61284, "average": 75.0,
             "tasks": {"openbookqa": {"accuracy": 75.0}}}]
    assert evaluate.table(rows).splitlines() == [
        "| Method | Params (%) | BoolQ | PIQA | OBQA | Avg. |",
        "|---|---|---|---|---|---|",
        "| zero-shot | - | 60.00 | 40.00 | - | 50.00 |",
        "| PERA r=4 (cross only) | 0.6128 | - | - | 75.00 | 75.00 |"]
    assert [evaluate.run_name({"method": m, "rank": 8}) for m in ("lora", "hira", "dora", "loran")] == [
        "LoRA r=8", "HiRA r=8", "DoRA r=8", "LoRAN r=8"]
    assert evaluate.run_name({"method": "hilora", "rank": 20, "lora_rank": 12}) == "HiLoRA r=20+12"  # r1 + r2


def test_rank_report_measures_each_methods_bound(stories_dir, data_dir, tmp_path):
    out = tmp_path / "pera"
    train.main(train_args(stories_dir, data_dir, out, "--method", "pera", "--rank", "2", "--max-steps", "3",
                          "--lr", "5e-2", "--eval-every", "3"))
    rows = evaluate.main(["--adapter", str(out), "--rank-report", "--device", "cpu"])
    assert rows and all(r["rank"] <= r["bound"] == min(2 + 3, *r["shape"]) for r in rows)
    assert max(r["rank"] for r in rows) == 5  # r + r(r+1)/2 once h has moved off zero
    assert json.loads((out / "rank_report.json").read_text()) == rows
    # the polynomial share, recomputed from the saved tensors term by term (Eq. 9 minus LoRA's part)
    tensors = load_safetensors(out / "adapter_model.safetensors")
    row = rows[0]
    A, B, h = (tensors[f"base_model.model.{row['layer']}.pera_{k}"].double() for k in "ABh")
    poly = sum(h[k] * torch.outer(B[:, i] * B[:, j], A[i] * A[j])
               for k, (i, j) in enumerate([(0, 0), (0, 1), (1, 1)]))
    assert row["polynomial_share"] == pytest.approx((poly.norm() / (B @ A).norm()).item(), rel=1e-9)
    assert row["polynomial_share"] > 0


# -----------------------------------------------------------------------------
# PEFT compatibility, against files and logits that PEFT itself produced (tests/fixtures/peft)

@pytest.mark.parametrize("method", ["lora", "hira", "dora"])
def test_peft_saved_adapters_load_and_give_peft_logits(method):
    base = fixture("models", "tiny-llama")
    model = Transformer.from_pretrained(base)
    spec = adapters.load_adapter(model, HERE_FIXTURES / "peft" / method)
    assert spec["method"] == method and spec["rank"] == 4
    ids = torch.tensor(json.loads((base / "input_ids.json").read_text()))
    reference = load_safetensors(HERE_FIXTURES / "peft" / method / "reference.safetensors")["logits"]
    with torch.no_grad():
        assert (model(ids) - reference).abs().max() < 1e-4


@pytest.mark.parametrize("method", ["lora", "hira", "dora"])
def test_our_adapter_files_have_peft_keys_shapes_and_fields(tmp_path, method):
    base = fixture("models", "tiny-llama")
    peft_dir = HERE_FIXTURES / "peft" / method
    theirs_config = json.loads((peft_dir / "adapter_config.json").read_text())
    model = Transformer.from_pretrained(base)
    spec = adapters.settings(method, 4, alpha=theirs_config.get("lora_alpha"))
    adapters.inject(model, spec)
    adapters.save_adapter(model, tmp_path, spec, base_model=str(base))
    ours, theirs = load_safetensors(tmp_path / "adapter_model.safetensors"), load_safetensors(peft_dir / "adapter_model.safetensors")
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    ours_config = json.loads((tmp_path / "adapter_config.json").read_text())
    for key in ("peft_type", "task_type", "r", "lora_alpha", "hira_dropout", "fan_in_fan_out", "bias", "use_dora",
                "use_rslora"):
        assert ours_config.get(key) == theirs_config.get(key), key
    assert sorted(ours_config["target_modules"]) == sorted(theirs_config["target_modules"])


def test_adapter_that_does_not_fit_the_model_is_named(tmp_path):
    shutil.copytree(HERE_FIXTURES / "peft" / "lora", tmp_path / "lora")
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    model = Transformer.from_pretrained(fixture("models", "tiny-llama"))
    with pytest.raises(ValueError, match=r"adapter_config.json: r is 8, but the lora_A.weight tensors of .* have \[4\] rows"):
        adapters.load_adapter(model, tmp_path / "lora")
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LOHA"}))
    with pytest.raises(ValueError, match="peft_type 'LOHA' is not one of"):
        adapters.load_adapter(Transformer.from_pretrained(fixture("models", "tiny-llama")), tmp_path / "lora")


def test_dora_gradients_are_pefts():
    """The gradient of every A, B and m, against what PEFT computed for the same adapter and loss (training
    mode, dropout 0: the next-token cross-entropy on input_ids; tests/fixtures/make_peft_fixtures.py)."""
    base = fixture("models", "tiny-llama")
    model = Transformer.from_pretrained(base)
    adapters.load_adapter(model, HERE_FIXTURES / "peft" / "dora")
    ids = torch.tensor(json.loads((base / "input_ids.json").read_text()))
    reference = load_safetensors(HERE_FIXTURES / "peft" / "dora" / "reference.safetensors")
    logits = model.train()(ids)
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    layers = adapters.adapter_layers(model, "dora")
    assert len(layers) == 10
    for name, layer in layers.items():
        for ours, theirs in adapters.METHODS["dora"].tensor_keys.items():
            expected = reference[f"grad.base_model.model.{name}.{theirs}"]
            grad = getattr(layer, ours).grad
            assert (grad - expected).abs().max() <= 1e-5 * expected.abs().max(), f"{name}.{ours}"


@pytest.mark.parametrize("method, extra", [("dora", {}), ("loran", {"amplitude": 2e-3, "omega": 300.0})])
def test_dora_and_loran_files_round_trip(tmp_path, method, extra):
    base = fixture("models", "tiny-llama")
    model = Transformer.from_pretrained(base)
    spec = adapters.settings(method, 4, alpha=8, dropout=0.1, **extra)
    adapters.inject(model, spec)
    model.eval()  # dropout off
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(1.1) if p.dim() == 1 else p.normal_(0, 0.1)  # DoRA's m: moved off ‖W0‖_row
    adapters.save_adapter(model, tmp_path, spec, base_model=str(base))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    if method == "dora":  # PEFT's LoRA config with use_dora; PEFT's key for the magnitude
        assert config["peft_type"] == "LORA" and config["use_dora"] is True and config["lora_alpha"] == 8
        keys = load_safetensors(tmp_path / "adapter_model.safetensors")
        assert "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector" in keys
    else:
        assert config["peft_type"] == "LORAN" and (config["amplitude"], config["omega"]) == (2e-3, 300.0)
    reloaded = Transformer.from_pretrained(base)
    assert adapters.load_adapter(reloaded, tmp_path) == spec
    reloaded.eval()
    ids = torch.tensor(json.loads((base / "input_ids.json").read_text()))
    with torch.no_grad():
        assert torch.equal(model(ids), reloaded(ids))


@pytest.mark.parametrize("method", ["dora", "loran"])
def test_rank_report_shows_dora_and_loran_above_r(stories_dir, data_dir, tmp_path, method):
    out = tmp_path / method
    train.main(train_args(stories_dir, data_dir, out, "--method", method, "--rank", "2", "--max-steps", "3",
                          "--lr", "5e-2", "--eval-every", "3"))
    rows = evaluate.main(["--adapter", str(out), "--rank-report", "--device", "cpu"])
    assert rows and all(2 < r["rank"] <= r["bound"] <= min(r["shape"]) for r in rows)
    if method == "dora":  # every magnitude moved: (m/n − 1) ⊙ W0 is full rank
        assert all(r["bound"] == min(r["shape"]) == r["rank"] for r in rows)
        return
    tensors = load_safetensors(out / "adapter_model.safetensors")
    row = rows[0]
    A, B = (tensors[f"base_model.model.{row['layer']}.loran_{k}"].double() for k in "AB")
    BA = B @ A  # s = 1; the sine part of Sinter, λ x sin(ω x), against the LoRA part
    assert row["sine_share"] == pytest.approx((5e-4 * BA * torch.sin(1e3 * BA)).norm().item() / BA.norm().item(),
                                              rel=1e-9)
    assert 0 < row["sine_share"] < 5e-4


# -----------------------------------------------------------------------------
# HiLoRA (hira.py with a LoRA part, HiRA paper §6.6) through train.py, its adapter file and eval.py

@pytest.mark.slow  # two trainings of each twin
@pytest.mark.parametrize("r1, r2, twin", [("4", "0", "hira"), ("0", "4", "lora")])
def test_hilora_with_a_rank_of_zero_trains_as_hira_or_lora_bit_for_bit(stories_dir, data_dir, tmp_path, r1, r2, twin):
    # r2 = 0 is HiRA, r1 = 0 is LoRA (at s = 1): with the same seed, lr and dropout (0.1, so the same masks must be
    # drawn too) the same losses at every step, and the adapter file holds the same tensors under the same keys
    common = ["--max-steps", "4", "--lr", "2e-2", "--eval-every", "2", "--dropout", "0.1"]
    train.main(train_args(stories_dir, data_dir, tmp_path / "hilora", "--method", "hilora", "--rank", r1,
                          "--lora-rank", r2, *common))
    train.main(train_args(stories_dir, data_dir, tmp_path / twin, "--method", twin, *common))
    logs = [[{k: v for k, v in json.loads(line).items() if k != "time"} for line in
             (tmp_path / run / "log.jsonl").read_text().splitlines()] for run in ("hilora", twin)]
    assert logs[0] == logs[1] and len(logs[0]) == 4 and logs[0][0]["loss"] != logs[0][-1]["loss"]
    ours, theirs = (load_safetensors(tmp_path / run / "adapter_model.safetensors") for run in ("hilora", twin))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert all(t.abs().max() > 0 for t in ours.values())  # trained: B moved off zero
    config = json.loads((tmp_path / "hilora" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_r"], config["lora_alpha"], config["hilora_dropout"]) == (
        "HILORA", int(r1), int(r2), None if r2 == "0" else 4.0, 0.1)


def test_hilora_rank_report_and_file_round_trip(stories_dir, data_dir, tmp_path):
    out = tmp_path / "hilora"
    train.main(train_args(stories_dir, data_dir, out, "--method", "hilora", "--rank", "2", "--lora-rank", "2",
                          "--alpha", "4", "--max-steps", "3", "--lr", "5e-2", "--eval-every", "3"))
    tensors = load_safetensors(out / "adapter_model.safetensors")
    layer = "model.layers.0.self_attn.q_proj"
    assert {k.removeprefix(f"base_model.model.{layer}.") for k in tensors if layer in k} == {
        "hira_A", "hira_B", "lora_A.weight", "lora_B.weight"}
    rows = evaluate.main(["--adapter", str(out), "--rank-report", "--device", "cpu"])
    # the Hadamard part lifts the rank far above r1 + r2 = 4, to min(out, in) on stories260K's layers
    assert rows and all(4 < r["rank"] <= r["bound"] == min(r["shape"]) for r in rows)
    # the file read back is the adapter that was trained: ΔW = W0 ⊙ (B1 A1) + (alpha / r2) B2 A2 from its tensors
    model, _, spec = evaluate.load(evaluate.parse_args(["--adapter", str(out), "--device", "cpu"]))
    assert spec == adapters.settings("hilora", 2, lora_rank=2, alpha=4.0)
    q = model.get_submodule(layer)
    t = {k: tensors[f"base_model.model.{layer}.{k}"] for k in ("hira_A", "hira_B", "lora_A.weight", "lora_B.weight")}
    expected = q.base.weight * (t["hira_B"] @ t["hira_A"]) + 2.0 * t["lora_B.weight"] @ t["lora_A.weight"]
    assert torch.equal(q.delta_weight(), expected)
    # a config that lacks r2, or gives an alpha to a LoRA part of rank 0: one line naming the file and the field
    config_file = out / "adapter_config.json"
    config = json.loads(config_file.read_text())
    for bad, message in [({k: v for k, v in config.items() if k != "lora_r"}, "missing field 'lora_r'"),
                         ({**config, "lora_r": 0}, "alpha (4.0) scales HiLoRA's LoRA part")]:
        config_file.write_text(json.dumps(bad))
        with pytest.raises(SystemExit) as e:
            cli.run(evaluate.main, ["--adapter", str(out), "--rank-report", "--device", "cpu"])
        assert e.value.code.startswith(f"error: {config_file}: {message}")
