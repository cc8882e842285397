"""The commonsense-reasoning protocol of LLM-Adapters, as DoRA, HiRA and PERA use it.

Eight multiple-choice tasks, each record `{"instruction", "input", "output", "answer"}` where `output`
reads "the correct answer is answer2" and `answer` is the bare label. A model is fine-tuned on the
prompt below followed by `output`, then asked to generate after an empty response; its prediction is
the first match of the task's answer pattern in what it wrote.
"""
import collections
import json
import re
from pathlib import Path

# The paper's table order, with the column names the papers print.
TASKS = ["boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa"]
COLUMNS = {"boolq": "BoolQ", "piqa": "PIQA", "social_i_qa": "SIQA", "hellaswag": "HellaS.", "winogrande": "WinoG.",
           "ARC-Easy": "ARC-e", "ARC-Challenge": "ARC-c", "openbookqa": "OBQA"}

# The answer each task's output names; the first match in generated text is the prediction.
ANSWER_PATTERNS = {
    "boolq": r"true|false",
    "piqa": r"solution1|solution2",
    "social_i_qa": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Easy": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Challenge": r"answer1|answer2|answer3|answer4|answer5",
    "openbookqa": r"answer1|answer2|answer3|answer4|answer5",
    "hellaswag": r"ending1|ending2|ending3|ending4",
    "winogrande": r"option1|option2",
}

# The HiRA/PERA code's template (note the two spaces after "request."). LLM-Adapters' variant for a
# record with a non-empty `input` adds it as its own section.
PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
          "the request.  \n\n### Instruction:\n{instruction}\n\n### Response:\n")
PROMPT_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.  \n\n### Instruction:\n"
                     "{instruction}\n\n### Input:\n{input}\n\n### Response:\n")

PROMPT_CUTOFF = 256  # tokens of prompt kept for training (the HiRA/PERA code's cutoff)
TARGET_CUTOFF = 16  # tokens of response kept for training


def prompt(record: dict) -> str:
    if record.get("input"):
        return PROMPT_WITH_INPUT.format(instruction=record["instruction"], input=record["input"])
    return PROMPT.format(instruction=record["instruction"])


def load_records(path) -> list:
    """A task file: a JSON list of records; a malformed one is an error naming the file and the record."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such data file") from None
    except UnicodeDecodeError as e:  # UTF-16, Latin-1, binary
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    if not records:
        raise ValueError(f"{path}: holds no records (an empty list)")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: record {i} is not an object")
        for key in ("instruction", "output", "answer"):
            if not isinstance(r.get(key), str):
                raise ValueError(f"{path}: record {i} has no string field '{key}'")
        if not isinstance(r.get("input", ""), str):
            raise ValueError(f"{path}: record {i} has a non-string 'input'")
        for key in ("instruction", "input", "output", "answer"):
            try:
                r.get(key, "").encode("utf-8")
            except UnicodeEncodeError as e:  # JSON's "\ud800" escape gives a lone surrogate, not a character
                raise ValueError(f"{path}: record {i} field '{key}' holds a lone surrogate "
                                 f"({e.object[e.start:e.end]!r} at character {e.start}), which is not text") from None
    return records


def tasks_present(data_dir, split) -> list:
    """The tasks (of the eight, in table order) that have `<data_dir>/<task>/<split>.json`."""
    return [t for t in TASKS if (Path(data_dir) / t / f"{split}.json").is_file()]


def resolve_tasks(data_dir, split, requested=None) -> list:
    """`requested` (a list or comma-separated string) checked against what is on disk; default: all present."""
    present = tasks_present(data_dir, split)
    if requested is None:
        if not present:
            raise FileNotFoundError(f"{data_dir}: no <task>/{split}.json for any of {', '.join(TASKS)} "
                                    f"(run `python prepare.py` first)")
        return present
    tasks = [t.strip() for t in requested.split(",")] if isinstance(requested, str) else list(requested)
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task '{t}' (tasks: {', '.join(TASKS)})")
        if t not in present:
            raise FileNotFoundError(f"{Path(data_dir) / t / (split + '.json')}: not found")
    return tasks


def extract_answer(task: str, text: str):
    """The first match of the task's answer pattern in `text`, or None when there is none."""
    match = re.search(ANSWER_PATTERNS[task], text)
    return match.group(0) if match else None


