"""Evaluate a model, with or without an adapter, on the commonsense-reasoning test sets.

    python eval.py --adapter runs/pera-r4 --limit 200

generate (the papers' protocol): greedy decoding of up to 32 tokens after the prompt; the prediction is
the first match of the task's answer pattern, compared with the gold answer; no match counts as wrong.
loglik: each answer the question offers is scored by its log-likelihood as the response; the best one
is the prediction (no parsing, so no parse failures).
Prints the paper's table and writes predictions.jsonl and results.json. Predictions are saved as they come
(predictions.jsonl.partial): a run stopped by Ctrl-C, SIGTERM or a full disk keeps them, and the same command
continues it; an --out that holds an evaluation is refused unless --overwrite. --rank-report measures the
rank and effective rank of every adapted layer's ΔW; --table prints earlier results.json files side by side.
"""
import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from model import Transformer, check_vocabulary
from support import adapters, cli, commonsense, provenance, safety
from tokenizer import Tokenizer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    p.add_argument("--model", default=None, help="Hugging Face model folder (default: the adapter's base model, "
                                                 "else checkpoints/SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", default=None, help="adapter folder from train.py (default: the base model zero-shot)")
    p.add_argument("--data", default="data/commonsense", help="folder of <task>/test.json files")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: every test set present)")
    p.add_argument("--limit", type=cli.POSITIVE_INT, default=None, help="first N examples of each task")
    p.add_argument("--batch-size", type=cli.POSITIVE_INT, default=16, help="examples per forward pass")
    p.add_argument("--mode", choices=["generate", "loglik"], default="generate",
                   help="generate: the papers' protocol (greedy answer, its first match of the answer pattern); "
                        "loglik: the answer option of highest log-likelihood")
    p.add_argument("--max-new-tokens", type=cli.POSITIVE_INT, default=32, help="the longest answer generated")
    p.add_argument("--merge", action="store_true", help="fold the adapter into the weights before evaluating")
    p.add_argument("--out", default=None, help="output folder (default: <adapter>/eval-<mode>, or runs/zero-shot/eval-<mode>)")
    p.add_argument("--overwrite", action="store_true", help="replace the evaluation --out holds (finished or not)")
    p.add_argument("--device", type=cli.device, default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each block (the same answers): on a CPU ~25 s of compiling, then 0.75-0.9 x "
                        "eager's time per example; off by default: it needs a C++ compiler and pays off only after a "
                        "few hundred examples (docs/bench.md#compile)")
    p.add_argument("--rank-report", action="store_true", help="report rank and effective rank of each ΔW, then exit")
    p.add_argument("--table", nargs="+", metavar="RESULTS_JSON", help="print these results files as one table, then exit")
    args = p.parse_args(argv)
    if (args.merge or args.rank_report) and not args.adapter:
        p.error("--merge and --rank-report need --adapter")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return args


def base_model(args):
    """Set args.model to the base model, --model, else the one the adapter names, else SmolLM2 (recorded in
    results.json as given; a relative path is read from here), and check it is there; return the one the
    adapter names, or None."""
    trained_on = None
    if args.adapter:
        config_file = Path(args.adapter) / "adapter_config.json"
        if not config_file.is_file():
            sys.exit(f"error: {args.adapter}: no adapter_config.json")
        trained_on = provenance.trained_on(args.adapter)  # not JSON, not an object, a base that is not a path
    args.model = str(args.model or trained_on or "checkpoints/SmolLM2-135M-Instruct")
    base = Path(args.model)
    if not (base / "tokenizer.json").is_file():
        named = (f" (the base model {Path(args.adapter) / 'adapter_config.json'} names)" if args.model == trained_on
                 else "")
        what = "no tokenizer.json" if base.is_dir() else "no such folder"
        sys.exit(f"error: {args.model}{named}: {what} (run `python prepare.py`, or pass --model DIR)")
    return trained_on


