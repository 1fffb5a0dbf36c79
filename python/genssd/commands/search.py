"""``genssd search`` (run a search over a task's data file) and ``genssd merge`` (join shard outputs).

Everything a user can get wrong is checked before a model is loaded or a row is written. Under
``torchrun`` every rank searches its own shard on its own GPU into ``OUT.shard<r>of<N>.jsonl``
and rank 0 merges the shards into ``OUT`` once all ranks are done.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from datetime import timedelta
from pathlib import Path

from genssd.commands import add_overrides_flag, add_prompt_flags, with_prompt_flags
from genssd.config import METHOD_PRESETS, SearchConfig, search_config_for
from genssd.errors import UsageError
from genssd.tasks import TASK_NAMES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "search",
        help="generate trajectories with student-in-the-loop selection",
        description="Gen-SSD search: the teacher proposes chunks, the student scores "
        "them, branches it cannot learn are pruned.",
    )
    parser.add_argument("--teacher", required=True, help="teacher model directory (or hub name)")
    parser.add_argument("--student", required=True, help="student model directory (or hub name)")
    parser.add_argument("--task", required=True, help=f"one of {', '.join(TASK_NAMES)}")
    parser.add_argument("--data", required=True, help="JSONL file with question and answer fields")
    parser.add_argument("--out", required=True, help="output JSONL; rerunning with the same file resumes")
    parser.add_argument(
        "--method",
        default="gen-ssd",
        choices=sorted(METHOD_PRESETS),
        help="a preset of the search settings (default gen-ssd)",
    )
    parser.add_argument(
        "--config", help="YAML file of SearchConfig keys (applied on top of the method preset)"
    )
    add_overrides_flag(parser, "--set", "override one SearchConfig key (repeatable)")
    parser.add_argument("--limit", type=int, help="only the first N problems of the data file")
    parser.add_argument("--shard", help="i/N: search only the i-th of N contiguous blocks of problems")
    parser.add_argument("--device", help="cpu, cuda or cuda:K (default: cuda when available)")
    parser.add_argument(
        "--student-device",
        help="the student's device; must be the teacher's input device (default: --device)",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        help="auto, float32, bfloat16 or float16 (default: bfloat16 on CUDA, float32 on CPU)",
    )
    parser.add_argument("--seed", type=int, help="random seed (overrides the config's)")
    parser.add_argument(
        "--engine",
        choices=["auto", "static", "hf"],
        help="decode engine (= --set engine=...): static (Llama, Mistral, Qwen2, Qwen3; preallocated "
        "cache, CUDA graphs), hf (any causal LM), auto (static where supported; the default)",
    )
    parser.add_argument(
        "--teacher-device-map",
        choices=["auto"],
        help="spread the teacher over the visible GPUs (needs accelerate)",
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the checkpoints"
    )
    add_prompt_flags(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_search)

    merge_parser = subparsers.add_parser("merge", help="merge search outputs (dedup by uid, order kept)")
    merge_parser.add_argument("out", help="merged output JSONL (replaced)")
    merge_parser.add_argument("inputs", nargs="+", help="shard outputs, in order")
    merge_parser.set_defaults(func=run_merge)


def run_merge(args) -> int:
    from genssd.data import merge

    count = merge(args.out, args.inputs)
    print(f"merged {count} rows into {args.out}", file=sys.stderr)
    return 0


def _distributed() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` under torchrun, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _search_config(args) -> SearchConfig:
    config = search_config_for(args.method, yaml_path=args.config, overrides=args.set)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    if args.engine is not None:
        config = dataclasses.replace(config, engine=args.engine)
    return with_prompt_flags(config, args)


def _devices(args, dist) -> tuple[str, str]:
    """The teacher's (input) device and the student's, checked."""
    import torch

    from genssd.models import check_device, resolve_device

    device = resolve_device(args.device)
    student = args.student_device or device
    for name in (device, student):
        check_device(name)
    if dist is not None and torch.device(device).type == "cuda":
        if dist[2] >= torch.cuda.device_count():
            raise UsageError(
                f"torchrun local rank {dist[2]} has no GPU: {torch.cuda.device_count()} visible; "
                f"start at most that many processes per node (or use --device cpu)"
            )
        device = student = f"cuda:{dist[2]}"
    if args.teacher_device_map and dist is not None:
        raise UsageError("--teacher-device-map and torchrun both place models on the GPUs; use one of them")
    if args.teacher_device_map and torch.device(student).type != "cuda":
        raise UsageError(
            "--teacher-device-map auto places the teacher on GPUs; the student must be on one too"
        )
    if not args.teacher_device_map and not _same_device(device, student):
        raise UsageError(
            f"teacher and student must be on the same device, got --device {device} "
            f"and --student-device {student}"
        )
    return device, student


def _same_device(a: str, b: str) -> bool:
    import torch

    da, db = torch.device(a), torch.device(b)
    if da.type != db.type:
        return False
    # "cuda" means the current device, cuda:0 unless set otherwise.
    return (da.index or 0) == (db.index or 0)


def _load_rows(task, args, shard_index: int, shard_count: int) -> list[dict]:
    from genssd.data import shard

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    path = Path(args.data)
    if not path.is_file():
        raise UsageError(f"data file not found: {path}")
    rows = task.load(path)
    for row in rows:
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise UsageError(f"{path}: row {row.get('uid')!r} has an empty question")
    if args.limit is not None:
        rows = rows[: args.limit]
    return shard(rows, shard_index, shard_count)


def _output_path(out: Path, dist) -> Path:
    """This rank's output file, checked to be writable (the merged ``out`` too under torchrun)."""
    from genssd.data import check_writable

    check_writable(out)
    if dist is None:
        return out
    rank, world, _ = dist
    return check_writable(out.with_name(f"{out.stem}.shard{rank}of{world}{out.suffix or '.jsonl'}"))


