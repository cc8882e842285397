"""train.py's PERA study flags (--init, --h-lr-ratio) and its log of the polynomial terms, on stories260K."""
import json
import random
import statistics

import pytest
import torch
from conftest import ROOT
from test_train_eval import data_dir, stories_dir, train_args  # noqa: F401  (fixtures)

import eval as evaluate
import pera
import train
from model import Transformer
from support import adapters
from tokenizer import Tokenizer


def log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_init_and_h_lr_ratio_are_saved_resumed_and_read_back(stories_dir, data_dir, tmp_path, monkeypatch):
    base = ["--method", "pera", "--max-steps", "4", "--lr", "1e-2", "--eval-every", "4", "--save-every", "2"]
    common = base + ["--init", "paper", "--h-lr-ratio", "30"]
    train.main(train_args(stories_dir, data_dir, tmp_path / "straight", *common))

    def interrupt(step, record):
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "on_step", interrupt)
    with pytest.raises(SystemExit, match="interrupted after step 3"):
        train.main(train_args(stories_dir, data_dir, tmp_path / "resumed", *common))
    monkeypatch.undo()
    saved = json.loads((tmp_path / "resumed" / "args.json").read_text())
    assert saved["init"] == "paper" and saved["h_lr_ratio"] == 30
    for changed, flag in [(["--init", "code", "--h-lr-ratio", "30"], "--init"),
                          (["--init", "paper", "--h-lr-ratio", "1"], "--h-lr-ratio")]:  # run-defining: refused
        with pytest.raises(SystemExit, match=f"{flag} differ"):
            train.main(train_args(stories_dir, data_dir, tmp_path / "resumed", *base, *changed, "--resume"))
    train.main(train_args(stories_dir, data_dir, tmp_path / "resumed", *common, "--resume"))
    drop_time = lambda records: [{k: v for k, v in r.items() if k != "time"} for r in records]  # noqa: E731
    assert drop_time(log(tmp_path / "straight")) == drop_time(log(tmp_path / "resumed"))

    config = json.loads((tmp_path / "resumed" / "adapter_config.json").read_text())
    assert config["init"] == "paper" and config["h_lr_ratio"] == 30
    model = Transformer.from_pretrained(stories_dir)
    s = adapters.load_adapter(model, tmp_path / "resumed")
    assert s["init"] == "paper" and s["h_lr_ratio"] == 30
    assert all(layer.init == "paper" for layer in adapters.adapter_layers(model, "pera").values())
    assert evaluate.run_name(s) == "PERA r=4, paper init, h lr ×30"


def test_a_run_saved_before_init_existed_resumes_with_the_defaults(stories_dir, data_dir, tmp_path, monkeypatch):
    common = ["--method", "pera", "--max-steps", "2", "--lr", "1e-2", "--eval-every", "2", "--save-every", "1"]

    def interrupt(step, record):
        if step == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "on_step", interrupt)
    with pytest.raises(SystemExit, match="interrupted after step 1"):
        train.main(train_args(stories_dir, data_dir, tmp_path, *common))
    monkeypatch.undo()
    saved = json.loads((tmp_path / "args.json").read_text())
    for key in ("init", "h_lr_ratio"):
        del saved[key]
    (tmp_path / "args.json").write_text(json.dumps(saved))
    assert train.main(train_args(stories_dir, data_dir, tmp_path, *common, "--resume"))["steps"] == 2
    with pytest.raises(SystemExit, match="--init differ"):
        train.main(train_args(stories_dir, data_dir, tmp_path, *common, "--resume", "--init", "paper"))