def load(args):
    """The model (with its adapter injected, or merged) and its tokenizer; the adapter's settings or None."""
    settings, trained_on = None, base_model(args)
    base = Path(args.model)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = Transformer.from_pretrained(base, dtype=dtype, device=device)
    tokenizer = Tokenizer.from_file(base / "tokenizer.json")
    check_vocabulary(tokenizer, model, base)
    if args.adapter:
        try:
            settings = adapters.load_adapter(model, args.adapter)
        except ValueError as e:
            if trained_on and Path(trained_on).resolve() != base.resolve():
                raise ValueError(f"{e} (the adapter was trained on {trained_on}, not {base})") from None
            raise
        if args.merge:
            adapters.merge(model, settings["method"])
    return model.eval(), tokenizer, settings


# -----------------------------------------------------------------------------
# The two ways of answering.

def by_length(items, key):
    """Indices sorted by length, longest first: padding shrinks, and a memory problem shows at once."""
    return sorted(range(len(items)), key=lambda i: -len(key(items[i])))


def keep_last(ids, room, bos):
    """ids cut to their last `room` tokens (after the BOS token, when there is one), so that the end of the
    prompt, "### Response:", stays next to the answer; the number of tokens cut, or 0."""
    if len(ids) <= room:
        return ids, 0
    head = ids[:1] if bos else []
    return head + ids[len(ids) - room + len(head):], len(ids) - room


@torch.no_grad()
def generate_answers(model, tokenizer, task, records, batch_size, max_new_tokens, bar):
    """Greedy generation for every record, batched with left padding; the same for any batch size.

    A prompt longer than the model's positions less max_new_tokens keeps its last tokens (keep_last)."""
    room = model.config.max_position_embeddings - max_new_tokens
    prompts = [keep_last(tokenizer.encode(commonsense.prompt(r), bos=tokenizer.add_bos), room, tokenizer.add_bos)
               for r in records]
    cut = [n for _, n in prompts]
    prompts = [ids for ids, _ in prompts]
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    device = model.model.embed_tokens.weight.device
    out = [None] * len(records)
    order = by_length(prompts, lambda p: p)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        T = max(len(prompts[i]) for i in rows)
        ids = torch.tensor([[pad] * (T - len(prompts[i])) + prompts[i] for i in rows], device=device)
        mask = torch.tensor([[0] * (T - len(prompts[i])) + [1] * len(prompts[i]) for i in rows], device=device)
        new = model.generate(ids, max_new_tokens, eos_id=tokenizer.eos_id, attention_mask=mask)[:, T:]
        for row, i in enumerate(rows):
            tokens = new[row].tolist()
            if tokenizer.eos_id in tokens:
                tokens = tokens[:tokens.index(tokenizer.eos_id)]
            text = tokenizer.decode(tokens)
            prediction = commonsense.extract_answer(task, text)
            out[i] = {"output": text, "prediction": prediction, "tokens_cut": cut[i]}
        bar.update(len(rows))
    return out


