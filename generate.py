"""Ask a model, fine-tuned or not, something; the response is printed as it is generated.

    python generate.py --adapter runs/pera-r4 "Is the sky blue?"
    python generate.py --model checkpoints/SmolLM2-135M-Instruct --raw "The capital of France is"

The text is wrapped in the prompt the adapters were trained on (commonsense.prompt: "Below is an
instruction ... ### Instruction:\\n<text>\\n\\n### Response:\\n"); --raw sends it as it is. Decoding is
greedy, the papers' choice, unless --temperature is above 0 (then sampled, from the --top-k most likely
tokens if given, reproducibly with --seed). Generation stops at the end token or after --max-new-tokens.
"""
import argparse
import sys

import torch

from eval import keep_last, load  # eval.py's loader; named imports, so the builtin eval() stays unshadowed
from support import cli, commonsense, provenance


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    p.add_argument("text", type=cli.utf8, help="the instruction (or, with --raw, the prompt itself)")
    p.add_argument("--adapter", default=None, help="adapter folder from train.py (default: the base model alone)")
    p.add_argument("--model", default=None, help="Hugging Face model folder (default: the adapter's base model, "
                                                 "else checkpoints/SmolLM2-135M-Instruct)")
    p.add_argument("--raw", action="store_true", help="send the text as it is, without the training prompt")
    p.add_argument("--max-new-tokens", type=cli.POSITIVE_INT, default=128, help="the longest response")
    p.add_argument("--temperature", type=cli.NON_NEGATIVE, default=0.0, help="0: greedy; above 0: sample")
    p.add_argument("--top-k", type=cli.POSITIVE_INT, default=None, help="sample from the k most likely tokens only")
    p.add_argument("--seed", type=cli.SEED, default=None, help="seed for sampling (default: a different draw each time)")
    p.add_argument("--device", type=cli.device, default=None, help="cpu, cuda, ... (default: cuda if available)")
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.merge = False  # what eval.py's load expects
    return args


class TextStream:
    """The decoded text of a growing list of token ids, handed out piece by piece as it becomes final.

    Decoding the ids so far and printing what is new would print U+FFFD halfway through a character: with
    byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM2) or SentencePiece byte fallback, one character of two to
    four UTF-8 bytes can span several tokens, and until its last byte arrives the decoded text ends in
    U+FFFD. That tail is held back until it decodes, or until `end()`.
    """

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def push(self, token_id) -> str:
        self.ids.append(token_id)
        final = self.tokenizer.decode(self.ids).rstrip("\ufffd")
        piece = final[len(self.shown):] if final.startswith(self.shown) else ""
        self.shown += piece
        return piece

    def end(self) -> str:
        """What is left: the held-back tail, if the response ends inside a character."""
        text = self.tokenizer.decode(self.ids)
        piece = text[len(self.shown):] if text.startswith(self.shown) else ""
        self.shown += piece
        return piece


def main(argv=None, out=None):
    """Print the response as it is generated (to `out`, default stdout); return its token ids and text."""
    out = out or sys.stdout
    args = parse_args(argv)
    with cli.user_input():
        model, tokenizer, _ = load(args)
        provenance.check_not_applied(args.adapter, args.model)  # an adapter the model has merged in already
    room = model.config.max_position_embeddings - args.max_new_tokens
    if room < 2:
        sys.exit(f"error: --max-new-tokens {args.max_new_tokens} leaves no room for a prompt in the model's "
                 f"{model.config.max_position_embeddings} positions")
    prompt = args.text if args.raw else commonsense.prompt({"instruction": args.text})
    device = model.model.embed_tokens.weight.device
    prompt_ids, cut = keep_last(tokenizer.encode(prompt, bos=tokenizer.add_bos), room, tokenizer.add_bos)
    if cut:
        print(f"the prompt is longer than the model's {model.config.max_position_embeddings} positions less "
              f"--max-new-tokens {args.max_new_tokens}: its first {cut} tokens were cut", file=sys.stderr)
    ids = torch.tensor([prompt_ids], device=device)
    config_eos = model.config.eos_token_id
    eos = {tokenizer.eos_id} if tokenizer.eos_id is not None else set()
    eos |= set(config_eos) if isinstance(config_eos, list) else {config_eos} - {None}
    generator = None
    if args.temperature > 0 and args.seed is not None:
        generator = torch.Generator(device).manual_seed(args.seed)
    stream, new = TextStream(tokenizer), []

    def show(next_id):
        token = next_id[0].item()
        if token in eos:
            return
        new.append(token)
        out.write(stream.push(token))
        out.flush()

    model.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, eos_id=eos,
                   generator=generator, on_token=show)
    out.write(stream.end() + "\n")
    out.flush()
    return new, stream.shown


if __name__ == "__main__":
    cli.run(main)
