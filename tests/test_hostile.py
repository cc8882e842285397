"""A hostile world (issue 22): every setting that would train wrongly or fail deep inside, and every file a
command did not expect, ends the command with one line naming the culprit, a non-zero exit and no traceback.

The table runs each user-facing command in this process as `python tool.py ARGS` would (cli.run(main, argv)),
on stories260K and small copies of the real data. Then the ranges themselves, against their references: the
seeds torch takes, the parameters inject builds, the template's tokens, the files the tools write.
"""
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import HERE_FIXTURES, ROOT, fixture

import eval as evaluate
import generate
import merge
import train
from experiments import bench, plot, study, toy
from model import Config, Transformer
from support import adapters, cli, commonsense
from support.safetensors_io import load_safetensors, save_safetensors
from test_robustness import data_dir, stories_dir  # noqa: F401  (fixtures: stories260K, small copies of the data)
from tokenizer import Tokenizer

TOOLS = {"train": train.main, "eval": evaluate.main, "merge": merge.main, "generate": generate.main,
         "bench": bench.main, "toy": toy.main, "plot": plot.main, "study": study.main}


def train_args(stories_dir, data_dir, out, *extra):
    return ["--model", str(stories_dir), "--data", str(data_dir), "--out", str(out), "--rank", "4", "--batch-size", "8",
            "--val-size", "0", "--warmup-steps", "1", "--max-steps", "1", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def runs(stories_dir, data_dir, tmp_path_factory):
    """A finished one-step run of LoRA and of PERA: {method: (folder, its argv)}; each folder is an adapter too."""
    made = {}
    for method in ("lora", "pera"):
        argv = train_args(stories_dir, data_dir, tmp_path_factory.mktemp(method), "--method", method)
        train.main(argv)
        made[method] = Path(argv[argv.index("--out") + 1]), argv
    return made


class Case:
    """What a case builds: copies of the fixtures with one thing wrong, in the test's own tmp folder."""

    def __init__(self, stories_dir, data_dir, runs, tmp):
        self.stories_dir, self.data_dir, self.runs, self.tmp = stories_dir, data_dir, runs, tmp
        self.ran = tmp / "the pickle ran"  # what a state.pt pickle that runs code would create

    def copy(self, src, name):
        shutil.copytree(src, self.tmp / name)
        return self.tmp / name

    def edited(self, folder, file, edit):
        """A copy of folder whose JSON `file` is edit(its content) (a str is written as it is)."""
        copy = self.copy(folder, f"{Path(folder).name}-edited")
        new = edit(json.loads((copy / file).read_text()))
        (copy / file).write_text(new if isinstance(new, str) else json.dumps(new))
        return copy

    def train(self, *extra, model=None, data=None):
        return train_args(model or self.stories_dir, data or self.data_dir, self.tmp / "run", "--method", "pera", *extra)

    def eval(self, *extra, adapter=None, model=None):
        return ["--model", str(model or self.stories_dir), "--data", str(self.data_dir), "--limit", "2", "--device", "cpu",
                "--out", str(self.tmp / "eval"), *extra] + (["--adapter", str(adapter)] if adapter else [])

    def generate(self, *extra, text="Is the sky blue?", adapter=None, model=None):
        return (["--adapter", str(adapter)] if adapter else []) + [
            "--model", str(model or self.stories_dir), "--device", "cpu", "--max-new-tokens", "2", *extra, text]

    def merge(self, adapter):
        return ["--adapter", str(adapter), "--model", str(self.stories_dir), "--out", str(self.tmp / "merged")]

    def model(self, file, edit):
        return self.edited(self.stories_dir, file, edit)

    def adapter(self, method, edit):
        return self.edited(self.runs[method][0], "adapter_config.json", edit)

    def empty_outputs(self):
        """Data whose every record has an empty output (and, with model(no end token), nothing to learn)."""
        copy = self.copy(self.data_dir, "data-empty")
        for task in ("boolq", "ARC-Easy"):
            (copy / task / "train.json").write_text(json.dumps([{"instruction": "Is it?", "output": "", "answer": "true"}] * 40))
        return copy

    def resume_with_state(self, edit):
        """--resume of a copy of the finished PERA run whose checkpoint/state.pt is edit(the saved state)."""
        copy = self.copy(self.runs["pera"][0], "run-copy")
        state_file = copy / "checkpoint" / "state.pt"
        torch.save(edit(torch.load(state_file, weights_only=True)), state_file)
        return self.resume_in(copy)

    def resume_in(self, copy):
        """The PERA run's argv with --out its copy, and --resume."""
        folder, argv = self.runs["pera"]
        return [str(copy) if a == str(folder) else a for a in argv] + ["--resume"]

    def results(self, content):
        (self.tmp / "results.json").write_text(json.dumps(content))
        return ["--table", str(self.tmp / "results.json")]

    def merged(self):
        """The LoRA run merged into stories260K by merge.py: a model whose merged_from.json names that adapter."""
        merge.main(["--adapter", str(self.runs["lora"][0]), "--model", str(self.stories_dir), "--out", str(self.tmp / "m0")])
        return self.tmp / "m0"

    def tensors(self, folder, file, edit):
        """A copy of folder whose safetensors `file` holds edit(its tensors) (edited in place, or returned)."""
        copy = self.copy(folder, f"{Path(folder).name}-tensors")
        tensors = {k: t.clone() for k, t in load_safetensors(copy / file).items()}
        save_safetensors(edit(tensors) or tensors, copy / file)
        return copy

    def header(self, folder, file, edit):
        """A copy of folder whose safetensors `file` has the header edit(its header), the data as they were."""
        copy = self.copy(folder, f"{Path(folder).name}-header")
        raw = (copy / file).read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = edit(json.loads(raw[8:8 + n]))
        blob = header if isinstance(header, bytes) else json.dumps(header).encode()
        (copy / file).write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n:])
        return copy

    def partial(self, *lines):
        """eval.py's argv, with an unfinished evaluation in --out: its settings line, then `lines` (text as is)."""
        argv = self.eval()
        args = evaluate.parse_args(argv)
        evaluate.base_model(args)
        data = {"boolq": commonsense.load_records(self.data_dir / "boolq" / "test.json")[:args.limit]}
        (self.tmp / "eval").mkdir()
        (self.tmp / "eval" / evaluate.PARTIAL).write_text("".join(
            (x if isinstance(x, str) else json.dumps(x)) + "\n" for x in [evaluate.settings_of(args, data), *lines]))
        return argv

    def sharded(self, weight_map):
        """A copy of stories260K whose tensors are named by a model.safetensors.index.json of weight_map(names)."""
        copy = self.copy(self.stories_dir, "sharded")
        names = list(load_safetensors(copy / "model.safetensors"))
        (copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map(names)}))
        return copy

    def partial_folder(self, name=evaluate.PARTIAL, *extra):
        """eval.py's argv, with a folder where one of its files (the partial file) would be."""
        (self.tmp / "eval" / name).mkdir(parents=True)
        return self.eval(*extra)

    def folder_named(self, folder, name):
        """A copy of folder in which `name` is a folder, not a file."""
        copy = self.copy(folder, f"{Path(folder).name}-dir")
        (copy / name).unlink(missing_ok=True)
        (copy / name).mkdir()
        return copy