@torch.no_grad()
def loglik_answers(model, tokenizer, task, records, batch_size, bar):
    """Score every offered answer by the summed log-probability of its response tokens."""
    bos = tokenizer.add_bos
    seqs, owners = [], []  # one (ids, first scored position) per (record, candidate)
    for i, r in enumerate(records):
        p = commonsense.prompt(r)
        prompt_ids = tokenizer.encode(p, bos=bos)
        for label in commonsense.candidates(task, r):
            full = tokenizer.encode(p + commonsense.response_for(r, label), bos=bos)
            n = next((k for k, (a, b) in enumerate(zip(prompt_ids, full)) if a != b), min(len(prompt_ids), len(full)))
            # too long for the model's positions: the prompt's start goes, the response is always scored
            full, cut = keep_last(full, model.config.max_position_embeddings, bos)
            seqs.append((full, max(n - cut, 1), cut))
            owners.append((i, label))
    device = model.model.embed_tokens.weight.device
    scores = [None] * len(seqs)
    left = [0] * len(records)  # candidates still to score per record: the bar counts a record once, when done
    for i, _ in owners:
        left[i] += 1
    order = by_length(seqs, lambda s: s[0])
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        T = max(len(seqs[i][0]) for i in rows)
        ids = torch.zeros(len(rows), T, dtype=torch.long)
        labels = torch.full((len(rows), T), -100, dtype=torch.long)
        for row, i in enumerate(rows):
            full, n, _ = seqs[i]
            ids[row, :len(full)] = torch.tensor(full)
            labels[row, n:len(full)] = torch.tensor(full[n:])
        ids, labels = ids.to(device), labels.to(device)
        h = model.hidden(ids)[:, :-1]  # right padding: causal attention keeps it out of every real position
        targets = labels[:, 1:]
        keep = targets != -100
        logp = -F.cross_entropy(model.logits(h[keep]).float(), targets[keep], reduction="none")
        per_row = torch.zeros(len(rows), device=device).index_add_(0, keep.nonzero()[:, 0], logp)
        for row, i in enumerate(rows):
            scores[i] = per_row[row].item()
        done = 0
        for i in rows:
            left[owners[i][0]] -= 1
            done += left[owners[i][0]] == 0
        bar.update(done)
    out = [{"scores": {}, "tokens_cut": 0} for _ in records]
    for (i, label), score, (_, _, cut) in zip(owners, scores, seqs):
        out[i]["scores"][label] = round(score, 4)
        out[i]["tokens_cut"] = max(out[i]["tokens_cut"], cut)
    for o in out:
        o["prediction"] = max(o["scores"], key=o["scores"].get)
    return out


# -----------------------------------------------------------------------------
# Tables.

def table(rows) -> str:
    """The paper's table: one row per result, one column per task, then the average (accuracy in %); below them
    the levels to read it against, chance and the majority class, from the first result that has them."""
    tasks = [t for t in commonsense.TASKS if any(t in r["tasks"] for r in rows)]
    head = ["Method", "Params (%)"] + [commonsense.COLUMNS[t] for t in tasks] + ["Avg."]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r["name"], f"{r['trainable_percent']:.4f}" if r.get("trainable_percent") is not None else "-"]
        cells += [f"{r['tasks'][t]['accuracy']:.2f}" if t in r["tasks"] else "-" for t in tasks]
        lines.append("| " + " | ".join(cells + [f"{r['average']:.2f}"]) + " |")
    for key, name in (("chance", "*chance*"), ("majority", "*majority class*")):
        levels = [next((r["tasks"][t].get(key) for r in rows if r["tasks"].get(t, {}).get(key) is not None), None)
                  for t in tasks]
        if any(v is not None for v in levels):
            mean = f"{sum(levels) / len(levels):.2f}" if None not in levels else "-"
            lines.append("| " + " | ".join([name, "-"] + [f"{v:.2f}" if v is not None else "-" for v in levels]
                                           + [mean]) + " |")
    for r in rows:  # how often each result gives its commonest answer: near 100, the model does not discriminate
        shares = [r["tasks"].get(t, {}).get("top_prediction_share") for t in tasks]
        if any(v is not None for v in shares):
            lines.append("| " + " | ".join([f"*{r['name']}: its commonest answer's share*", "-"]
                                           + [f"{v:.2f}" if v is not None else "-" for v in shares] + ["-"]) + " |")
    return "\n".join(lines)


def levels(task, lines, records=None) -> dict:
    """commonsense.baselines of a task's predictions: the options and gold answers from the test records, or,
    re-scoring a predictions.jsonl without them, from the lines (loglik's scores name the options)."""
    if records is not None:
        golds = [commonsense.gold_answer(task, records[x["index"]]) for x in lines]
        options = [len(commonsense.candidates(task, records[x["index"]])) for x in lines]
    else:
        golds, options = [x["answer"] for x in lines], [len(x["scores"]) if "scores" in x else None for x in lines]
    return commonsense.baselines(golds, options, [x["prediction"] for x in lines])


