"""``genssd train``: supervised fine-tuning of the student on trajectories (single process or torchrun)."""

from __future__ import annotations

from genssd.commands import add_model_run_flags, add_overrides_flag, with_prompt_flags


def register(subparsers) -> None:
    from genssd.tasks import TASK_NAMES

    parser = subparsers.add_parser(
        "train",
        help="fine-tune a causal LM on search trajectories or question/answer rows",
        description="Completion-only SFT through the fused linear cross-entropy kernel. Run under "
        "torchrun --nproc_per_node N for data parallelism (NCCL on GPUs, gloo on CPU).",
    )
    parser.add_argument("--model", required=True, help="folder of the Hugging Face causal LM to fine-tune")
    parser.add_argument("--data", required=True, help="JSONL: genssd search output or question/answer rows")
    parser.add_argument(
        "--out", required=True, help="folder for checkpoints, the training log and the final model"
    )
    parser.add_argument(
        "--task", choices=TASK_NAMES, help="format prompts as this task does (default: the bare question)"
    )
    parser.add_argument("--config", help="YAML file of TrainConfig keys")
    add_overrides_flag(parser, "--set", "override a TrainConfig key")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument(
        "--device", help="cpu or cuda (default: cuda when available; torchrun: this rank's GPU)"
    )
    add_model_run_flags(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch.distributed as dist

    from genssd.config import TrainConfig, build_config
    from genssd.data import check_writable
    from genssd.models import TRAIN_DTYPE, check_model_folder, load_model, load_tokenizer, quiet_transformers
    from genssd.tasks import get_task, read_rows
    from genssd.train import dist_info, prepare_examples, setup_distributed, train

    config = with_prompt_flags(build_config(TrainConfig, yaml_path=args.config, overrides=args.set), args)
    check_writable(args.out, folder=True)
    task = get_task(args.task) if args.task else None
    if args.no_progress:
        quiet_transformers()
    # The data is checked before the model is loaded, so bad input fails in seconds.
    check_model_folder(args.model, "--model")
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    examples = prepare_examples([row for _, row in read_rows(args.data)], tokenizer, config, task=task)
    device = setup_distributed(args.device)
    try:
        # fp32 master weights; bf16 comes from autocast on CUDA.
        model = load_model(
            args.model, device=device, dtype=TRAIN_DTYPE, trust_remote_code=args.trust_remote_code
        )
        result = train(
            model,
            tokenizer,
            examples,
            config,
            args.out,
            task=task,
            resume=args.resume,
            device=device,
            progress=not args.no_progress,
        )
        if dist_info()[0] == 0:
            last = f", last loss {result['losses'][-1]:.4f}" if result["losses"] else ""
            print(f"trained to step {result['steps']}{last}; model saved to {args.out}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
