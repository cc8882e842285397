"""The PERA study's measurements beyond train.py and eval.py, and its table (study.sh runs it).

    python -m experiments.study label-loss --adapter DIR     # validation loss on the answer label's tokens alone
    python -m experiments.study table --lora DIR RUN...      # one row per run, compared with a LoRA run
    python -m experiments.study log-cost --json FILE         # what train.py's PERA log record costs next to a step

At this scale most of the response loss is the answer template ("the correct answer is ..."), which every
method learns alike; label-loss scores only the label's tokens ("answer2", "true") of the same 120
held-out validation examples train.py used (same tasks, seed, split and cutoff, read from args.json).
table reads what the other scripts wrote into each run folder and adds, for loglik accuracy, a 95 %
interval (normal approximation over all scored examples) and the paired difference from LoRA on the
examples both runs answered, with its own 95 % interval: the mean and standard error of the per-example
difference in correctness (+1, 0, -1). For runs that agree on most examples it is much narrower than the
two single-run intervals, which count every example's uncertainty twice.
"""
import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch

import train
from model import Transformer
from support import adapters, cli, commonsense
from tokenizer import Tokenizer


def common_prefix(a, b):
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def label_positions(tokenizer, record, bos, cutoff):
    """(ids, labels) as train.py builds them, with every label but the answer label's own tokens masked.

    The label's tokens are those of prompt + output from the first one that prompt + output-up-to-the-label
    does not share (so a token merged across the boundary counts as the label's); a label cut off by the
    response cutoff keeps only its tokens that training saw.
    """
    ids, labels = commonsense.encode_example(tokenizer, record, bos, prompt_cutoff=cutoff)
    p, out = commonsense.prompt(record), record["output"]
    full = tokenizer.encode(p + out, bos=bos)
    n = common_prefix(tokenizer.encode(p, bos=bos), full)  # where the response starts (encode_example's split)
    first = common_prefix(tokenizer.encode(p + out[:out.rindex(record["answer"])], bos=bos), full)
    source = min(n, cutoff)  # prompt tokens kept in ids
    response = len(ids) - source - (tokenizer.eos_id is not None)  # response tokens kept, end token left out
    keep = range(source + first - n, source + min(len(full) - n, response))
    return ids, [y if i in keep else -100 for i, y in enumerate(labels)]


@torch.no_grad()
def label_loss(adapter_dir, data=None, model_dir=None, batch_size=16):
    saved = json.loads((Path(adapter_dir) / "args.json").read_text())
    data, model_dir = data or saved["data"], Path(model_dir or saved["model"])
    tokenizer = Tokenizer.from_file(model_dir / "tokenizer.json")
    tasks = commonsense.resolve_tasks(data, "train", saved["tasks"])
    records = [r for t in tasks for r in commonsense.load_records(Path(data) / t / "train.json")]
    random.Random(saved["seed"]).shuffle(records)  # train.load_examples' split
    val = [label_positions(tokenizer, r, tokenizer.add_bos, saved["cutoff"]) for r in records[:saved["val_size"]]]
    model = Transformer.from_pretrained(model_dir)
    adapters.load_adapter(model, adapter_dir)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
    n_tokens = sum(y != -100 for _, labels in val for y in labels[1:])
    loss = train.validation_loss(model, val, batch_size, pad, torch.device("cpu"),
                                 lambda: torch.autocast("cpu", enabled=False)) if n_tokens else None
    result = {"label_val_loss": loss, "examples": len(val), "label_tokens": n_tokens}
    adapters.write_json(Path(adapter_dir) / "label_val_loss.json", result)
    return result


def read(path, default=None):
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else default


def predictions(run, mode):
    f = Path(run) / f"eval-{mode}" / "predictions.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.is_file() else None


