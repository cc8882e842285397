"""support/commonsense.baselines: the levels an accuracy is read against, on records whose options are known."""
import pytest

from support import commonsense


def record(answer, formats="answer1/answer2/answer3/answer4"):
    return {"instruction": f"Question ... Answer format: {formats}", "input": "", "answer": answer,
            "output": f"the correct answer is {answer}"}


def test_chance_is_the_mean_of_one_over_each_records_options_and_majority_the_commonest_gold():
    records = [record("answer1"), record("answer1"), record("answer2", "answer1/answer2"),
               record("answer3", "answer1/answer2/answer3/answer4/answer5")]
    b = commonsense.baselines([commonsense.gold_answer("ARC-Easy", r) for r in records],
                              [len(commonsense.candidates("ARC-Easy", r)) for r in records],
                              ["answer1", "answer1", "answer1", None])
    assert b["chance"] == pytest.approx(100 * (1 / 4 + 1 / 4 + 1 / 2 + 1 / 5) / 4)
    assert (b["majority"], b["majority_answer"]) == (50.0, "answer1")
    assert (b["top_prediction"], b["top_prediction_share"]) == ("answer1", 75.0)


def test_an_unparsed_answer_counts_as_one_answer_of_its_own():
    b = commonsense.baselines(["true"] * 4, [2, 2, 2, 2], [None, None, None, "true"])
    assert b["chance"] == 50.0 and b["majority"] == 100.0
    assert (b["top_prediction"], b["top_prediction_share"]) == (None, 75.0)


def test_chance_is_unknown_when_an_examples_option_count_is():
    assert commonsense.baselines(["answer1", "answer2"], [4, None], ["answer1", "answer1"])["chance"] is None


def test_the_warning_fires_on_the_committed_one_epoch_predictions(capsys):
    """Re-scored from their predictions.jsonl: BoolQ and WinoGrande are >= 90 % one answer; the table carries
    chance, the majority class and each result's commonest-answer share."""
    import eval as evaluate
    from conftest import ROOT
    evaluate.main(["--table", str(ROOT / "results/study/epoch/pera/eval-loglik/results.json")])
    out = capsys.readouterr().out
    warned = [line.split(": ")[2] for line in out.splitlines() if ": warning: " in line]
    assert warned == ["boolq", "winogrande"]
    assert "| *chance* | - | 50.00 | 50.00 | 33.33 | 50.00 |" in out
    assert "| *majority class* | - | 63.00 | 50.60 | 35.00 | 50.40 | 27.00 | 28.80 | 27.60 | 40.34 |" in out
    assert "| *PERA r=4: its commonest answer's share* | - | 96.00 | 81.00 |" in out


def test_no_warning_where_the_model_discriminates(tmp_path, capsys):
    """A result above chance whose answers follow the gold ones: no warning, and the levels come from its lines."""
    import json

    import eval as evaluate
    golds = ["true", "false"] * 10
    predictions = golds[:17] + ["true", "true", "true"]  # 18 of 20 right, 60 % "true"
    lines = [{"task": "boolq", "index": i, "answer": g, "correct": p == g, "prediction": p,
              "scores": {"true": 0.0, "false": -1.0}, "tokens_cut": 0} for i, (g, p) in enumerate(zip(golds, predictions))]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    correct = sum(x["correct"] for x in lines)
    (tmp_path / "results.json").write_text(json.dumps({"name": "LoRA r=4", "tasks": {"boolq": {
        "accuracy": 100 * correct / 20, "correct": correct, "n": 20}}, "average": 100 * correct / 20}))
    evaluate.main(["--table", str(tmp_path / "results.json")])
    out = capsys.readouterr().out
    assert "warning" not in out and "| LoRA r=4 | - | 90.00 | 90.00 |" in out
    assert "| *chance* | - | 50.00 | 50.00 |" in out and "| *majority class* | - | 50.00 | 50.00 |" in out
    assert "its commonest answer's share* | - | 60.00 | - |" in out


def test_eval_writes_the_levels_of_the_examples_it_scored(tmp_path):
    """results.json carries, per task, chance, the majority class and the commonest answer's share, computed
    from the test records and the predictions eval.py wrote (zero-shot stories260K, log-likelihood)."""
    import json

    import eval as evaluate
    from conftest import ROOT
    data = ROOT / "tests/fixtures/commonsense"
    result = evaluate.main(["--model", str(ROOT / "tests/fixtures/models/stories260K"), "--data", str(data),
                            "--tasks", "boolq,ARC-Easy", "--mode", "loglik", "--limit", "6", "--out", str(tmp_path)])
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    for task in ("boolq", "ARC-Easy"):
        records = commonsense.load_records(data / task / "test.json")[:6]
        mine = [x for x in lines if x["task"] == task]
        want = commonsense.baselines([commonsense.gold_answer(task, r) for r in records],
                                     [len(commonsense.candidates(task, r)) for r in records],
                                     [x["prediction"] for x in mine])
        assert {k: result["tasks"][task][k] for k in want} == want
    assert json.loads((tmp_path / "results.json").read_text())["tasks"]["boolq"]["chance"] == 50.0
