"""One table per study of ``genssd demo`` runs, with paired differences by seed.

Reads each finished method's ``row.json`` in every seed folder of the runs given (so a run
stopped before its ``results.json`` can be read too, and runs of other seeds with the same
settings, e.g. ``--seed 3 --set seeds=2`` after seeds 0-2, add their seeds), or a finished run's
``results.json`` alone (its rows by seed: what experiments/results/ keeps), and, for every study
named (default: the first run's own, from ``results.json``), prints a Markdown table: the
accuracy's mean and standard deviation over the seeds, the teacher tokens, the branches pruned,
the leap lines in the training data, and the paired difference to the study's Gen-SSD row (same
seed: same problems, same cold start), its mean, standard deviation and each seed's value, marked
where it lies within two standard errors of zero (what more seeds should settle). ``--json DIR``
writes one results JSON per study and its plot of accuracy against teacher tokens (with
matplotlib).

    python experiments/study_tables.py runs/arith [runs/arith-3-4] --json experiments/results/NAME
    python experiments/study_tables.py experiments/results/NAME/results.json runs/arith-3-4 ...
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from genssd.report import write_plot
from genssd.studies import study_methods


def reference_of(study: str) -> str:
    """The Gen-SSD row every other row of ``study`` is compared with."""
    return f"gen-ssd-m{study.rsplit('-', 1)[1]}" if study.startswith("equal-data-") else "gen-ssd"


def _rows_of_run(run: Path) -> dict[str, dict[str, dict]]:
    """``{seed folder: {method: row}}`` of a run folder's finished methods, or of its results.json."""
    if run.is_file():
        results = json.loads(run.read_text())
        return {
            f"seed{seed}": {r["method"]: r for r in rows}
            for seed, rows in zip(results["seeds"], results["per_seed"])
        }
    seeds = sorted(run.glob("seed*"), key=lambda p: int(p.name.removeprefix("seed")))
    return {
        seed.name: {p.parent.name: json.loads(p.read_text()) for p in sorted(seed.glob("*/row.json"))}
        for seed in seeds
    }


def seed_rows(*runs: Path) -> dict[str, dict[str, dict]]:
    """``{seed folder: {method: row}}`` of every finished method of ``runs`` (run folders, whose
    ``row.json`` files are read, or ``results.json`` files)."""
    rows: dict[str, dict[str, dict]] = {}
    for run in runs:
        for seed, methods in _rows_of_run(run).items():
            if seed in rows:
                raise SystemExit(f"{seed} is in more than one of the runs: {', '.join(map(str, runs))}")
            rows[seed] = methods
    return rows


def settings_of(run: Path) -> dict:
    """What must match for runs to be compared: the preset, less its seeds, name and studies."""
    preset = json.loads((run if run.is_file() else run / "run.json").read_text())["preset"]
    return {k: v for k, v in preset.items() if k not in ("seeds", "name", "studies", "equal_budget")}


def studies_of(run: Path) -> list[str] | None:
    """The studies a finished run answered (from its results.json), None before it finished or
    for results written before the studies were recorded."""
    results = run if run.is_file() else run / "results.json"
    if not results.is_file():
        return None
    return list(json.loads(results.read_text()).get("studies", ())) or None


