"""Train the character-level tokenizer shared by a demo task's teacher and student.

Characters, not BPE merges: arithmetic must see every digit on its own (a merged ``"48"`` token
would hide the digits a step computes with), and with one token per character the teacher's
tokens are the student's and chunk boundaries never split a token.

    python experiments/make_tokenizer.py --out python/genssd/assets/demo/tokenizer
    python experiments/make_tokenizer.py --task ledger --out python/genssd/assets/ledger/tokenizer
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from demo_tasks import DEMO_TASKS, DemoTask
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "<eos>", "unk_token": "<unk>"}


def build(demo: DemoTask, seed: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    # Every character, newline included, is its own pre-token; Fuse concatenates on decode.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS.values()))
    tokenizer.train_from_iterator(demo.corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=sorted(DEMO_TASKS), default="arith")
    args = parser.parse_args()
    demo = DEMO_TASKS[args.task]
    tokenizer = build(demo, args.seed)
    row = demo.generate(1, args.seed)[0]
    text = demo.task.prompt(row) + demo.render(row, "fine", random.Random(0))
    ids = tokenizer(text)["input_ids"]
    if len(ids) != len(text) or tokenizer.decode(ids) != text:
        raise SystemExit("tokenizer is not character-level round-trip exact")
    tokenizer.save_pretrained(args.out)
    print(f"vocabulary of {len(tokenizer)} tokens -> {args.out}")


if __name__ == "__main__":
    main()
