"""Search output files: append-only JSONL, resume by ``uid``, shards and merging.

A row is written as one line and flushed at once, so a killed run leaves every finished row on
disk and at most one unterminated line at the end. Reading an output back drops that line (and
truncates the file to the last complete row, so appending starts on a fresh line); any other
unparsable line is corruption and is reported, never skipped silently.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from genssd.errors import UsageError


def check_writable(path: str | Path, *, folder: bool = False, flag: str = "--out") -> Path:
    """Fail before any work when ``path`` (a file, or with ``folder`` a folder) cannot be written.

    The nearest existing folder on the way must take a new file: a temporary file is made and
    removed there (``os.access`` says yes to root on read-only or virtual file systems such as
    /proc). Folders that do not exist yet are not made here.
    """
    path = Path(path)
    if path.exists() and folder and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder")
    if path.exists() and not folder and not path.is_file():
        raise UsageError(f"{flag} {path} is not a file")
    probe = path if folder and path.exists() else path.absolute().parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{flag} {path}: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
        if path.is_file():
            with path.open("ab"):
                pass
    except OSError as exc:
        raise UsageError(f"{flag} {path} is not writable ({exc.strerror or exc})") from None
    return path


def read_output(path: str | Path, *, repair: bool = False) -> list[dict]:
    """The complete rows of an output file (``[]`` when it does not exist).

    An unterminated last line (a write cut short by a kill) is left out; with ``repair`` the file
    is also truncated to end after the last complete row.
    """
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_file():
        raise UsageError(f"{path} is not a file")
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1  # bytes up to and including the last newline
    rows = []
    for lineno, line in enumerate(data[:complete].splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"{path}:{lineno}: corrupt row (not JSON); fix or remove the file") from None
        if not isinstance(row, dict) or "uid" not in row:
            raise UsageError(f"{path}:{lineno}: not a search output row (no uid)")
        rows.append(row)
    if repair and complete < len(data):
        with path.open("r+b") as f:
            f.truncate(complete)
    return rows


class RowWriter:
    """Appends rows to a JSONL file, one line per row, flushed per row.

    The file is opened on the first row, so a run that fails before producing anything leaves
    no file behind.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = None

    def write(self, row: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def resume_state(path: str | Path, config_hash: str) -> set[str]:
    """The uids already in ``path``, after repairing a cut-off last line.

    Refuses a file written with another configuration: mixing two configs in one output would
    make it neither.
    """
    rows = read_output(path, repair=True)
    other = sorted({r.get("config_hash") for r in rows if r.get("config_hash") != config_hash}, key=str)
    if other:
        raise UsageError(
            f"{path} holds rows of another configuration (config_hash {', '.join(map(str, other))}, "
            f"this run is {config_hash}); use another --out"
        )
    return {str(r["uid"]) for r in rows}


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``; None -> ``(0, 1)``."""
    if spec is None:
        return 0, 1
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        raise UsageError(f"--shard takes i/N (e.g. 0/4), got {spec!r}") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard {spec}: need 0 <= i < N")
    return index, count


def shard(items: Sequence, index: int, count: int) -> list:
    """Shard ``index`` of ``count``: a contiguous block, so shards in order concatenate to ``items``."""
    n = len(items)
    return list(items[index * n // count : (index + 1) * n // count])


def merge(out: str | Path, inputs: Iterable[str | Path]) -> int:
    """Write the rows of ``inputs`` to ``out``: first occurrence of each uid, in input order.

    A cut-off last line of an input is skipped. ``out`` is replaced atomically. Returns the number
    of rows written.
    """
    out = check_writable(out, flag="merge output")
    inputs = [Path(p) for p in inputs]
    for path in inputs:
        if not path.is_file():
            raise UsageError(f"merge input not found: {path}")
        if path.resolve() == out.resolve():
            raise UsageError(f"merge output {out} is also an input")
    seen: set[str] = set()
    rows = []
    for path in inputs:
        for row in read_output(path):
            uid = str(row["uid"])
            if uid not in seen:
                seen.add(uid)
                rows.append(row)
    write_jsonl(out, rows)
    return len(rows)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write ``rows`` as a JSONL file, complete or not at all (a temporary file renamed over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


__all__ = [
    "RowWriter",
    "check_writable",
    "merge",
    "parse_shard",
    "read_output",
    "resume_state",
    "shard",
    "write_jsonl",
]