def one_answer_warnings(result) -> list:
    """A line for each task whose predictions are >= commonsense.ONE_ANSWER % one answer."""
    return [f"warning: {task}: {r['top_prediction_share']:.0f} % of the predictions are {r['top_prediction']!r}: "
            f"the model does not discriminate here; read its {r['accuracy']:.2f} % against the majority class "
            f"({r['majority']:.2f} %)" + (f" and chance ({r['chance']:.2f} %)" if r.get("chance") is not None else "")
            for task, r in result["tasks"].items() if r.get("top_prediction_share", 0) >= commonsense.ONE_ANSWER]


def with_levels(result, path):
    """A results.json written before eval.py reported the levels: re-scored from the predictions.jsonl beside it."""
    predictions = Path(path).parent / "predictions.jsonl"
    if all("majority" in r for r in result["tasks"].values()) or not predictions.is_file():
        return result
    lines = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines() if line.strip()]
    for task, r in result["tasks"].items():
        mine = [x for x in lines if isinstance(x, dict) and x.get("task") == task]
        if len(mine) != r.get("n", len(mine)) or not all({"answer", "prediction"} <= set(x) for x in mine):
            raise ValueError(f"{predictions}: its {task} lines are not the {r.get('n')} predictions of {path}")
        r.update(levels(task, mine))
    return result


def run_name(settings):
    if settings is None:
        return "zero-shot"
    label = getattr(adapters.METHODS[settings["method"]], "label", lambda settings: "")  # PERA's terms, HiLoRA's r2
    return f"{adapters.label(settings['method'])} r={settings['rank']}{label(settings)}"


def ranks(dw):
    """(rank, effective rank) of a matrix: the singular values above σ_max · max(shape) · ε (numpy's and torch's
    matrix_rank rule), and exp(−Σ p log p) with p = σ / Σσ over σ > 0 (Roy & Vetterli 2007); (0, 0.0) for zero."""
    s = torch.linalg.svdvals(dw)
    rank = int((s > s.max() * max(dw.shape) * torch.finfo(dw.dtype).eps).sum()) if s.max() > 0 else 0
    p = s[s > 0] / s.sum()
    return rank, float(torch.exp(-(p * p.log()).sum())) if len(p) else 0.0


@torch.no_grad()
def rank_report(model, settings):
    """Per adapted layer: rank and effective rank of ΔW (in float64), the method's bound on the rank (its class's
    rank_bound), and for a method whose class reports a share (PERA's polynomial terms, LoRAN's sine terms) what
    those terms add to its LoRA part, ‖ΔW − s·BA‖ / ‖s·BA‖."""
    rows = []
    for name, layer in adapters.adapter_layers(model, settings["method"]).items():
        layer = copy.deepcopy(layer).double()  # a float64 copy: rank is sensitive to rounding
        dw = layer.delta_weight()
        rank, erank = ranks(dw)
        row = {"layer": name, "shape": list(dw.shape), "rank": rank, "effective_rank": round(erank, 2),
               "bound": min(layer.rank_bound(), min(dw.shape))}
        if hasattr(layer, "share"):  # PERA's polynomial terms, LoRAN's sine terms: what they add to LoRA's part
            kind, row[f"{kind}_share"] = layer.share()
        rows.append(row)
    return rows


def print_rank_report(rows, settings):
    by_target = {}
    for row in rows:
        by_target.setdefault(row["layer"].rsplit(".", 1)[-1], []).append(row)
    shares = [k for k in rows[0] if k.endswith("_share")] if rows else []  # PERA's polynomial, LoRAN's sine share
    has_share, terms = bool(shares), shares[0].removesuffix("_share") if shares else None
    print(f"ΔW of {run_name(settings)}, mean over {len(rows) // max(1, len(by_target))} layers: rank, effective rank "
          f"(exp of the entropy of the normalised singular values), the bound on the rank"
          + (f", and ‖ΔW − sBA‖ / ‖sBA‖ (how much the {terms} terms add to LoRA's part)" if has_share else ""))
    print("| target | shape | rank | effective rank | bound |" + (f" {terms} share |" if has_share else ""))
    print("|---|---|---|---|---|" + ("---|" if has_share else ""))
    for target, group in by_target.items():
        mean = lambda k: sum(g[k] for g in group) / len(group)  # noqa: E731
        print(f"| {target} | {group[0]['shape'][0]}x{group[0]['shape'][1]} | {mean('rank'):.1f} | "
              f"{mean('effective_rank'):.1f} | {group[0]['bound']} |"
              + (f" {mean(terms + '_share'):.2e} |" if has_share else ""))