def test_h_group_lr_and_the_logged_polynomial_terms(stories_dir, data_dir, tmp_path, monkeypatch):
    """One run: h's AdamW group runs at ratio × the schedule; the logged share, max |h| and ‖∂L/∂h‖ are the
    helpers' values (the gradient norm before clipping, since clipping scales the gradients after)."""
    seen, h_grads = [], []

    class Recording(torch.optim.AdamW):
        def step(self, *a, **kw):
            seen.append([(g["lr"], [tuple(p.shape) for p in g["params"]]) for g in self.param_groups])
            return super().step(*a, **kw)

    real = train.h_grad_norm

    def spy(layers):
        h_grads.append(torch.linalg.vector_norm(torch.cat([layer.h.grad for layer in layers])).item())
        return real(layers)

    monkeypatch.setattr(train.torch.optim, "AdamW", Recording)
    monkeypatch.setattr(train, "h_grad_norm", spy)
    args = train_args(stories_dir, data_dir, tmp_path, "--method", "pera", "--max-steps", "5", "--lr", "2e-2",
                      "--eval-every", "5", "--h-lr-ratio", "100", "--pera-log-every", "2", "--grad-clip", "1e-3")
    train.main(args)
    parsed, records = train.parse_args(args), log(tmp_path)
    assert len(seen) == 5
    for step, groups in enumerate(seen):
        (lr, shapes), (h_lr, h_shapes) = groups
        assert lr == pytest.approx(train.lr_at(step, parsed, 5)) and h_lr == pytest.approx(100 * lr)
        assert h_shapes == [(10,)] * len(h_shapes) and len(h_shapes) == len(shapes) // 2  # one h per layer
        assert all(len(s) == 2 for s in shapes)  # A and B only
    assert [r["lr"] for r in records] == [train.lr_at(i, parsed, 5) for i in range(5)]

    # logged every 2 steps and at the last one
    assert [("poly_share_median" in r, "h_grad_norm" in r) for r in records] == [(s in (2, 4, 5),) * 2
                                                                                 for s in range(1, 6)]
    assert [r["h_grad_norm"] for r in records if "h_grad_norm" in r] == pytest.approx(h_grads, rel=1e-6)
    assert all(r["grad_norm"] > 1e-3 for r in records)  # every step was clipped, after h's norm was taken
    model = Transformer.from_pretrained(stories_dir)
    adapters.inject(model, adapters.settings("pera", 4))
    params = dict(model.named_parameters())
    for name, value in torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)["trainable"].items():
        params[name].data.copy_(value)  # the trainable tensors after the last step, the one logged last
    layers = list(adapters.adapter_layers(model, "pera").values())
    shares = [pera.polynomial_share(layer) for layer in layers]
    last = records[-1]
    assert last["poly_share_median"] == pytest.approx(statistics.median(shares), rel=1e-6)
    assert last["poly_share_max"] == pytest.approx(max(shares), rel=1e-6) and max(shares) > 0
    assert last["h_max"] == max(layer.h.abs().max().item() for layer in layers) > 0
    bounds = [pera.polynomial_share_bound(layer) for layer in layers]
    assert last["poly_share_bound_median"] == pytest.approx(statistics.median(bounds), rel=1e-6)
    assert last["poly_share_bound_max"] == pytest.approx(max(bounds), rel=1e-6)
    assert all(b >= s for b, s in zip(bounds, shares))
    rms = [(layer.scaling * layer.B.double() @ layer.A.double()).square().mean().sqrt().item() for layer in layers]
    assert last["lora_rms_median"] == pytest.approx(statistics.median(rms), rel=1e-9) and last["lora_rms_median"] > 0
    assert last["b_max_median"] == statistics.median(layer.B.abs().max().item() for layer in layers) > 0
    assert last["a_max_median"] == statistics.median(layer.A.abs().max().item() for layer in layers) > 0
    rho = [((layer.B.double().abs() @ layer.A.double().abs()).norm() / (layer.B.double() @ layer.A.double()).norm()).item()
           for layer in layers]
    assert last["rho_median"] == pytest.approx(statistics.median(rho), rel=1e-9) and last["rho_median"] >= 1


