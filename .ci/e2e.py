"""The README's workflow end to end, offline, on the fixtures: prepare, train each method, evaluate.

prepare.py downloads the real stories260K model from a local "hub" (http.server on 127.0.0.1 serving
tests/fixtures/models/stories260K at <repo>/resolve/main/<file>, which is how HF_ENDPOINT is used) and
copies the commonsense sample in tests/fixtures/commonsense with --data-from. Then train.py runs a few steps of LoRA, HiRA and PERA, and eval.py evaluates each;
PERA's adapter is merged into a plain model folder (merge.py), which eval.py scores like the adapter, and
generate.py answers a question with it.
Every check names what failed.
"""
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "models" / "stories260K"
DATA = ROOT / "tests" / "fixtures" / "commonsense"


def run(*argv, env=None):
    print("$", " ".join(map(str, argv)), flush=True)
    subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, check=True, env={**os.environ, **(env or {})})


def check(condition, message):
    if not condition:
        sys.exit(f"e2e FAILED: {message}")
    print(f"ok: {message}")


def main():
    work = Path(tempfile.mkdtemp(prefix="pera-e2e-"))
    hub = work / "hub" / "karpathy" / "stories260K" / "resolve" / "main"
    hub.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(MODEL / name, hub / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(work / "hub"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        checkpoints, data = work / "checkpoints", work / "data"
        run("prepare.py", "--model", "karpathy/stories260K", "--checkpoints", checkpoints, "--data-dir", data,
            "--data-from", DATA, env={"HF_ENDPOINT": endpoint})
        model = checkpoints / "stories260K"
        check(all((model / f).read_bytes() == (MODEL / f).read_bytes() for f in ("config.json", "model.safetensors")),
              "prepare.py downloaded the model byte for byte")
        check(sorted(p.name for p in data.iterdir()) == sorted(p.name for p in DATA.iterdir() if p.is_dir()),
              "prepare.py copied every task folder")

        for method, lr in (("lora", "3e-3"), ("hira", "2e-2"), ("pera", "3e-3")):  # 16 of the sample's 106
            # training records held out for validation (the default, 120, is more than the sample has)
            out = work / "runs" / method
            run("train.py", "--model", model, "--data", data, "--method", method, "--rank", "4", "--max-steps", "24",
                "--batch-size", "8", "--val-size", "16", "--warmup-steps", "4", "--eval-every", "12", "--lr", lr, "--out", out)
            files = {p.name for p in out.iterdir()}
            check(files >= {"adapter_model.safetensors", "adapter_config.json", "args.json", "log.jsonl", "metrics.json",
                            "checkpoint"}, f"{method}: train.py wrote its files ({sorted(files)})")
            metrics = json.loads((out / "metrics.json").read_text())
            check(metrics["mean_loss_last_10"] < metrics["mean_loss_first_10"],
                  f"{method}: loss went down ({metrics['mean_loss_first_10']:.3f} -> {metrics['mean_loss_last_10']:.3f})")
            config = json.loads((out / "adapter_config.json").read_text())
            check(config["peft_type"] == method.upper() and config["r"] == 4, f"{method}: adapter_config.json")

            run("eval.py", "--adapter", out, "--data", data, "--limit", "6", "--batch-size", "6", "--max-new-tokens", "8")
            results = json.loads((out / "eval-generate" / "results.json").read_text())
            tasks = {p.name for p in data.iterdir() if (p / "test.json").is_file()}
            check(set(results["tasks"]) == tasks and all(t["n"] == 6 for t in results["tasks"].values()),
                  f"{method}: eval.py scored 6 examples of each of {len(tasks)} tasks")
            lines = (out / "eval-generate" / "predictions.jsonl").read_text().splitlines()
            check(len(lines) == 6 * len(tasks), f"{method}: eval.py wrote one prediction per example")
        run("eval.py", "--adapter", work / "runs" / "pera", "--rank-report")
        check((work / "runs" / "pera" / "rank_report.json").is_file(), "eval.py --rank-report wrote its report")
        run("merge.py", "--adapter", work / "runs" / "pera", "--out", work / "merged")
        check({p.name for p in (work / "merged").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
              and (work / "merged" / "config.json").read_bytes() == (model / "config.json").read_bytes(),
              "merge.py wrote a plain model folder with the base's config")
        run("eval.py", "--model", work / "merged", "--data", data, "--limit", "6", "--batch-size", "6",
            "--max-new-tokens", "8", "--out", work / "merged-eval")
        merged = json.loads((work / "merged-eval" / "results.json").read_text())
        check(merged["tasks"] == results["tasks"], "the merged model, as a plain model, scores what the adapter scored")
        answer = subprocess.run([sys.executable, "generate.py", "--adapter", work / "runs" / "pera", "Is the sky blue?",
                                 "--max-new-tokens", "8"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
        check(answer.strip() != "", f"generate.py answered ({answer.strip()!r})")
    finally:
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print("e2e passed")


if __name__ == "__main__":
    main()