def _spread(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def study_table(study: str, per_seed: dict[str, dict[str, dict]], n: int) -> dict:
    """The study's rows: per method its seeds' numbers and the paired differences to the reference."""
    reference = reference_of(study)
    rows = []
    for method in study_methods(study, n, equal_budget=True):
        seeds = [s for s, rows_ in per_seed.items() if method.key in rows_]
        if not seeds:
            continue
        found = [per_seed[s][method.key] for s in seeds]
        accuracy, spread = _spread([r["accuracy"] for r in found])
        leaps = [r["leap_share"] for r in found if r["leap_share"] is not None]
        pruned = [r["pruned_share"] for r in found if r.get("pruned_share") is not None]
        row = {
            "method": method.key,
            "label": method.label,
            "seeds": seeds,
            "accuracy": [r["accuracy"] for r in found],
            "accuracy_mean": accuracy,
            "accuracy_std": spread,
            "teacher_tokens": statistics.fmean(r["teacher_tokens"] for r in found),
            "leap_share": statistics.fmean(leaps) if leaps else None,
            "pruned_share": statistics.fmean(pruned) if pruned else None,
        }
        paired = [s for s in seeds if reference in per_seed[s] and method.key != reference]
        if paired:
            diffs = [per_seed[s][method.key]["accuracy"] - per_seed[s][reference]["accuracy"] for s in paired]
            mean, std = _spread(diffs)
            error = std / math.sqrt(len(diffs)) if std is not None else None
            row["vs_reference"] = {
                "reference": reference,
                "seeds": paired,
                "differences": diffs,
                "mean": mean,
                "std": std,
                "standard_error": error,
                # The rule: a difference within two standard errors of zero wants 5 seeds.
                # None with one seed: nothing to judge the difference by.
                "within_two_errors": None if error is None else abs(mean) <= 2 * error,
            }
        rows.append(row)
    return {"study": study, "reference": reference, "rows": rows}


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(table: dict) -> str:
    """The study's table in Markdown."""
    lines = [
        f"### {table['study']} (paired: minus {table['reference']}, points)",
        "",
        "| method | accuracy | teacher tokens | branches pruned | leap lines | minus reference | by seed |",
        "|---|---|---|---|---|---|---|",
    ]
    most_seeds = max((len(row["seeds"]) for row in table["rows"]), default=0)
    reference_seeds = next(
        (row["seeds"] for row in table["rows"] if row["method"] == table["reference"]), None
    )
    for row in table["rows"]:
        accuracy = f"{_points(row['accuracy_mean'])}"
        if row["accuracy_std"] is not None:
            accuracy += f" ± {_points(row['accuracy_std'])}"
        accuracy += "%" + (f" ({len(row['seeds'])} seeds)" if len(row["seeds"]) != most_seeds else "")
        paired = row.get("vs_reference")
        difference = by_seed = "-"
        if paired is not None:
            difference = f"{100 * paired['mean']:+.1f}"
            if paired["std"] is not None:
                difference += f" ± {_points(paired['std'])}"
            if paired["within_two_errors"]:
                difference += " †"
            by_seed = " / ".join(f"{100 * d:+.1f}" for d in paired["differences"])
            if not paired["seeds"] == row["seeds"] == reference_seeds:  # say which seeds were paired
                by_seed += f" (seeds {', '.join(s.removeprefix('seed') for s in paired['seeds'])})"
        leaps, pruned = (
            f"{_points(row[key])}%" if row[key] is not None else "-" for key in ("leap_share", "pruned_share")
        )
        cells = [row["label"], accuracy, f"{row['teacher_tokens']:,.0f}", pruned, leaps, difference, by_seed]
        lines.append("| " + " | ".join(cells) + " |")
    if any(row.get("vs_reference", {}).get("within_two_errors") for row in table["rows"]):
        lines += ["", "†: within two standard errors of zero (the mean's, over the paired seeds)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs",
        type=Path,
        nargs="+",
        help="genssd demo output folders or results.json files, the same settings",
    )
    parser.add_argument("--study", action="append", help="a study to tabulate (default: the run's)")
    parser.add_argument("--json", type=Path, help="write STUDY.json per study into this folder")
    args = parser.parse_args()

    for run in args.runs:
        if not run.exists():
            parser.error(f"{run} does not exist (a genssd demo output folder or a results.json)")
    settings = settings_of(args.runs[0])
    for run in args.runs[1:]:
        if settings_of(run) != settings:
            parser.error(f"{run} was run with other settings than {args.runs[0]}")
    studies = args.study or studies_of(args.runs[0])
    if not studies:
        parser.error("the run has no results.json: name the studies with --study")
    per_seed = seed_rows(*args.runs)
    for study in studies:
        table = study_table(study, per_seed, settings["num_candidates"])
        table.update(task=settings["task"], preset=settings, runs=[str(run) for run in args.runs])
        print(markdown(table), end="\n\n")
        if args.json:
            args.json.mkdir(parents=True, exist_ok=True)
            (args.json / f"{study}.json").write_text(json.dumps(table, indent=1) + "\n")
            points = [{**r, "accuracy": r["accuracy_mean"]} for r in table["rows"]]
            write_plot(args.json / f"{study}.png", points, f"{settings['task']}: {study}")


if __name__ == "__main__":
    main()
