"""Run folders: what every resumable stage of ``genssd distill`` and ``genssd demo`` writes
beside its outputs.

A stage that finished leaves ``<stage>.done`` (its statistics, written atomically), so a rerun
skips it; ``run.json`` holds the run's settings, and a rerun with other settings in the same
folder is refused. Stage lines ("seed0/gen-ssd: search") go to stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from genssd.errors import UsageError


def read_marker(out: Path, stage: str) -> dict | None:
    """The statistics a finished ``stage`` recorded in ``out``, or None when it has not finished."""
    path = Path(out) / f"{stage}.done"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def write_marker(out: Path, stage: str, info: dict) -> None:
    """Mark ``stage`` finished (atomically: a marker is either absent or complete)."""
    write_json(Path(out) / f"{stage}.done", info)


def write_json(path: Path, payload) -> None:
    """Write ``payload`` as indented JSON through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def rows_fingerprint(rows: Sequence[dict]) -> str:
    """A short hash of the problems (uid, question, answer, in order)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([str(row["uid"]), row["question"], row["answer"]]).encode())
    return digest.hexdigest()[:16]


def guard_run(out: Path, identity: dict) -> None:
    """Record the run's settings in ``out/run.json``, or check them against a previous run's.

    A previous run that wrote nothing else (it failed on its input) is simply replaced.
    """
    path = Path(out) / "run.json"
    identity = json.loads(json.dumps(identity, default=str))  # the form it takes once written
    if path.is_file() and any(p.name != path.name for p in Path(out).iterdir()):
        previous = json.loads(path.read_text())
        changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
        if changed:
            raise UsageError(
                f"{out} holds a run with other settings ({', '.join(changed)} differ); "
                f"use another output folder or delete it"
            )
        return
    write_json(path, identity)


# Stage lines ("seed0/gen-ssd: search") go to stderr unless this process turned them off.
_stage_lines = True


def silence_stage_lines() -> None:
    """Stop printing stage lines in this process: the demo's worker processes, whose parent
    shows one progress bar (or one line a finished job) for all of them."""
    global _stage_lines
    _stage_lines = False


def _log(message: str) -> None:
    if _stage_lines:
        print(f"[genssd] {message}", file=sys.stderr, flush=True)


def run_stage(out: Path, name: str, run: Callable[[], dict]) -> dict:
    """Run a stage unless its marker says it finished; returns its statistics either way."""
    where = f"{out.parent.name}/{out.name}"
    info = read_marker(out, name)
    if info is not None:
        _log(f"{where}: {name} already done, skipped")
        return info
    _log(f"{where}: {name}")
    started = time.perf_counter()
    info = {**run(), "stage_seconds": round(time.perf_counter() - started, 2)}
    write_marker(out, name, info)
    return info


__all__ = [
    "guard_run",
    "read_marker",
    "rows_fingerprint",
    "run_stage",
    "silence_stage_lines",
    "write_json",
    "write_marker",
]
