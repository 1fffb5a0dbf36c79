"""``genssd export``: selected trajectories of a search output as a dataset (JSONL that
``datasets.load_dataset("json", ...)`` and TRL's ``SFTTrainer`` read)."""

from __future__ import annotations

import sys
from pathlib import Path

from genssd.commands import add_overrides_flag
from genssd.errors import UsageError
from genssd.tasks import TASK_NAMES


def register(subparsers) -> None:
    from genssd.export import FORMATS

    parser = subparsers.add_parser(
        "export",
        help="search output -> a training dataset (prompt-completion or messages JSONL)",
        description="Write the trajectories of a search output as DIR/train.jsonl, one record per "
        "trajectory, with uid, method, config_hash, rank, student_score and correct as columns.",
    )
    parser.add_argument("--data", required=True, help="search output JSONL (genssd search / distill)")
    parser.add_argument("--task", required=True, choices=TASK_NAMES, help="the task it was searched on")
    parser.add_argument("--out", required=True, help="output folder (train.jsonl is written there)")
    parser.add_argument("--config", help="YAML file of ExportConfig keys (format, only_correct, top_m)")
    add_overrides_flag(parser, "--set", "override an ExportConfig key (repeatable)")
    # The settings as flags, aliases of --set KEY=VALUE (given ones beat the --config file).
    parser.add_argument("--format", choices=FORMATS, help="(default prompt-completion)")
    parser.add_argument(
        "--only-correct", action="store_true", default=None, help="keep trajectories with a correct answer"
    )
    parser.add_argument(
        "--top-m", type=int, help="keep at most M trajectories a problem (best student score first)"
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from genssd.config import build_config
    from genssd.data import check_writable, read_output
    from genssd.export import ExportConfig, export_records, write_dataset
    from genssd.tasks import get_task

    aliases = ("format", "only_correct", "top_m")
    given = [f"{name}={getattr(args, name)}" for name in aliases if getattr(args, name) is not None]
    config = build_config(ExportConfig, yaml_path=args.config, overrides=[*given, *args.set])
    data = Path(args.data)
    if not data.is_file():
        raise UsageError(f"data file not found: {data}")
    out = check_writable(args.out, folder=True)
    task = get_task(args.task)
    records = export_records(
        read_output(data), task, format=config.format, only_correct=config.only_correct, top_m=config.top_m
    )
    path = write_dataset(out, records)
    print(f"{len(records)} records written to {path}", file=sys.stderr)
    return 0