def paired_difference(preds, lora_preds):
    """Accuracy difference from LoRA (points) on the examples both answered, its 95 % interval, and how
    many choices differ. eval.py's --limit takes each task's first examples, so (task, index) names the
    same example in runs evaluated with different limits."""
    lora = {(q["task"], q["index"]): q for q in lora_preds or []}
    pairs = [(p, lora[p["task"], p["index"]]) for p in preds or [] if (p["task"], p["index"]) in lora]
    if not pairs:
        return {}
    d = [int(p["correct"]) - int(q["correct"]) for p, q in pairs]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    return {"loglik_minus_lora": 100 * statistics.mean(d), "loglik_minus_lora_ci95": 100 * 1.96 * se, "loglik_paired_n": len(d),
            "loglik_choices_differing_from_lora": sum(p["prediction"] != q["prediction"] for p, q in pairs)}


def row(run, lora_predictions, lora_loglik=None):
    run = Path(run)
    metrics, config = read(run / "metrics.json", {}), read(run / "adapter_config.json", {})
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] if (run / "log.jsonl").is_file() else []
    logged = [r for r in log if "poly_share_median" in r]
    ranks = read(run / "rank_report.json", [])
    generate, loglik = read(run / "eval-generate" / "results.json"), read(run / "eval-loglik" / "results.json")
    preds = predictions(run, "generate")
    out = {"run": run.name, "init": config.get("init", "-"), "h_lr_ratio": config.get("h_lr_ratio", "-"),
           "best_val_loss": metrics.get("best_val_loss"),
           "label_val_loss": (read(run / "label_val_loss.json") or {}).get("label_val_loss"),
           "poly_share_median": logged[-1]["poly_share_median"] if logged else None,
           "poly_share_max": max(r["poly_share_max"] for r in logged) if logged else None,
           "h_max": logged[-1]["h_max"] if logged else None,
           "effective_rank": statistics.mean(r["effective_rank"] for r in ranks) if ranks else None,
           "generate_accuracy": generate["average"] if generate else None,
           "answers_differing_from_lora": (sum(a["output"] != b["output"] for a, b in zip(preds, lora_predictions))
                                           if preds and lora_predictions and len(preds) == len(lora_predictions)
                                           else None)}
    if loglik:
        n = sum(t["n"] for t in loglik["tasks"].values())
        p = sum(t["correct"] for t in loglik["tasks"].values()) / n
        out.update(loglik_accuracy=100 * p, loglik_n=n, loglik_ci95=100 * 1.96 * math.sqrt(p * (1 - p) / n))
        out.update(paired_difference(predictions(run, "loglik"), lora_loglik))
    return out