class RunsCode:
    """Pickled, a call of open(path, "w"): loading it with pickle's full powers creates the file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def set_key(**fields):
    return lambda d: {**d, **fields}


TOKENIZER_NO_BOS = ("tokenizer_config.json", set_key(bos_token=None))  # add_bos_token stays true
# name: (tool, argv built from a Case, the texts the error line must hold: the flag or the file, and the key)
CASES = {
    # settings that trained wrongly with exit 0
    "train --grad-clip -1": ("train", lambda c: c.train("--grad-clip", "-1"), ["--grad-clip", ">= 0", "'-1'"]),
    "train --alpha 0": ("train", lambda c: c.train("--alpha", "0"), ["--alpha", "other than 0"]),
    "train --cutoff 0": ("train", lambda c: c.train("--cutoff", "0"), ["--cutoff", ">= 1", "'0'"]),
    "train --cutoff -5": ("train", lambda c: c.train("--cutoff", "-5"), ["--cutoff", ">= 1", "'-5'"]),
    "train --cutoff below the template": ("train", lambda c: c.train("--cutoff", "20"),
                                          ["--cutoff 20", "### Response:", "integer >= "]),
    "train --micro-batch-size 0": ("train", lambda c: c.train("--micro-batch-size", "0"), ["--micro-batch-size", ">= 1"]),
    # numbers on the command line
    "train --lr nan": ("train", lambda c: c.train("--lr", "nan"), ["--lr", "finite number > 0", "'nan'"]),
    "train --lr inf": ("train", lambda c: c.train("--lr", "inf"), ["--lr", "finite number > 0", "'inf'"]),
    "train --lr 0": ("train", lambda c: c.train("--lr", "0"), ["--lr", "> 0"]),
    "train --weight-decay nan": ("train", lambda c: c.train("--weight-decay", "nan"), ["--weight-decay", ">= 0"]),
    "train --alpha nan": ("train", lambda c: c.train("--alpha", "nan"), ["--alpha", "finite"]),
    "train --lr 1e38": ("train", lambda c: c.train("--lr", "1e38"), ["--lr", "--lr 1e+38", "float32's range"]),
    "train --h-lr-ratio 1e308": ("train", lambda c: c.train("--h-lr-ratio", "1e308"), ["--lr", "--lr 0.0001 × --h-lr-ratio 1e+308",
                                                                                     "float32's range"]),
    "train --epochs 1e308": ("train", lambda c: c.train("--epochs", "1e308"), ["--epochs", "at most 1e9", "'1e+308'"]),
    "train --h-lr-ratio nan": ("train", lambda c: c.train("--h-lr-ratio", "nan"), ["--h-lr-ratio", ">= 0"]),
    "train --grad-clip nan": ("train", lambda c: c.train("--grad-clip", "nan"), ["--grad-clip", "finite"]),
    "train --epochs inf": ("train", lambda c: c.train("--epochs", "inf"), ["--epochs", "finite number > 0"]),
    "train --epochs nan": ("train", lambda c: c.train("--epochs", "nan"), ["--epochs", "finite number > 0"]),
    "train --dropout 1": ("train", lambda c: c.train("--dropout", "1"), ["--dropout", "in [0, 1)"]),
    "train --amplitude nan": ("train", lambda c: c.train("--method", "loran", "--amplitude", "nan"), ["--amplitude"]),
    "train --omega inf": ("train", lambda c: c.train("--method", "loran", "--omega", "inf"), ["--omega", "finite"]),
    "train --degree 1": ("train", lambda c: c.train("--degree", "1"), ["--degree", ">= 2"]),
    "train --rank 0": ("train", lambda c: c.train("--rank", "0"), ["--rank", ">= 1"]),
    "train --batch-size 0": ("train", lambda c: c.train("--batch-size", "0"), ["--batch-size", ">= 1"]),
    "train --max-steps 0": ("train", lambda c: c.train("--max-steps", "0"), ["--max-steps", ">= 1"]),
    "train --save-every 0": ("train", lambda c: c.train("--save-every", "0"), ["--save-every", ">= 1"]),
    "train --eval-every -1": ("train", lambda c: c.train("--eval-every", "-1"), ["--eval-every", ">= 1"]),
    "train --warmup-steps -1": ("train", lambda c: c.train("--warmup-steps", "-1"), ["--warmup-steps", ">= 0"]),
    "train --val-size -1": ("train", lambda c: c.train("--val-size", "-1"), ["--val-size", ">= 0"]),
    "train --pera-log-every 0": ("train", lambda c: c.train("--pera-log-every", "0"), ["--pera-log-every", ">= 1"]),
    "train --seed 2**70": ("train", lambda c: c.train("--seed", str(2 ** 70)), ["--seed", str(2 ** 70), str(2 ** 64 - 1)]),
    "train --device bogus": ("train", lambda c: c.train("--device", "bogus"), ["--device", "cpu, cuda", "'bogus'"]),
    "train --device cuda (no CUDA)": ("train", lambda c: c.train("--device", "cuda"), ["--device", "no CUDA device"]),
    "eval --device bogus": ("eval", lambda c: c.eval("--device", "bogus"), ["--device", "'bogus'"]),
    "eval --device cuda:1 (no CUDA)": ("eval", lambda c: c.eval("--device", "cuda:1"), ["--device", "no CUDA device"]),
    "eval --limit 0": ("eval", lambda c: c.eval("--limit", "0"), ["--limit", ">= 1"]),
    "eval --batch-size 0": ("eval", lambda c: c.eval("--batch-size", "0"), ["--batch-size", ">= 1"]),
    "eval --max-new-tokens -1": ("eval", lambda c: c.eval("--max-new-tokens", "-1"), ["--max-new-tokens", ">= 1"]),
    "generate --temperature nan": ("generate", lambda c: c.generate("--temperature", "nan"), ["--temperature", ">= 0"]),
    "generate --temperature inf": ("generate", lambda c: c.generate("--temperature", "inf"), ["--temperature", "finite"]),
    "generate --top-k 0": ("generate", lambda c: c.generate("--top-k", "0"), ["--top-k", ">= 1"]),
    "generate --seed 2**70": ("generate", lambda c: c.generate("--temperature", "1", "--seed", str(2 ** 70)), ["--seed"]),
    "generate --seed -2**63-1": ("generate", lambda c: c.generate("--temperature", "1", "--seed", str(-2 ** 63 - 1)),
                                 ["--seed", f"[{-2 ** 63}, "]),
    "generate --device cuda (no CUDA)": ("generate", lambda c: c.generate("--device", "cuda"), ["--device", "no CUDA"]),
    "generate: a non-UTF-8 prompt": ("generate", lambda c: c.generate(text=b"caf\xe9 au lait".decode("utf-8", "surrogateescape")),
                                     ["argument text", "not UTF-8", "caf\\xe9"]),
    "bench --plan --rank 0": ("bench", lambda c: ["--plan", "--rank", "0"], ["--rank", ">= 1"]),
    "bench --seq-len 1": ("bench", lambda c: ["--seq-len", "1"], ["--seq-len", ">= 2"]),
    "bench --loss-tokens 16 --seq-len 16": ("bench", lambda c: ["--plan", "--seq-len", "16"], ["--loss-tokens (16)", "below"]),
    "bench --device bogus": ("bench", lambda c: ["--device", "bogus"], ["--device", "'bogus'"]),
    "toy --lr nan": ("toy", lambda c: ["--lr", "nan"], ["--lr", "> 0"]),
    "toy --tol nan": ("toy", lambda c: ["--tol", "nan"], ["--tol", ">= 0"]),
    "plot --smooth 0": ("plot", lambda c: [str(c.tmp / "log.jsonl"), "--smooth", "0", "--out", str(c.tmp / "p.svg")],
                        ["--smooth", ">= 1"]),
    "study log-cost --steps 0": ("study", lambda c: ["log-cost", "--steps", "0"], ["--steps", ">= 1"]),
    # training data, and a rank that would not fit
    "train: a batch with no labelled tokens": ("train", lambda c: c.train(
        model=c.model("tokenizer_config.json", set_key(eos_token=None)), data=c.empty_outputs()),
        ["no response token", "output ''", "no end token"]),
    "train --rank 100000 (PERA)": ("train", lambda c: c.train("--rank", "100000"), ["--rank 100000", "GiB", "free"]),
    # config.json
    "config.json hidden_size -64": ("train", lambda c: c.train(model=c.model("config.json", set_key(hidden_size=-64))),
                                    ["config.json", "'hidden_size'", "positive integer", "-64"]),
    "config.json num_attention_heads 0": ("train", lambda c: c.train(model=c.model("config.json", set_key(
        num_attention_heads=0))), ["config.json", "'num_attention_heads'", "positive integer"]),
    "config.json a JSON list": ("train", lambda c: c.train(model=c.model("config.json", lambda d: [d])),
                                ["config.json", "JSON object", "list"]),
    "config.json rope_theta 0": ("train", lambda c: c.train(model=c.model("config.json", set_key(rope_theta=0))),
                                 ["config.json", "rope_theta", "positive"]),
    "config.json rms_norm_eps < 0": ("train", lambda c: c.train(model=c.model("config.json", set_key(rms_norm_eps=-1e-5))),
                                     ["config.json", "'rms_norm_eps'", "positive"]),
    "config.json num_hidden_layers true": ("eval", lambda c: c.eval(model=c.model("config.json", set_key(
        num_hidden_layers=True))), ["config.json", "'num_hidden_layers'", "True"]),
    "config.json max_position_embeddings 0": ("generate", lambda c: c.generate(model=c.model("config.json", set_key(
        max_position_embeddings=0))), ["config.json", "'max_position_embeddings'"]),
    "config.json head_dim 3": ("merge", lambda c: ["--adapter", str(c.runs["lora"][0]), "--out", str(c.tmp / "m"),
                                                   "--model", str(c.model("config.json", set_key(head_dim=3)))],
                               ["config.json", "head_dim is 3", "even"]),
    "config.json rope factor 0": ("eval", lambda c: c.eval(model=c.model("config.json", set_key(
        rope_scaling={"rope_type": "linear", "factor": 0}))), ["config.json", "'factor'", "positive"]),
    # tokenizer_config.json
    "tokenizer_config bos_token null (train)": ("train", lambda c: c.train(model=c.model(*TOKENIZER_NO_BOS)),
                                                ["tokenizer_config.json", "add_bos_token", "bos_token"]),
    "tokenizer_config bos_token null (generate)": ("generate", lambda c: c.generate(model=c.model(*TOKENIZER_NO_BOS)),
                                                   ["tokenizer_config.json", "add_bos_token", "bos_token"]),
    "tokenizer_config a JSON list": ("eval", lambda c: c.eval(model=c.model("tokenizer_config.json", lambda d: [d])),
                                     ["tokenizer_config.json", "JSON object"]),
    "tokenizer_config add_bos_token 'yes'": ("train", lambda c: c.train(model=c.model("tokenizer_config.json", set_key(
        add_bos_token="yes"))), ["tokenizer_config.json", "add_bos_token", "true or false"]),
    # adapter_config.json, metrics.json
    "adapter_config r null": ("eval", lambda c: c.eval(adapter=c.adapter("lora", set_key(r=None))),
                              ["adapter_config.json", "'r' is null", "integer >= 1"]),
    "adapter_config r 4.7 (eval)": ("eval", lambda c: c.eval(adapter=c.adapter("lora", set_key(r=4.7))),
                                    ["adapter_config.json", "'r' is 4.7", "integer"]),
    "adapter_config r 4.7 (merge)": ("merge", lambda c: c.merge(c.adapter("lora", set_key(r=4.7))),
                                     ["adapter_config.json", "'r' is 4.7"]),
    "adapter_config target_modules naming no layer": ("eval", lambda c: c.eval(adapter=c.adapter("lora", set_key(
        target_modules=["nope"]))), ["adapter_config.json", "target_modules ['nope']", "no nn.Linear"]),
    "adapter_config target_modules 5": ("generate", lambda c: c.generate(adapter=c.adapter("lora", set_key(
        target_modules=5))), ["adapter_config.json", "'target_modules' is 5"]),
    "adapter_config r 100000 (PERA)": ("eval", lambda c: c.eval(adapter=c.adapter("pera", set_key(r=100000))),
                                       ["adapter_config.json", "r is 100000", "pera_A", "[4] rows"]),
    "adapter_config lora_alpha NaN": ("eval", lambda c: c.eval(adapter=c.adapter("lora", set_key(lora_alpha=math.nan))),
                                      ["adapter_config.json", "'lora_alpha' is NaN"]),
    "adapter_config lora_dropout 2": ("merge", lambda c: c.merge(c.adapter("lora", set_key(lora_dropout=2))),
                                      ["adapter_config.json", "'lora_dropout'", "[0, 1)"]),
    "adapter_config degree 2.5": ("generate", lambda c: c.generate(adapter=c.adapter("pera", set_key(degree=2.5))),
                                  ["adapter_config.json", "'degree' is 2.5", ">= 2"]),
    "adapter_config terms 'both'": ("eval", lambda c: c.eval(adapter=c.adapter("pera", set_key(terms="both"))),
                                    ["adapter_config.json", "'terms'", "all, square, cross"]),
    "adapter_config a JSON list": ("merge", lambda c: c.merge(c.adapter("lora", lambda d: [d])),
                                   ["adapter_config.json", "JSON object", "list"]),
    "metrics.json not an object": ("eval", lambda c: c.eval(adapter=c.edited(c.runs["lora"][0], "metrics.json",
                                                                              lambda d: [1, 2])),
                                   ["metrics.json", "JSON object", "trainable_percent"]),
    # results.json for --table
    "eval --table: no accuracy": ("eval", lambda c: c.results({"name": "x", "tasks": {"boolq": {"n": 3}}, "average": 1}),
                                  ["results.json", "'tasks.boolq.accuracy'"]),
    "eval --table: tasks a list": ("eval", lambda c: c.results({"name": "x", "tasks": [], "average": 1}),
                                   ["results.json", "'tasks'"]),
    "eval --table: average text": ("eval", lambda c: c.results({"name": "x", "tasks": {}, "average": "high"}),
                                   ["results.json", "'average'"]),
    # a state.pt that train.py did not write
    "state.pt: a pickle that runs code": ("train", lambda c: c.resume_with_state(
        lambda s: {**s, "history": [RunsCode(c.ran)]}), ["state.pt", "not a readable train.py state", "io.open"]),
    "state.pt: values of other types": ("train", lambda c: c.resume_with_state(lambda s: {
        "step": "one", "trainable": [1], "optimizer": 5, "rng": None, "best": {}, "history": {}}),
        ["state.pt", "step, trainable, optimizer, rng, best, history"]),
    "state.pt: another optimizer's state": ("train", lambda c: c.resume_with_state(
        lambda s: {**s, "optimizer": {"state": {}, "param_groups": []}}), ["state.pt", "AdamW state does not fit"]),
    "state.pt: a broken RNG state": ("train", lambda c: c.resume_with_state(
        lambda s: {**s, "rng": {"torch": torch.zeros(3), "python": None, "cuda": None}}), ["state.pt", "its rng"]),
}


def first(tensors, part):
    return tensors[sorted(k for k in tensors if part in k)[0]]


def one_value(part, value):
    """An edit of an adapter's or a model's tensors: the first element of the first tensor named *part* is value."""
    def edit(tensors):
        first(tensors, part).view(-1)[0] = value
    return edit


def deep(n=100_000):
    return "[" * n + "]" * n


UP = "model.layers.0.mlp.up_proj.weight"
B_KEY = "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"  # the LoRA run's first lora_B, sorted
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"  # of the same shape (64, 4)
DUE = {"task": "boolq", "answer": "true", "correct": True, "output": "", "prediction": "true", "tokens_cut": 0}
# issue 34: an adapter applied twice; non-finite or non-float tensors; eval.py's partial file and --table
CASES.update({
    "eval --adapter A --model <A merged>": ("eval", lambda c: c.eval(adapter=c.runs["lora"][0], model=c.merged()),
                                            ["m0 already has", "lora", "merged into it", "applying it again"]),
    "eval --merge --adapter A --model <A merged>": ("eval", lambda c: c.eval(
        "--merge", adapter=c.runs["lora"][0], model=c.merged()), ["m0 already has", "lora", "twice"]),
    "generate --adapter A --model <A merged>": ("generate", lambda c: c.generate(
        adapter=c.runs["lora"][0], model=c.merged()), ["m0 already has", "lora", "twice"]),
    "merge: a NaN in the adapter": ("merge", lambda c: c.merge(c.tensors(c.runs["lora"][0], "adapter_model.safetensors",
                                                                         one_value("lora_B", math.nan))),
                                    ["adapter_model.safetensors", B_KEY, "non-finite", "nan"]),
    "eval: an inf in the adapter": ("eval", lambda c: c.eval(adapter=c.tensors(
        c.runs["lora"][0], "adapter_model.safetensors", one_value("lora_B", math.inf))), [B_KEY, "non-finite", "inf"]),
    "eval --mode loglik: a NaN in PERA's h": ("eval", lambda c: c.eval("--mode", "loglik", adapter=c.tensors(
        c.runs["pera"][0], "adapter_model.safetensors", one_value("pera_h", math.nan))),
        ["adapter_model.safetensors", "layers.0.mlp.down_proj.pera_h", "non-finite"]),
    "generate: a NaN in the adapter": ("generate", lambda c: c.generate(adapter=c.tensors(
        c.runs["lora"][0], "adapter_model.safetensors", one_value("lora_B", math.nan))), [B_KEY, "non-finite"]),
    "eval --rank-report: a NaN in the adapter": ("eval", lambda c: [
        "--model", str(c.stories_dir), "--rank-report", "--device", "cpu", "--adapter", str(c.tensors(
            c.runs["lora"][0], "adapter_model.safetensors", one_value("lora_B", math.nan)))], [B_KEY, "non-finite"]),
    "eval: a NaN in the base model": ("eval", lambda c: c.eval(model=c.tensors(c.stories_dir, "model.safetensors",
                                                                               one_value(UP, math.nan))),
                                      ["stories260K-tensors", f"'{UP}'", "non-finite", "nan"]),
    "merge: an inf in the base model": ("merge", lambda c: ["--adapter", str(c.runs["lora"][0]), "--out", str(
        c.tmp / "merged"), "--model", str(c.tensors(c.stories_dir, "model.safetensors", one_value(UP, -math.inf)))],
        [f"'{UP}'", "non-finite", "-inf"]),
    "merge: an int64 adapter tensor": ("merge", lambda c: c.merge(c.tensors(
        c.runs["lora"][0], "adapter_model.safetensors", lambda t: {**t, B_KEY: t[B_KEY].round().long()})),
        ["adapter_model.safetensors", B_KEY, "torch.int64", "floating point"]),
    "eval: adapter tensors with overlapping data_offsets": ("eval", lambda c: c.eval(adapter=c.header(
        c.runs["lora"][0], "adapter_model.safetensors",  # q_proj's B (64, 4) on down_proj's bytes
        lambda h: {**h, Q_B: {**h[Q_B], "data_offsets": h[B_KEY]["data_offsets"]}})),
        ["adapter_model.safetensors", "overlap", B_KEY, Q_B]),
    "train --resume: a NaN in state.pt": ("train", lambda c: c.resume_with_state(lambda s: {
        **s, "trainable": {k: t.fill_(math.nan) if k.endswith(".h") else t for k, t in s["trainable"].items()}}),
        ["state.pt", "layers.0.self_attn.q_proj.h'", "non-finite"]),
    "train --resume: an inf in AdamW's state": ("train", lambda c: c.resume_with_state(lambda s: {
        **s, "optimizer": {**s["optimizer"], "state": {k: {**v, "exp_avg": v["exp_avg"].fill_(math.inf)}
                                                       for k, v in s["optimizer"]["state"].items()}}}),
        ["state.pt", "AdamW's exp_avg of parameter", "non-finite"]),
    "eval: predictions.jsonl.partial repeats an example": ("eval", lambda c: c.partial(
        {**DUE, "index": 0}, {**DUE, "index": 0}), [evaluate.PARTIAL, "line 3", "repeats boolq example 0"]),
    "eval: predictions.jsonl.partial index out of range": ("eval", lambda c: c.partial({**DUE, "index": 7}),
                                                           [evaluate.PARTIAL, "line 2", "index 7", "0 to 1"]),
    "eval: predictions.jsonl.partial index -1": ("eval", lambda c: c.partial({**DUE, "index": -1}),
                                                 [evaluate.PARTIAL, "line 2", "index -1"]),
    "eval: predictions.jsonl.partial {}": ("eval", lambda c: c.partial({}), [evaluate.PARTIAL, "line 2", "task None"]),
    "eval: predictions.jsonl.partial 5": ("eval", lambda c: c.partial("5"),
                                          [evaluate.PARTIAL, "line 2", "not one of eval.py's predictions"]),
    "eval: predictions.jsonl.partial an unknown task": ("eval", lambda c: c.partial({**DUE, "index": 0, "task": "x"}),
                                                        [evaluate.PARTIAL, "line 2", "task 'x'"]),
    "eval: predictions.jsonl.partial an output not text": ("eval", lambda c: c.partial({**DUE, "index": 0, "output": 5}),
                                                           [evaluate.PARTIAL, "line 2", "output is not text"]),
    "eval: predictions.jsonl.partial a torn line in the middle": ("eval", lambda c: c.partial(
        '{"task": "boolq", "ind', {**DUE, "index": 1}), [evaluate.PARTIAL, "line 2", "not JSON"]),
    "eval --table: an average that is not its tasks' mean": ("eval", lambda c: c.results({
        "name": "x", "tasks": {"boolq": {"accuracy": 50.0}, "piqa": {"accuracy": 70.0}}, "average": 99.0}),
        ["results.json", "'average' is 99.0", "mean", "60.0"]),
    "eval --table: an accuracy that is not correct / n": ("eval", lambda c: c.results({
        "name": "x", "tasks": {"boolq": {"accuracy": 90.0, "correct": 1, "n": 2}}, "average": 90.0}),
        ["results.json", "'tasks.boolq.accuracy' is 90.0", "1 of 2"]),
    # tracebacks that are one line now
    "adapter_model.safetensors: a negative dimension": ("eval", lambda c: c.eval(adapter=c.header(
        c.runs["lora"][0], "adapter_model.safetensors", lambda h: {**h, B_KEY: {**h[B_KEY], "shape": [-64, -4]}})),
        ["adapter_model.safetensors", B_KEY, "[-64, -4]", "integers >= 0"]),
    "model.safetensors: a zero dimension": ("eval", lambda c: c.eval(model=c.header(
        c.stories_dir, "model.safetensors", lambda h: {**h, UP: {**h[UP], "shape": [0, 64], "data_offsets": [
            h[UP]["data_offsets"][0]] * 2}})), [f"'{UP}'", "shape (0, 64)", "(172, 64)"]),
    "model.safetensors: a shape of floats": ("merge", lambda c: ["--adapter", str(c.runs["lora"][0]), "--out", str(
        c.tmp / "merged"), "--model", str(c.header(c.stories_dir, "model.safetensors", lambda h: {
            **h, UP: {**h[UP], "shape": [172.0, 64.0]}}))], [f"'{UP}'", "integers >= 0"]),
    "adapter_config base_model_name_or_path 5 (eval)": ("eval", lambda c: c.eval(adapter=c.adapter(
        "lora", set_key(base_model_name_or_path=5)))[2:], ["adapter_config.json", "'base_model_name_or_path' is 5"]),
    "adapter_config base_model_name_or_path 5 (merge)": ("merge", lambda c: c.merge(c.adapter(
        "lora", set_key(base_model_name_or_path=5)))[:2] + ["--out", str(c.tmp / "merged")],
        ["adapter_config.json", "'base_model_name_or_path' is 5"]),
    "adapter_config base_model_name_or_path 5 (generate)": ("generate", lambda c: c.generate(adapter=c.adapter(
        "lora", set_key(base_model_name_or_path=5)))[:2] + ["--device", "cpu", "x"],
        ["adapter_config.json", "'base_model_name_or_path' is 5"]),
    "model.safetensors.index.json: weight_map values numbers": ("eval", lambda c: c.eval(model=c.sharded(
        lambda names: dict.fromkeys(names, 1))), ["model.safetensors.index.json", "'weight_map'"]),
    "model.safetensors.index.json: a shard outside the folder": ("eval", lambda c: c.eval(model=c.sharded(
        lambda names: dict.fromkeys(names, "../stories260K/model.safetensors"))), ["index.json", "'weight_map'"]),
    "adapter_model.safetensors: a header nested too deeply": ("eval", lambda c: c.eval(adapter=c.header(
        c.runs["lora"][0], "adapter_model.safetensors", lambda h: deep().encode())),
        ["adapter_model.safetensors", "nested too deeply"]),
    "tokenizer.json nested too deeply": ("eval", lambda c: c.eval(model=c.edited(c.stories_dir, "tokenizer.json",
                                                                                 lambda d: deep())),
                                         ["tokenizer.json", "nested too deeply"]),
    "adapter_config.json nested too deeply (eval)": ("eval", lambda c: c.eval(adapter=c.adapter("lora", lambda d: deep())),
                                                     ["adapter_config.json", "nested too deeply"]),
    "adapter_config.json nested too deeply (merge)": ("merge", lambda c: c.merge(c.adapter("lora", lambda d: deep()))[
        :2] + ["--out", str(c.tmp / "merged")], ["adapter_config.json", "nested too deeply"]),
    "eval: predictions.jsonl.partial a folder": ("eval", lambda c: c.partial_folder(), [evaluate.PARTIAL, "not a file"]),
    "eval --overwrite: results.json a folder": ("eval", lambda c: c.partial_folder("results.json", "--overwrite"),
                                                ["eval/results.json", "not a file"]),
    "train --resume: args.json a folder": ("train", lambda c: c.resume_in(c.folder_named(c.runs["pera"][0], "args.json")),
                                           ["args.json", "not a file"]),
    "train --resume: log.jsonl a folder": ("train", lambda c: c.resume_in(c.folder_named(c.runs["pera"][0], "log.jsonl")),
                                           ["log.jsonl", "not a file"]),
    # found by the fresh round after these fixes
    "eval: a float64 adapter value beyond float32 (1e300)": ("eval", lambda c: c.eval(adapter=c.tensors(
        c.runs["lora"][0], "adapter_model.safetensors", lambda t: {**{k: v.double() for k, v in t.items()}, B_KEY: torch.full(
            t[B_KEY].shape, 1e300, dtype=torch.float64)})), [B_KEY, "non-finite", "1e+300"]),
    "config.json nested too deeply": ("eval", lambda c: c.eval(model=c.edited(c.stories_dir, "config.json", lambda d: deep())),
                                      ["config.json", "nested too deeply"]),
    "metrics.json nested too deeply": ("eval", lambda c: c.eval(adapter=c.edited(c.runs["lora"][0], "metrics.json",
                                                                                 lambda d: deep())),
                                       ["metrics.json", "nested too deeply"]),
    "test.json nested too deeply": ("eval", lambda c: c.eval()[:2] + ["--data", str(c.edited(
        c.data_dir, "boolq/test.json", lambda d: deep()))] + c.eval()[4:], ["boolq/test.json", "nested too deeply"]),
    "eval: predictions.jsonl.partial a line nested too deeply": ("eval", lambda c: c.partial(deep()),
                                                                 [evaluate.PARTIAL, "nested too deeply"]),
    "eval --table: results.json nested too deeply": ("eval", lambda c: c.results({}) and (
        c.tmp / "results.json").write_text(deep()) and ["--table", str(c.tmp / "results.json")],
        ["results.json", "nested too deeply"]),
    "train --resume: args.json nested too deeply": ("train", lambda c: c.resume_in(c.edited(
        c.runs["pera"][0], "args.json", lambda d: deep())), ["args.json", "nested too deeply"]),
})


def outcome(main, argv, capsys):
    """(exit status, the last line printed) of `python tool.py argv`, run here. Any exception other than
    SystemExit propagates: it is the traceback the user would see, and fails the test."""
    with pytest.raises(SystemExit) as e:
        cli.run(main, argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if isinstance(e.value.code, str):  # sys.exit("error: ..."): Python prints the text, exit status 1
        return 1, e.value.code
    return e.value.code, err.strip().splitlines()[-1] if err.strip() else ""


@pytest.mark.parametrize("name", CASES)
def test_hostile_input_is_one_line_naming_the_culprit(name, stories_dir, data_dir, runs, tmp_path, capsys, monkeypatch):
    tool, build, culprit = CASES[name]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same cases on a machine with a GPU
    case = Case(stories_dir, data_dir, runs, tmp_path)
    argv = build(case)
    roots = [tmp_path, stories_dir, data_dir, *(folder for folder, _ in runs.values())]
    before = files(*roots)
    code, line = outcome(TOOLS[tool], argv, capsys)
    assert code in (1, 2) and "error: " in line and "\n" not in line, (code, line)
    assert all(text in line for text in culprit), line
    assert "--lr" not in line or "--lr" in culprit  # a bad file or flag is blamed, not the learning rate
    assert not case.ran.exists()  # nothing in a state.pt was run
    # nothing a user saved is changed or lost; what is new is inside the tool's own --out
    after = files(*roots)
    assert [f for f in before if after.get(f) != before[f]] == []
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    assert [f for f in after if f not in before and (out is None or out not in f.parents)] == []


def files(*roots):
    """Every file under roots, with its bytes."""
    return {f: f.read_bytes() for root in roots for f in Path(root).rglob("*") if f.is_file()}


# -----------------------------------------------------------------------------
# The ranges, against what they guard

@pytest.mark.parametrize("number, accepted, refused", [
    (cli.NON_NEGATIVE, ["0", "1e-300", "2.5"], ["-1e-300", "nan", "inf", "-inf", "x"]),
    (cli.POSITIVE, ["1e-300", "3"], ["0", "-0.0", "nan", "inf"]),
    (cli.POSITIVE_INT, ["1", "16"], ["0", "-3", "1.0", "4.7", "nan"]),
    (cli.COUNT, ["0", "7"], ["-1", "0.5"]),
    (cli.DROPOUT, ["0", "0.999"], ["1", "-0.1", "nan"]),
    (cli.NONZERO, ["-8", "1e-3"], ["0", "-0", "nan", "inf"]),
    (cli.FINITE, ["-1e300", "0"], ["nan", "-inf"]),
    (cli.SEED, ["0", "-1", str(-2 ** 63), str(2 ** 64 - 1)], [str(-2 ** 63 - 1), str(2 ** 64), "1e3"]),
])
def test_each_range_accepts_its_edges_and_refuses_beyond(number, accepted, refused):
    for text in accepted:
        assert number(text) == number.kind(text) and number.ok(number.kind(text))
    for text in refused:
        with pytest.raises(Exception, match=re.escape(f"expected {number}, got {text!r}")):
            number(text)
    assert not number.ok(True) and not number.ok("1") and not number.ok(None)  # JSON: a bool, a text, null
    assert number.kind is float or not number.ok(4.0)  # an integer field holding 4.0 (or 4.7) is not read as 4
    assert number.kind is int or not number.ok(10 ** 400)  # JSON's integers have no limit, floats do


def test_the_seed_range_is_what_torch_takes():
    """--seed's range, [-2**63, 2**64 - 1], is what torch.manual_seed and torch.Generator take; one beyond
    either end is refused by both."""
    for set_seed in (torch.manual_seed, torch.Generator().manual_seed):
        for seed in (cli.SEED.low, cli.SEED.high):
            set_seed(seed)
        for seed in (cli.SEED.low - 1, cli.SEED.high + 1):
            with pytest.raises(ValueError, match="Overflow"):
                set_seed(seed)
    torch.manual_seed(0)


def test_a_device_is_one_this_machine_has(monkeypatch):
    assert cli.device("cpu") == "cpu"
    for text in ("bogus", "meta", "cuda:x"):
        with pytest.raises(Exception, match="expected cpu, cuda, cuda:N or mps"):
            cli.device(text)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert cli.device("cuda:1") == "cuda:1"
    with pytest.raises(Exception, match="has 2 CUDA device"):
        cli.device("cuda:2")


def test_the_cutoff_keeps_the_template_to_its_last_token(stories_dir, data_dir, tmp_path):
    """The least --cutoff is the template's length: with it an empty instruction's prompt ends with
    "### Response:\\n", one token fewer cuts it; train.py takes the least and refuses one fewer."""
    tokenizer = Tokenizer.from_file(stories_dir / "tokenizer.json")
    least = commonsense.template_tokens(tokenizer, tokenizer.add_bos)
    record = {"instruction": "", "output": "the correct answer is true", "answer": "true"}
    full = tokenizer.encode(commonsense.prompt(record), bos=True)
    assert len(full) == least and tokenizer.decode(full).endswith("### Response:\n")
    for cutoff, kept in ((least, full), (least - 1, full[:-1])):
        ids, labels = commonsense.encode_example(tokenizer, record, True, prompt_cutoff=cutoff)
        assert ids[:len(kept)] == kept and labels[len(kept)] != -100  # the response starts right after the prompt
    train.main(train_args(stories_dir, data_dir, tmp_path / "ok", "--method", "lora", "--cutoff", str(least)))
    with pytest.raises(SystemExit, match=f"--cutoff {least - 1} keeps less .* >= {least}$"):
        train.main(train_args(stories_dir, data_dir, tmp_path / "short", "--method", "lora", "--cutoff", str(least - 1)))


SPECS = [("lora", {}), ("hira", {}), ("dora", {}), ("loran", {}), ("pera", {}), ("pera", {"terms": "square"}),
         ("pera", {"terms": "cross"}), ("pera", {"degree": 3}), ("pera", {"degree": 4, "terms": "cross"}),
         ("lora", {"targets": ["q_proj"]})]


@pytest.mark.parametrize("method, kw", SPECS)
def test_the_counted_parameters_are_what_inject_builds(stories_dir, method, kw):
    model = Transformer.from_pretrained(stories_dir)
    spec = adapters.settings(method, 5, **kw)
    n = adapters.trainable_parameters(model, spec)
    adapters.inject(model, spec)
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if method == "pera":
        assert all(len(layer.h) == layer.idx.shape[1]  # P from pera.n_terms: the terms enumerated
                   for layer in adapters.adapter_layers(model, "pera").values())


def test_a_rank_is_refused_exactly_when_its_state_exceeds_the_free_memory(stories_dir, monkeypatch):
    """STATE_BYTES per parameter, as the planner counts: a parameter, its gradient and AdamW's two moments, float32."""
    model = Transformer.from_pretrained(stories_dir)
    spec = adapters.settings("pera", 8)
    need = adapters.trainable_parameters(model, spec) * adapters.STATE_BYTES
    assert adapters.STATE_BYTES == 4 * torch.finfo(torch.float32).bits // 8
    for free, refused in ((need, False), (need - 1, True), (None, False)):  # None: unknown (not Linux)
        monkeypatch.setattr(adapters, "free_bytes", lambda device: free)
        if refused:
            with pytest.raises(ValueError, match=f"--rank 8: the pera adapter would need at least .* GiB "
                                                 f"\\({need // adapters.STATE_BYTES:,} parameters"):
                adapters.check_fits(model, spec, torch.device("cpu"))
        else:
            adapters.check_fits(model, spec, torch.device("cpu"))


def test_what_the_tools_write_passes_the_checks():
    """The checks refuse only what no tool writes: every committed results.json and metrics.json, every
    fixture's config.json and tokenizer_config.json, and PEFT's own adapter_config.json files pass."""
    results = sorted((ROOT / "results").rglob("results.json"))
    assert len(results) >= 8
    for path in results:
        evaluate.read_results(path)
    for path in sorted((ROOT / "results").rglob("metrics.json")):
        evaluate.trainable_percent(json.loads(path.read_text()))
    models = sorted(p for p in (HERE_FIXTURES / "models").iterdir() if (p / "config.json").is_file())
    assert len(models) == 5
    for folder in models:
        Config.from_hf(json.loads((folder / "config.json").read_text()))
    tokenizers = [("tokenizers", p.name) for p in (HERE_FIXTURES / "tokenizers").iterdir() if p.is_dir()]
    assert len(tokenizers) == 7
    for folder in tokenizers + [("models", "stories260K")]:
        Tokenizer.from_file(fixture(*folder, "tokenizer.json"))
    for method in ("lora", "hira", "dora"):
        path = HERE_FIXTURES / "peft" / method / "adapter_config.json"
        assert adapters.settings_from_peft_config(json.loads(path.read_text()), path)["method"] == method
