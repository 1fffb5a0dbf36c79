"""``genssd eval``: accuracy of a model (or of given predictions) on a task split."""

from __future__ import annotations

from genssd.commands import add_model_run_flags, add_overrides_flag, with_prompt_flags
from genssd.errors import UsageError

DTYPES = ("auto", "float32", "bfloat16", "float16")


def load_student(path: str, *, device, dtype: str = "auto", trust_remote_code: bool = False):
    """The tokenizer and causal LM of a local model folder; the model on ``device`` in eval mode.

    ``dtype="auto"`` is bfloat16 on CUDA and float32 elsewhere.
    """
    from genssd.models import check_model_folder, inference_dtype, load_model, load_tokenizer

    check_model_folder(path, "--model")
    dtype = inference_dtype(device, dtype)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    return load_model(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code), tokenizer


def register(subparsers) -> None:
    from genssd.config import EvalConfig
    from genssd.tasks import TASK_NAMES

    defaults = EvalConfig()
    parser = subparsers.add_parser(
        "eval",
        help="accuracy of a model on a task split (or score given predictions)",
        description="Generate answers with --model (greedy pass@1, or --num-samples samples at "
        "--temperature: "
        "mean accuracy and pass@n) or score the texts of --predictions; print the accuracy.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="folder of a Hugging Face causal LM and its tokenizer")
    source.add_argument(
        "--predictions",
        help="JSONL of texts to score instead of generating "
        "(fields predictions | prediction | trajectories; matched by uid, else by order)",
    )
    parser.add_argument("--task", required=True, choices=TASK_NAMES)
    parser.add_argument("--data", required=True, help="JSONL file of problems")
    parser.add_argument("--limit", type=int, help="evaluate the first N problems only")
    parser.add_argument("--out", help="write per-problem predictions here (JSONL)")
    parser.add_argument("--config", help="YAML file of EvalConfig keys")
    add_overrides_flag(parser, "--set", "override an EvalConfig key (repeatable)")
    # The flags people type most, as aliases of --set KEY=VALUE (given ones beat the --config file).
    parser.add_argument("--batch-size", type=int, help=f"(default {defaults.batch_size})")
    parser.add_argument("--max-new-tokens", type=int, help=f"(default {defaults.max_new_tokens})")
    parser.add_argument("--num-samples", type=int, help=f"(default {defaults.num_samples})")
    parser.add_argument("--temperature", type=float, help=f"(default {defaults.temperature})")
    parser.add_argument("--top-p", type=float, help=f"(default {defaults.top_p})")
    parser.add_argument("--seed", type=int, help=f"(default {defaults.seed})")
    parser.add_argument(
        "--engine",
        choices=["auto", "static", "hf"],
        help="decode engine: static (Llama, Mistral, Qwen2, Qwen3), hf (model.generate), "
        "auto (static where supported)",
    )
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="model dtype (auto: bfloat16 on CUDA, else float32)"
    )
    add_model_run_flags(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from genssd.config import EvalConfig, build_config
    from genssd.data import check_writable
    from genssd.evaluate import evaluate, read_predictions, score_predictions, summary_line, write_records
    from genssd.tasks import get_task

    aliases = ("batch_size", "max_new_tokens", "num_samples", "temperature", "top_p", "seed", "engine")
    given = [f"{name}={getattr(args, name)}" for name in aliases if getattr(args, name) is not None]
    config = with_prompt_flags(
        build_config(EvalConfig, yaml_path=args.config, overrides=[*given, *args.set]), args
    )
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.out:
        check_writable(args.out)
    task = get_task(args.task)
    config.prompt_format_for(task)  # too few few-shot examples fail before the model loads
    rows = task.load(args.data)[: args.limit]
    if args.predictions is not None:
        result = score_predictions(task, rows, read_predictions(args.predictions, rows))
    else:
        from genssd.models import quiet_transformers, resolve_device

        if args.no_progress:
            quiet_transformers()
        device = resolve_device(args.device)
        model, tokenizer = load_student(
            args.model, device=device, dtype=args.dtype, trust_remote_code=args.trust_remote_code
        )
        result = evaluate(model, tokenizer, task, rows, config, progress=not args.no_progress)
    if args.out:
        write_records(args.out, result["records"])
    print(summary_line(result))
    return 0