def table(rows):
    cols = [("run", "run", "{}"), ("init", "init", "{}"), ("h lr ×", "h_lr_ratio", "{}"),
            ("val loss", "best_val_loss", "{:.4f}"), ("label val loss", "label_val_loss", "{:.4f}"),
            ("poly share (median, last)", "poly_share_median", "{:.1e}"), ("poly share (max)", "poly_share_max", "{:.1e}"),
            ("max abs h", "h_max", "{:.3g}"), ("eff. rank", "effective_rank", "{:.2f}"),
            ("generate acc. (%)", "generate_accuracy", "{:.2f}"), ("answers ≠ LoRA", "answers_differing_from_lora", "{}")]
    lines = ["| " + " | ".join(c[0] for c in cols) + " | loglik acc. (%) ± 95 % | loglik − LoRA, paired ± 95 % |",
             "|" + "---|" * (len(cols) + 2)]
    for r in rows:
        cells = ["-" if r.get(k) is None else f.format(r[k]) for _, k, f in cols]
        cells.append(f"{r['loglik_accuracy']:.2f} ± {r['loglik_ci95']:.2f} (n = {r['loglik_n']})"
                     if "loglik_accuracy" in r else "-")
        cells.append(f"{r['loglik_minus_lora']:+.2f} ± {r['loglik_minus_lora_ci95']:.2f} "
                     f"(n = {r['loglik_paired_n']}, {r['loglik_choices_differing_from_lora']} choices differ)"
                     if "loglik_minus_lora" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def log_cost(model_dir, data, steps=3, rank=4, batch_size=16, repeats=20):
    """Median seconds of a PERA training step (batch of the first training records, q/k/v/up/down) and of
    the log record train.py adds (pera_record + h_grad_norm), measured in one process, interleaved."""
    tokenizer = Tokenizer.from_file(Path(model_dir) / "tokenizer.json")
    model = Transformer.from_pretrained(model_dir)
    adapters.inject(model, adapters.settings("pera", rank, dropout=0.05))
    model.train()
    layers = list(adapters.adapter_layers(model, "pera").values())
    task = commonsense.resolve_tasks(data, "train", None)[0]
    batch = [commonsense.encode_example(tokenizer, r, tokenizer.add_bos)
             for r in commonsense.load_records(Path(data) / task / "train.json")[:batch_size]]
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    step_s, log_s = [], []
    for _ in range(steps + 1):  # the first step warms up and is not counted
        t0 = time.perf_counter()
        loss, n = train.loss_sum(model, *train.collate(batch, pad, "cpu"))
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        t1 = time.perf_counter()
        for _ in range(repeats):  # the record, with the gradients still there, as in train.py
            train.h_grad_norm(layers)
            train.pera_record(layers)
        log_s.append((time.perf_counter() - t1) / repeats)
        optimizer.zero_grad(set_to_none=True)
        step_s.append(t1 - t0)
    step, log = statistics.median(step_s[1:]), statistics.median(log_s[1:])
    return {"model": str(model_dir), "rank": rank, "batch_size": batch_size, "layers": len(layers),
            "step_seconds": step, "log_seconds": log, "log_percent_of_step": 100 * log / step,
            "steps_measured": steps, "records_per_step": repeats}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("label-loss", help="validation loss on the answer label alone; writes label_val_loss.json")
    a.add_argument("--adapter", required=True)
    a.add_argument("--data", default=None, help="default: the run's own --data")
    a.add_argument("--model", default=None, help="default: the run's own --model")
    t = sub.add_parser("table", help="the study's table; --json writes its rows")
    t.add_argument("runs", nargs="+")
    t.add_argument("--lora", required=True, help="the LoRA run the answers are compared with")
    t.add_argument("--json", default=None)
    c = sub.add_parser("log-cost", help="what train.py's PERA log record costs next to a training step")
    c.add_argument("--model", default="checkpoints/SmolLM2-135M-Instruct")
    c.add_argument("--data", default="data/commonsense")
    c.add_argument("--steps", type=cli.POSITIVE_INT, default=3)
    c.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.command == "log-cost":
        result = log_cost(args.model, args.data, args.steps)
        print(f"PERA r={result['rank']}, {result['layers']} layers, batch {result['batch_size']}: step "
              f"{result['step_seconds']:.2f} s, log record {1e3 * result['log_seconds']:.1f} ms = "
              f"{result['log_percent_of_step']:.2f} % of a step")
        if args.json:
            adapters.write_json(args.json, result)
        return result
    if args.command == "label-loss":
        if not (Path(args.adapter) / "args.json").is_file():
            sys.exit(f"error: {args.adapter}: no args.json (a train.py output folder is needed)")
        with cli.user_input():  # a run folder, data or model that cannot be read
            result = label_loss(args.adapter, args.data, args.model)
        if result["label_val_loss"] is None:
            print(f"{args.adapter}: no label token survives the response cutoff (a tokenizer that spells the "
                  f"template in more than {commonsense.TARGET_CUTOFF} tokens); no label-only loss")
        else:
            print(f"{args.adapter}: label-only validation loss {result['label_val_loss']:.4f} "
                  f"({result['examples']} examples, {result['label_tokens']} label tokens)")
        return result
    missing = [r for r in [args.lora, *args.runs] if not Path(r).is_dir()]
    if missing:
        sys.exit(f"error: {', '.join(missing)}: no such run folder")
    with cli.user_input():
        lora_predictions, lora_loglik = predictions(args.lora, "generate"), predictions(args.lora, "loglik")
        rows = [row(r, lora_predictions, lora_loglik) for r in [args.lora, *args.runs]]
    print(table(rows))
    if args.json:
        adapters.write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    cli.run(main)
