"""support/commonsense.baselines: the levels an accuracy is read against, on records whose options are known."""
import pytest

from support import commonsense


def record(answer, formats="answer1/answer2/answer3/answer4"):
    return {"instruction": f"Question ... Answer format: {formats}", "input": "", "answer": answer,
            "output": f"the correct answer is {answer}"}


def test_chance_is_the_mean_of_one_over_each_records_options_and_majority_the_commonest_gold():
    records = [record("answer1"), record("answer1"), record("answer2", "answer1/answer2"),
               record("answer3", "answer1/answer2/answer3/answer4/answer5")]
    b = commonsense.baselines("ARC-Easy", records, ["answer1", "answer1", "answer1", None])
    assert b["chance"] == pytest.approx(100 * (1 / 4 + 1 / 4 + 1 / 2 + 1 / 5) / 4)
    assert (b["majority"], b["majority_answer"]) == (50.0, "answer1")
    assert (b["top_prediction"], b["top_prediction_share"]) == ("answer1", 75.0)


def test_an_unparsed_answer_counts_as_one_answer_of_its_own():
    records = [record("true", "true/false")] * 4
    b = commonsense.baselines("boolq", records, [None, None, None, "true"])
    assert b["chance"] == 50.0 and b["majority"] == 100.0
    assert (b["top_prediction"], b["top_prediction_share"]) == (None, 75.0)