# -----------------------------------------------------------------------------
# The output folder: one evaluation, saved as it goes.

PARTIAL = "predictions.jsonl.partial"  # line 1: the settings; then one line per example, as it is answered


def settings_of(args, data):
    """What decides the answers: an unfinished evaluation continues only with the same. An adapter that the
    model already has merged in is refused here, before anything is written."""
    sha256 = adapters.digest(args.adapter) if args.adapter else None
    provenance.check_not_applied(args.adapter, args.model, sha256)
    return {"model": args.model, "adapter": args.adapter, "merge": args.merge, "mode": args.mode,
            "adapter_sha256": sha256[:16] if sha256 else None,  # retrained since?
            "data": args.data, "tasks": list(data), "limit": args.limit,
            "max_new_tokens": args.max_new_tokens if args.mode == "generate" else None,
            "dtype": "bfloat16" if torch.device(args.device).type == "cuda" else "float32"}


def open_out(out, settings, overwrite):
    """Make --out ready for this evaluation and return the predictions it already holds for it.

    An evaluation there, finished (results.json) or unfinished with other settings, is refused unless
    --overwrite; an unfinished one with the same settings is continued. The partial file is written now,
    so an --out that cannot be written fails before the first example."""
    partial, lines = out / PARTIAL, []
    for name in ("results.json", "predictions.jsonl", PARTIAL):  # eval.py's files, which it replaces: never a folder
        if (out / name).exists() and not (out / name).is_file():
            sys.exit(f"error: {out / name}: not a file (eval.py writes its evaluation there); remove it, or choose "
                     f"another --out")
    if overwrite:
        for name in ("results.json", "predictions.jsonl", PARTIAL):
            (out / name).unlink(missing_ok=True)
    if (out / "results.json").is_file():
        sys.exit(f"error: {out} already holds an evaluation (results.json); pass --overwrite to replace it, or "
                 f"choose another --out")
    if partial.is_file():
        with cli.user_input(partial):
            text = partial.read_text(encoding="utf-8")
            header, *rest = text.splitlines() or ["{}"]
            saved = json.loads(header)
            if not isinstance(saved, dict):
                raise ValueError("its first line is not eval.py's settings; pass --overwrite to discard it")
        changed = [f"{k} {saved.get(k)} there, {v} here" for k, v in settings.items()
                   if not safety.same_argument(k, saved.get(k), v)]
        if changed and len(rest) > 0:  # a header alone holds nothing to keep
            sys.exit(f"error: {out} holds an unfinished evaluation with other settings ({'; '.join(changed)}); "
                     f"pass --overwrite to discard it, or choose another --out")
        if not changed:
            with cli.user_input(partial):
                lines = read_partial(rest, settings, cut=not text.endswith("\n"))
    adapters.write_text(partial, "".join(json.dumps(x) + "\n" for x in [settings, *lines]))
    return lines


