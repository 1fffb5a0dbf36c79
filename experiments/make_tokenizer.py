"""Train the character-level tokenizer shared by the demo teacher and student.

Characters, not BPE merges: arithmetic must see every digit on its own (a merged ``"48"`` token
would hide the digits a step computes with), and with one token per character the teacher's
tokens are the student's and chunk boundaries never split a token.

    python experiments/make_tokenizer.py --out python/genssd/assets/demo/tokenizer
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from genssd.tasks.arith import STYLES, ArithTask, generate_problems, render_solution
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "<eos>", "unk_token": "<unk>"}


def corpus(seed: int) -> list[str]:
    """Prompts and solutions in every style: all characters the task can produce."""
    task, rng = ArithTask(), random.Random(seed)
    rows = generate_problems(2000, seed, num_operands=(2, 6), max_operand=50, max_value=200)
    return [
        task.prompt(r) + render_solution(r["numbers"], r["ops"], style, rng) for r in rows for style in STYLES
    ]


def build(seed: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    # Every character, newline included, is its own pre-token; Fuse concatenates on decode.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS.values()))
    tokenizer.train_from_iterator(corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tokenizer = build(args.seed)
    text = ArithTask().prompt({"question": "What is 37 + 48 - 19?"}) + "37 + 48 = 85\n85 - 19 = 66\n#### 66"
    ids = tokenizer(text)["input_ids"]
    if len(ids) != len(text) or tokenizer.decode(ids) != text:
        raise SystemExit("tokenizer is not character-level round-trip exact")
    tokenizer.save_pretrained(args.out)
    print(f"vocabulary of {len(tokenizer)} tokens -> {args.out}")


if __name__ == "__main__":
    main()
