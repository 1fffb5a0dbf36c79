"""What each method's data and student look like in a ``genssd demo`` output folder.

For every seed folder and method: the held-out accuracy (also by the problem's number of
operations), the share of leap lines (two or more operations at once) in the method's search
output and in the fine-tuned student's own held-out answers, and the share of the search's kept
trajectories whose answer is right; from the stage markers, the share of the search's answers
that are right and the examples trained on. Works on finished and unfinished runs alike (a stage
that has not run yet is left out) and on packed runs (markers without the search output).

    python experiments/analyze_demo_run.py runs/demo --json experiments/results/NAME.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from genssd.demo import leap_line_share
from genssd.runs import read_marker


def _jsonl(path: Path) -> list[dict]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def search_stats(path: Path, task: str) -> dict:
    """Kept trajectories of one search output: how many, share right, share of leap lines."""
    rows = [row for row in _jsonl(path) if row.get("trajectories")]
    kept = [(row["trajectories"][0]["text"], len(row["ops"])) for row in rows]
    return {
        "problems": len(rows),
        "answer_right": statistics.fmean(bool(row.get("correct")) for row in rows) if rows else None,
        "leap_lines": leap_line_share(kept, task),
    }


def eval_stats(path: Path, operations: dict[str, int], task: str) -> dict:
    """Greedy held-out answers of one student: accuracy, by operation count (``operations``: per
    problem uid), leap lines."""
    rows = _jsonl(path)
    by_ops: dict[int, list[bool]] = {}
    answers = []
    for row in rows:
        ops = operations[row["uid"]]
        by_ops.setdefault(ops, []).append(bool(row["correct"][0]))
        answers.append((row["predictions"][0], ops))
    return {
        "accuracy": statistics.fmean(bool(row["correct"][0]) for row in rows),
        "accuracy_by_operations": {ops: statistics.fmean(v) for ops, v in sorted(by_ops.items())},
        "student_leap_lines": leap_line_share(answers, task),
    }


def marker_stats(method_dir: Path) -> dict:
    """What the stage markers record, which a packed run keeps without the search output: the
    share of the search's answers that are right, and the examples the student trained on (one
    per problem where a method keeps at most one)."""
    stats = {}
    if (search := read_marker(method_dir, "search")) is not None:
        stats["search_answer_right"] = search["answer_accuracy"]
    if (train := read_marker(method_dir, "train")) is not None:
        stats["examples_trained_on"] = train["examples"]
    return stats


def analyze(run: Path) -> dict:
    """``{seed folder: {method: stats}}`` for every seed folder under ``run``."""
    task = json.loads((run / "run.json").read_text())["preset"]["task"]
    out = {}
    for seed_dir in sorted(run.glob("seed*")):
        heldout = _jsonl(seed_dir / "data" / "heldout.jsonl")
        operations = {row["uid"]: len(row["ops"]) for row in heldout}
        methods = {}
        for method_dir in sorted(p for p in seed_dir.iterdir() if p.is_dir() and p.name != "data"):
            stats = {}
            if (method_dir / "search.jsonl").exists():  # a packed run may hold its markers alone
                stats["data"] = search_stats(method_dir / "search.jsonl", task)
            if (method_dir / "eval.done").exists():
                stats["student"] = eval_stats(method_dir / "eval.jsonl", operations, task)
            if markers := marker_stats(method_dir):
                stats["markers"] = markers
            if stats:
                methods[method_dir.name] = stats
        out[seed_dir.name] = methods
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a genssd demo output folder")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    report = analyze(args.run)
    for seed, methods in report.items():
        for method, stats in methods.items():
            data, student, markers = stats.get("data", {}), stats.get("student", {}), stats.get("markers", {})
            cells = [
                f"acc {student['accuracy']:.3f}" if student else "acc -",
                f"data right {data['answer_right']:.3f}" if data.get("answer_right") is not None else "",
                f"data leaps {data['leap_lines']:.3f}" if data.get("leap_lines") is not None else "",
                f"student leaps {student['student_leap_lines']:.3f}"
                if student.get("student_leap_lines") is not None
                else "",
                f"search right {markers['search_answer_right']:.3f}"
                if "search_answer_right" in markers
                else "",
                f"examples {markers['examples_trained_on']}" if "examples_trained_on" in markers else "",
            ]
            print(f"{seed:6} {method:16} " + "  ".join(c for c in cells if c))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