def gold_answer(task: str, record: dict) -> str:
    return record["answer"].strip() or extract_answer(task, record["output"])


def check_gold(task: str, records: list, path):
    """Every record's gold answer must be one of the task's labels: an unreadable one (no `answer`, none in
    `output`) would match an unparsed prediction, None == None, and another label set (BoolQ's yes/no)
    would score a silent 0 %."""
    labels = ANSWER_PATTERNS[task].split("|")
    bad = [i for i, r in enumerate(records) if gold_answer(task, r) not in labels]
    if bad:
        r = records[bad[0]]
        raise ValueError(f"{path}: {len(bad)} of {len(records)} records have no gold answer among {task}'s labels "
                         f"({', '.join(labels)}); the first is record {bad[0]}: answer {r['answer']!r}, output "
                         f"{r['output'][:80]!r}")


def candidates(task: str, record: dict) -> list:
    """The labels a record offers: its "Answer format: a/b/c" line, else every label the pattern knows."""
    match = re.search(r"Answer format:\s*(\S+)", record["instruction"])
    if match:
        labels = [c for c in match.group(1).split("/") if re.fullmatch(ANSWER_PATTERNS[task], c)]
        if labels:
            return labels
    return ANSWER_PATTERNS[task].split("|")


ONE_ANSWER = 90.0  # % of a task's predictions on one answer from which eval.py warns: the model does not discriminate


def baselines(golds: list, options: list, predictions: list) -> dict:
    """What a task's accuracy must be read against, in %: chance (the mean over examples of 1 / the options each
    offers; None where an example's count is unknown), the majority class (the most frequent gold answer's share)
    and the most frequent prediction's share (an unparsed answer, None, counts as one answer)."""
    top, count = collections.Counter(predictions).most_common(1)[0]
    majority, n_majority = collections.Counter(golds).most_common(1)[0]
    chance = None if None in options else 100 * sum(1 / n for n in options) / len(options)
    return {"chance": chance, "majority": 100 * n_majority / len(golds), "majority_answer": majority,
            "top_prediction": top, "top_prediction_share": 100 * count / len(predictions)}


def response_for(record: dict, label: str) -> str:
    """The record's output with `label` as its answer ("the correct answer is answer3")."""
    output, answer = record["output"], record["answer"]
    prefix = output[: -len(answer)] if answer and output.endswith(answer) else "the correct answer is "
    return prefix + label


def template_tokens(tokenizer, bos: bool) -> int:
    """Tokens of the prompt around an empty instruction: the fewest a prompt cut-off can keep and still end
    with "### Response:", the line the model learns to answer after."""
    return len(tokenizer.encode(prompt({"instruction": ""}), bos=bos))


def encode_example(tokenizer, record: dict, bos: bool, train_on_inputs=False,
                   prompt_cutoff=PROMPT_CUTOFF, target_cutoff=TARGET_CUTOFF):
    """Token ids of prompt + output + end token, and labels (-100 where no loss is taken).

    The prompt and the full text are tokenized separately and the boundary is their common prefix, so
    a tokenizer that merges across it (a SentencePiece "▁" before the response) is still split where
    the full text's tokens change. By default the loss is on the response only, as in the HiRA/PERA
    code; `train_on_inputs` puts it on the prompt too, as LLM-Adapters' finetune.py does.
    """
    p = prompt(record)
    prompt_ids = tokenizer.encode(p, bos=bos)
    full = tokenizer.encode(p + record["output"], bos=bos)
    n = 0
    while n < min(len(prompt_ids), len(full)) and prompt_ids[n] == full[n]:
        n += 1
    source, target = full[:n][:prompt_cutoff], full[n:][:target_cutoff]
    if tokenizer.eos_id is not None:
        target = target + [tokenizer.eos_id]
    ids = source + target
    labels = list(ids) if train_on_inputs else [-100] * len(source) + target
    return ids, labels