def read_partial(rest, settings, cut):
    """The predictions of an unfinished evaluation's lines, each checked against the data it answers: a known
    task, an index in range, each example once, the prediction re-extracted from what the model wrote (or
    scored) and compared with the data's gold answer (never read). The last line, if `cut` (no newline: a
    kill in the middle of a write), is dropped; any other line that is not eval.py's is an error naming it."""
    data = {t: commonsense.load_records(Path(settings["data"]) / t / "test.json")[:settings["limit"]]
            for t in settings["tasks"]}
    lines, seen = [], set()
    for n, line in enumerate(rest, 2):
        try:
            x = json.loads(line)
        except ValueError:
            if cut and n == len(rest) + 1:
                break
            raise ValueError(f"line {n} is not JSON; pass --overwrite to discard this evaluation") from None
        task, i = x.get("task") if isinstance(x, dict) else None, x.get("index") if isinstance(x, dict) else None
        what = ("not one of eval.py's predictions" if not isinstance(x, dict) else
                f"its task {task!r} is not one of this evaluation's ({', '.join(data)})"
                if not isinstance(task, str) or task not in data else
                f"its index {i!r} is not an example of {task} (0 to {len(data[task]) - 1})"
                if not cli.COUNT.ok(i) or i >= len(data[task]) else
                f"it repeats {task} example {i}" if (task, i) in seen else
                None)
        if what is None:
            what, prediction = answered(x, task, settings["mode"])
        if what is not None:
            raise ValueError(f"line {n}: {what}; pass --overwrite to discard this evaluation")
        seen.add((task, i))
        gold = commonsense.gold_answer(task, data[task][i])
        lines.append({**x, "answer": gold, "prediction": prediction, "correct": prediction == gold})
    return lines


def answered(x, task, mode):
    """(what is wrong with a saved prediction x, or None; its prediction, recomputed from what the model wrote)."""
    if not cli.COUNT.ok(x.get("tokens_cut")):
        return "its tokens_cut is not a count", None
    if mode == "generate":
        if not isinstance(x.get("output"), str):
            return "its output is not text", None
        return None, commonsense.extract_answer(task, x["output"])
    scores = x.get("scores")
    labels = commonsense.ANSWER_PATTERNS[task].split("|")
    if not isinstance(scores, dict) or not scores or not all(k in labels and cli.FINITE.ok(v) for k, v in scores.items()):
        return f"its scores are not finite numbers for {task}'s labels", None
    return None, max(scores, key=scores.get)


def main(argv=None):
    args = parse_args(argv)
    if args.table:
        with cli.user_input():
            rows = [with_levels(read_results(f), f) for f in args.table]
        print(table(rows))
        for r in rows:
            for warning in one_answer_warnings(r):
                print(f"{r['name']}: {warning}")
        return None
    if not args.rank_report:  # the data first: a bad file is reported before minutes of model loading
        with cli.user_input():
            tasks = commonsense.resolve_tasks(args.data, "test", args.tasks)
            data = {}
            for t in tasks:
                data[t] = commonsense.load_records(Path(args.data) / t / "test.json")[:args.limit]
                commonsense.check_gold(t, data[t], Path(args.data) / t / "test.json")
    with cli.user_input():
        base_model(args)  # a model that is not there: said before anything is written
    if args.rank_report:
        with cli.disk_errors(args.adapter):
            safety.check_writable(Path(args.adapter))  # before the work, not after
        return report_ranks(args)
    out = Path(args.out or Path(args.adapter or "runs/zero-shot") / f"eval-{args.mode}")
    lines = []  # every prediction saved in out so far, this session's too

    def kept():
        return f"the predictions of {len(lines)} examples are kept in {out / PARTIAL}; the same command continues"
    with cli.disk_errors(out, kept), safety.folder_lock(out, "eval.py"):
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun the first process writes every file
            with cli.user_input():
                settings = settings_of(args, data)
            lines += open_out(out, settings, args.overwrite)
        return evaluate(args, data, out, lines)