def _load_models(args, device: str, student_device: str, dtype):
    from genssd.models import check_source, load_model, load_tokenizer

    # Both paths are checked before either model loads, so a missing --student fails in seconds.
    check_source(args.teacher)
    check_source(args.student)
    remote = args.trust_remote_code
    teacher = load_model(
        args.teacher, device=device, dtype=dtype, device_map=args.teacher_device_map, trust_remote_code=remote
    )
    student = load_model(args.student, device=student_device, dtype=dtype, trust_remote_code=remote)
    tokenizer = load_tokenizer(args.teacher, trust_remote_code=remote)
    student_tokenizer = load_tokenizer(args.student, trust_remote_code=remote)
    return teacher, student, tokenizer, student_tokenizer


def run_search(args) -> int:
    from genssd.data import merge, parse_shard
    from genssd.models import inference_dtype
    from genssd.search_file import search_to_file
    from genssd.tasks import get_task

    dist = _distributed()
    task = get_task(args.task)
    config = _search_config(args)
    shard_index, shard_count = parse_shard(args.shard)
    if dist is not None:
        if args.shard is not None:
            raise UsageError("--shard and torchrun both split the problems; use one of them")
        shard_index, shard_count = dist[0], dist[1]
    device, student_device = _devices(args, dist)
    dtype = inference_dtype(device, args.dtype)
    if args.teacher_device_map and importlib.util.find_spec("accelerate") is None:
        raise UsageError("--teacher-device-map auto needs accelerate (pip install accelerate)")
    rows = _load_rows(task, args, shard_index, shard_count)
    out = _output_path(Path(args.out), dist)

    def make_searcher(final: SearchConfig):
        from genssd.models import quiet_transformers
        from genssd.search import Searcher

        if args.no_progress:
            quiet_transformers()
        teacher, student, tokenizer, student_tokenizer = _load_models(args, device, student_device, dtype)
        return Searcher(teacher, student, tokenizer, student_tokenizer, config=final)

    written, already = search_to_file(out, make_searcher, task, rows, config, progress=not args.no_progress)
    print(f"{written} rows written to {out} ({already} were already there)", file=sys.stderr)

    if dist is not None:
        import torch.distributed as torch_dist

        torch_dist.init_process_group("gloo", timeout=timedelta(days=7))
        try:
            torch_dist.barrier()  # every rank's shard is complete
            if dist[0] == 0:
                shards = [_output_path(Path(args.out), (r, dist[1], 0)) for r in range(dist[1])]
                count = merge(args.out, [p for p in shards if p.exists()])
                print(f"merged {count} rows into {args.out}", file=sys.stderr)
        finally:
            torch_dist.destroy_process_group()
    return 0
