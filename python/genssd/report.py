"""The demo's report: results of several seeds aggregated, the text table and the plot."""

from __future__ import annotations

import statistics
from pathlib import Path


def aggregate(per_seed: list[list[dict]]) -> list[dict]:
    """Per method: the mean (and, over several seeds, the standard deviation) of each number."""
    out = []
    for rows in zip(*per_seed):
        accuracies = [r["accuracy"] for r in rows]
        tokens = [r["teacher_tokens"] for r in rows]
        pruned = [r["pruned_share"] for r in rows if r["pruned_share"] is not None]
        leaps = [r["leap_share"] for r in rows if r["leap_share"] is not None]
        out.append(
            {
                "method": rows[0]["method"],
                "label": rows[0]["label"],
                "accuracy": statistics.fmean(accuracies),
                "accuracy_std": statistics.stdev(accuracies) if len(rows) > 1 else None,
                "teacher_tokens": statistics.fmean(tokens),
                "pruned_share": statistics.fmean(pruned) if pruned else None,
                "leap_share": statistics.fmean(leaps) if leaps else None,
                "seeds": [r["accuracy"] for r in rows],
            }
        )
    return out


def format_table(rows: list[dict]) -> str:
    """The printed table: method x student accuracy x teacher tokens x share of branches pruned,
    and the share of leap lines in the method's training data."""
    header = ("method", "student accuracy", "teacher tokens", "branches pruned", "leap lines")
    lines = []
    for r in rows:
        accuracy = f"{100 * r['accuracy']:.1f}%"
        if r["accuracy_std"] is not None:
            accuracy += f" ± {100 * r['accuracy_std']:.1f}"
        pruned = "-" if r["pruned_share"] is None else f"{100 * r['pruned_share']:.1f}%"
        leaps = "-" if r["leap_share"] is None else f"{100 * r['leap_share']:.1f}%"
        lines.append((r["label"], accuracy, f"{r['teacher_tokens']:,.0f}", pruned, leaps))
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

    def fmt(row) -> str:
        return "  ".join([row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(row) for row in lines)])


TABLE_NOTES = (
    "teacher tokens: every token the teacher sampled for the student's training data, the shared cold "
    "start's included.\n"
    "branches pruned: candidates the search dropped below the group mean - margin, or samples the answer "
    "check rejected, as a share of those compared ('-': nothing compared).\n"
    "leap lines: solution lines of the training data that carry out several operations at once (what the "
    "small student cannot learn)."
)


def write_plot(path: Path, rows: list[dict], title: str) -> bool:
    """Accuracy against teacher tokens, one labelled point per method; False without matplotlib."""
    try:  # matplotlib is optional (the plot extra), so it is imported here
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    markers = "osD^vP*Xh"
    for i, r in enumerate(rows):
        error = 100 * r["accuracy_std"] if r["accuracy_std"] is not None else None
        ax.errorbar(
            r["teacher_tokens"],
            100 * r["accuracy"],
            yerr=error,
            fmt=markers[i % len(markers)],
            capsize=3,
            markersize=7,
            label=r["label"],
        )
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    ax.set_xlabel("teacher tokens spent")
    ax.set_ylabel("student accuracy on held-out problems (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


__all__ = ["TABLE_NOTES", "aggregate", "format_table", "write_plot"]