def evaluate(args, data, out, lines):
    """Answer every example not in lines, appending each batch's predictions to the partial file as it goes;
    then results.json and predictions.jsonl. Ctrl-C or SIGTERM stops after a batch, its predictions saved."""
    # under torchrun every process answers every world-th example of each batch and the first writes them all
    rank, world, device = safety.setup_distributed(torch.device(args.device))
    args.device = str(device)
    done = [{(x["task"], x["index"]) for x in lines}]
    if world > 1:
        dist.broadcast_object_list(done)
    with cli.user_input():  # a corrupt model, tokenizer or adapter file; an adapter of another base model
        model, tokenizer, settings = load(args)
    if args.mode == "generate" and args.max_new_tokens >= model.config.max_position_embeddings:
        sys.exit(f"error: --max-new-tokens {args.max_new_tokens} leaves no room for a prompt in the model's "
                 f"{model.config.max_position_embeddings} positions")
    if args.compile:
        model.compile()  # at the first batch, and again for generation's KV cache
    result = result_header(args, settings)  # a bad metrics.json is said before the work
    # the examples left, longest prompts first (less padding; a memory problem shows at once), in batches
    size, batches, start = args.batch_size * world, [], time.time()
    for task, records in data.items():
        todo = [i for i in by_length(records, commonsense.prompt) if (task, i) not in done[0]]
        batches += [(task, todo[i:i + size]) for i in range(0, len(todo), size)]
    stopped = lambda abandoned: sys.exit(  # noqa: E731
        f"\ninterrupted{' twice' if abandoned else ''} after {len(lines)} of {sum(map(len, data.values()))} examples; "
        f"their predictions are kept in {out / PARTIAL}: the same command continues from there" if rank == 0 else 1)
    with safety.Guard(world=world, device=device, stopped=stopped) as guard, cli.compile_errors(), \
            open(out / PARTIAL, "a") if rank == 0 else open(os.devnull, "w") as f, \
            tqdm(total=sum(len(b[rank::world]) for _, b in batches), desc=args.mode, disable=rank != 0) as bar:
        for task, batch in batches:
            bar.set_postfix(task=task)
            mine = [data[task][i] for i in batch[rank::world]]
            if args.mode == "generate":
                answers = generate_answers(model, tokenizer, task, mine, args.batch_size, args.max_new_tokens, bar)
            else:
                answers = loglik_answers(model, tokenizer, task, mine, args.batch_size, bar)
            if world > 1:  # each process's answers, put back in the batch's order
                shards = [None] * world
                dist.all_gather_object(shards, answers)
                answers = [shards[j % world][j // world] for j in range(len(batch))]
            golds = [commonsense.gold_answer(task, data[task][i]) for i in batch]
            new = [{"task": task, "index": i, "answer": gold, "correct": a["prediction"] == gold, **a}
                   for i, gold, a in zip(batch, golds, answers)]
            f.write("".join(json.dumps(x) + "\n" for x in new))
            f.flush()  # saved: a kill from now on keeps this batch
            lines += new
            guard.step_done()  # a signal held during the batch stops the run here, after its predictions
    if world > 1:
        dist.destroy_process_group()
    return write_results(args, data, out, lines, result, time.time() - start, model) if rank == 0 else None


def result_header(args, settings):
    """What results.json says of the run evaluated, before its tasks' scores."""
    result = {"name": run_name(settings), "model": str(args.model), "adapter": args.adapter, "mode": args.mode,
              "merged": args.merge, "limit": args.limit, "tasks": {}}
    if args.adapter and (Path(args.adapter) / "metrics.json").is_file():
        metrics = Path(args.adapter) / "metrics.json"
        with cli.user_input(metrics):
            result["trainable_percent"] = trainable_percent(json.loads(metrics.read_text()))
    return result


def write_results(args, data, out, lines, result, seconds, model):
    """results.json and predictions.jsonl from every example's prediction, the partial file removed; the table."""
    order = list(data)
    lines.sort(key=lambda x: (order.index(x["task"]), x["index"]))  # the examples' order
    for task in data:
        mine = [x for x in lines if x["task"] == task]
        correct, failures = sum(x["correct"] for x in mine), sum(x["prediction"] is None for x in mine)
        result["tasks"][task] = {"accuracy": 100 * correct / len(mine), "correct": correct, "n": len(mine),
                                 "parse_failures": failures, "prompts_cut": sum(x["tokens_cut"] > 0 for x in mine),
                                 **levels(task, mine, data[task])}  # chance, majority class, commonest answer
    result["average"] = sum(t["accuracy"] for t in result["tasks"].values()) / len(result["tasks"])
    n = sum(t["n"] for t in result["tasks"].values())
    result["parse_failure_rate"] = 100 * sum(t["parse_failures"] for t in result["tasks"].values()) / n
    result["seconds"] = round(seconds, 1)  # this session's
    adapters.write_text(out / "predictions.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    adapters.write_json(out / "results.json", result)
    (out / PARTIAL).unlink()
    print(table([result]))
    print("".join(w + "\n" for w in one_answer_warnings(result)), end="")
    print(f"{n} examples in {result['seconds']:.0f} s; parse failures {result['parse_failure_rate']:.1f}% "
          f"(answers with no match count as wrong); written to {out}")
    cut = {t: r["prompts_cut"] for t, r in result["tasks"].items() if r["prompts_cut"]}
    if cut:
        print(f"prompts longer than the model's {model.config.max_position_embeddings} positions"
              f"{f' less {args.max_new_tokens} for the answer' if args.mode == 'generate' else ''} kept their last "
              f"tokens: {', '.join(f'{n} in {t}' for t, n in cut.items())} (tokens_cut in predictions.jsonl)")
    return result


def trainable_percent(metrics):
    """train.py's metrics.json: its trainable_percent, a number or null."""
    if not isinstance(metrics, dict) or not (metrics.get("trainable_percent") is None
                                             or cli.NON_NEGATIVE.ok(metrics["trainable_percent"])):
        raise ValueError("expected train.py's JSON object, with 'trainable_percent' a number or null")
    return metrics.get("trainable_percent")


def report_ranks(args):
    """--rank-report: print it, and save it as <adapter>/rank_report.json."""
    safety.setup_distributed(torch.device(args.device))
    with cli.user_input():
        model, _, settings = load(args)
    rows = rank_report(model, settings)
    print_rank_report(rows, settings)
    with cli.disk_errors(args.adapter, lambda: "the report above is not saved"):
        adapters.write_json(Path(args.adapter) / "rank_report.json", rows)
    return rows


def read_results(path):
    """An eval.py results.json, with what table() reads checked: a bad one is an error naming the file and the key."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:  # not JSON, or not UTF-8
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(result, dict) or not {"name", "tasks", "average"} <= set(result):
        raise ValueError(f"{path}: not an eval.py results.json")
    tasks = result["tasks"] if isinstance(result["tasks"], dict) else None
    number = lambda v: cli.NON_NEGATIVE.ok(v)  # noqa: E731
    checks = [("name", isinstance(result["name"], str)), ("tasks", tasks is not None),
              *((f"tasks.{t}.accuracy", isinstance(r, dict) and number(r.get("accuracy")))
                for t, r in (tasks or {}).items()),
              ("average", number(result["average"])),
              ("trainable_percent", result.get("trainable_percent") is None or number(result["trainable_percent"]))]
    wrong = next((key for key, ok in checks if not ok), None)
    if wrong:
        raise ValueError(f"{path}: '{wrong}' is missing or not what eval.py writes (name: text; tasks: an object of "
                         f"tasks, each with a number accuracy; average and trainable_percent: numbers)")
    for t, r in tasks.items():
        if t not in commonsense.TASKS or r["accuracy"] > 100:
            raise ValueError(f"{path}: 'tasks.{t}' is not one of the tasks ({', '.join(commonsense.TASKS)}) with an "
                             f"accuracy of at most 100")
        if {"correct", "n"} <= set(r) and not (cli.COUNT.ok(r["correct"]) and cli.POSITIVE_INT.ok(r["n"])
                                               and math.isclose(r["accuracy"], 100 * r["correct"] / r["n"])):
            raise ValueError(f"{path}: 'tasks.{t}.accuracy' is {r['accuracy']}, but its correct and n are "
                             f"{r['correct']} of {r['n']}")
    average = sum(r["accuracy"] for r in tasks.values()) / len(tasks) if tasks else None
    if average is None or not math.isclose(result["average"], average, abs_tol=1e-9):
        raise ValueError(f"{path}: 'average' is {result['average']}, but the mean of its "
                         f"{len(tasks)} tasks' accuracies is {average}")
    return result


if __name__ == "__main__":
    cli.run(main)