def test_h_lr_ratio_0_keeps_h_at_0_and_multinomial_coefficients_stay_fixed(stories_dir, data_dir, tmp_path):
    """--h-lr-ratio 0: the paper init trains LoRA's update (h stays exactly 0, A and B move); --coefficients
    multinomial: h holds the fixed coefficients, untrained, and the file says so."""
    common = ["--method", "pera", "--max-steps", "3", "--lr", "1e-2", "--eval-every", "3", "--init", "paper"]
    for name, extra, want in (("h0", ["--h-lr-ratio", "0"], [0.0] * 10),
                              ("fixed", ["--coefficients", "multinomial"], [1.0, 2, 2, 2, 1, 2, 2, 1, 2, 1])):
        out = tmp_path / name
        train.main(train_args(stories_dir, data_dir, out, *common, *extra))
        model = Transformer.from_pretrained(stories_dir)
        spec = adapters.load_adapter(model, out)
        layers = list(adapters.adapter_layers(model, "pera").values())
        assert all(layer.h.tolist() == want for layer in layers), name
        assert all(layer.B.abs().max() > 0 and layer.A.abs().max() > 0 for layer in layers)  # A moved from 0
        assert spec["coefficients"] == ("multinomial" if name == "fixed" else "trained")


@pytest.mark.parametrize("argv, message", [
    (["--method", "lora", "--init", "paper"], "--init is PERA's, not lora's"),
    (["--method", "hira", "--h-lr-ratio", "10"], "--h-lr-ratio is PERA's, not hira's"),
    (["--h-lr-ratio", "-1"], "argument --h-lr-ratio: expected a finite number >= 0, got '-1'"),
    (["--init", "kaiming"], "invalid choice"),
])
def test_bad_study_arguments_are_one_clear_error(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        train.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_label_loss_scores_the_answer_label_alone(stories_dir, data_dir, tmp_path):
    from conftest import fixture

    from experiments import study
    tokenizer = Tokenizer.from_file(fixture("tokenizers", "smollm2", "tokenizer.json"))  # the study's
    for task in ("boolq", "ARC-Easy", "openbookqa"):
        for record in json.loads(fixture("commonsense", task, "train.json").read_text())[:5]:
            ids, labels = study.label_positions(tokenizer, record, False, 256)
            assert tokenizer.decode([y for y in labels if y != -100]).strip() == record["answer"]
            full = train.commonsense.encode_example(tokenizer, record, False)
            assert ids == full[0] and all(y in (-100, f) for y, f in zip(labels, full[1]))
            _, cut = study.label_positions(tokenizer, record, False, 8)  # a cut prompt shifts nothing
            assert [y for y in cut if y != -100] == [y for y in labels if y != -100]
    out = tmp_path / "run"
    argv = train_args(stories_dir, data_dir, out, "--method", "pera", "--max-steps", "2", "--eval-every", "2",
                      "--lr", "1e-2")
    train.main(argv)
    result = study.label_loss(out)
    assert json.loads((out / "label_val_loss.json").read_text()) == result and result["examples"] == 16
    # recomputed one example at a time: train.py's 16 validation records, the adapted model's mean
    # cross-entropy over their answer labels' tokens, and not the base model's
    stories = Tokenizer.from_file(stories_dir / "tokenizer.json")
    records = [r for t in ("boolq", "ARC-Easy") for r in json.loads((data_dir / t / "train.json").read_text())]
    random.Random(42).shuffle(records)  # train.py's --seed
    args = train.parse_args(argv)
    val = [study.label_positions(stories, r, stories.add_bos, args.cutoff) for r in records[:16]]
    assert [ids for ids, _ in val] == [ids for ids, _ in train.load_examples(args, stories, stories.add_bos)[2]]
    model, base = Transformer.from_pretrained(stories_dir), Transformer.from_pretrained(stories_dir)
    adapters.load_adapter(model, out)

    def label_loss(m):
        total, count = 0.0, 0
        for ids, labels in val:
            with torch.no_grad():
                logp = torch.log_softmax(m.eval()(torch.tensor([ids]))[0].double(), -1)
            scored = [t for t, y in enumerate(labels) if y != -100]
            total, count = total - sum(logp[t - 1, labels[t]].item() for t in scored), count + len(scored)
        return total / count, count

    expected, count = label_loss(model)
    assert result["label_tokens"] == count >= 16 and result["label_val_loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(label_loss(base)[0] - expected) > 1e-2


def test_study_table_counts_differing_answers_and_the_loglik_intervals(tmp_path):
    import statistics

    from experiments import study
    # 1000 loglik examples: LoRA right on 0-249, PERA on 100-399, so PERA loses 100 and wins 150
    for run, outputs, right in [("lora", ["a", "b", "c", "d"], range(250)), ("pera", ["a", "x", "c", "y"], range(100, 400))]:
        (tmp_path / run / "eval-generate").mkdir(parents=True)
        (tmp_path / run / "eval-loglik").mkdir()
        (tmp_path / run / "eval-generate" / "predictions.jsonl").write_text(
            "".join(json.dumps({"output": o}) + "\n" for o in outputs))
        (tmp_path / run / "eval-loglik" / "predictions.jsonl").write_text("".join(
            json.dumps({"task": "boolq" if i < 500 else "piqa", "index": i % 500, "correct": i in right,
                        "prediction": "gold" if i in right else "other"}) + "\n" for i in range(1000)))
        (tmp_path / run / "eval-loglik" / "results.json").write_text(json.dumps(
            {"tasks": {"boolq": {"n": 500, "correct": len(right) - 100}, "piqa": {"n": 500, "correct": 100}}}))
    rows = study.main(["table", str(tmp_path / "pera"), "--lora", str(tmp_path / "lora")])
    assert [r["answers_differing_from_lora"] for r in rows] == [0, 2]
    assert rows[1]["loglik_accuracy"] == pytest.approx(30.0) and rows[1]["loglik_n"] == 1000
    assert rows[1]["loglik_ci95"] == pytest.approx(100 * 1.96 * (0.3 * 0.7 / 1000) ** 0.5)
    d = [-1] * 100 + [1] * 150 + [0] * 750
    assert rows[1]["loglik_minus_lora"] == pytest.approx(5.0)
    assert rows[1]["loglik_minus_lora_ci95"] == pytest.approx(100 * 1.96 * statistics.stdev(d) / 1000 ** 0.5)
    assert rows[1]["loglik_choices_differing_from_lora"] == 250
    assert (rows[0]["loglik_minus_lora"], rows[0]["loglik_choices_differing_from_lora"]) == (0.0, 0)
    text = study.table(rows)
    assert "30.00 ± 2.84 (n = 1000)" in text and "+5.00 ± 3.09 (n = 1000, 250 choices differ)" in text
    # a LoRA run evaluated on fewer examples (a smaller --limit: each task's first ones) pairs on those alone
    lines = (tmp_path / "lora" / "eval-loglik" / "predictions.jsonl").read_text().splitlines()
    (tmp_path / "lora" / "eval-loglik" / "predictions.jsonl").write_text(
        "".join(line + "\n" for line in lines if json.loads(line)["index"] < 250))
    rows = study.main(["table", str(tmp_path / "pera"), "--lora", str(tmp_path / "lora")])
    d = [-1] * 100 + [0] * 400  # boolq's first 250: LoRA right on all, PERA on 100-249; piqa's: both wrong
    assert rows[1]["loglik_paired_n"] == 500 and rows[1]["loglik_minus_lora"] == pytest.approx(-20.0)
    assert rows[1]["loglik_minus_lora_ci95"] == pytest.approx(100 * 1.96 * statistics.stdev(d) / 500 ** 0.5)
    with pytest.raises(SystemExit, match="nowhere: no such run folder"):
        study.main(["table", str(tmp_path / "pera"), "--lora", str(tmp_path / "nowhere")])
    # no example in common: no paired cell
    (tmp_path / "lora" / "eval-loglik" / "predictions.jsonl").write_text("")
    rows = study.main(["table", str(tmp_path / "pera"), "--lora", str(tmp_path / "lora")])
    assert "loglik_minus_lora" not in rows[1] and study.table(rows).splitlines()[-1].endswith("| - |")


def test_every_committed_pera_log_keeps_the_bound_above_the_share():
    """pera.polynomial_share_bound holds on real runs: at every logged step of every PERA run in results/ that
    logs it, the bounds' median and max are at least the shares' (each layer's bound is above its share)."""
    logs = [path for path in ROOT.glob("results/**/log.jsonl")
            if any("poly_share_bound_max" in line for line in path.read_text().splitlines())]
    assert logs, "no committed PERA log carries the bound"
    for path in logs:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "poly_share_median" in record:
                assert record["poly_share_bound_median"] >= record["poly_share_median"], (path, record["step"])
                assert record["poly_share_bound_max"] >= record["poly_share_max"], (path, record["step"])
