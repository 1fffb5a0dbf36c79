"""Search output files: append-only rows, resume after a kill, shards, merge."""

from __future__ import annotations

import json
import random

import pytest
from genssd.data import RowWriter, merge, parse_shard, read_output, resume_state, shard
from genssd.errors import UsageError


def _rows(uids, hash_="abc"):
    rng = random.Random(len(uids))
    return [
        {"uid": u, "config_hash": hash_, "score": rng.random(), "text": "x" * rng.randint(0, 30) + "\nü"}
        for u in uids
    ]


def _write(path, rows):
    with RowWriter(path) as writer:
        for row in rows:
            writer.write(row)


def test_rows_round_trip_one_line_each(tmp_path):
    path = tmp_path / "out.jsonl"
    writer = RowWriter(path)
    assert not path.exists()  # nothing written, no file
    rows = _rows(["a", "b", "c"])
    for i, row in enumerate(rows):
        writer.write(row)
        assert read_output(path) == rows[: i + 1]  # flushed per row
    writer.close()
    assert path.read_text(encoding="utf-8").count("\n") == 3
    assert read_output(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize(
    "tail", ['{"uid": "d", "config_hash": "abc", "sc', '{"uid": "d", "config_hash": "abc"}']
)
def test_a_cut_off_last_line_is_dropped_and_repaired(tmp_path, tail):
    path = tmp_path / "out.jsonl"
    rows = _rows(["a", "b", "c"])
    _write(path, rows)
    with path.open("a", encoding="utf-8") as f:
        f.write(tail)  # a kill mid-write: no newline
    assert read_output(path) == rows
    assert path.read_text(encoding="utf-8").endswith(tail)  # reading alone changes nothing
    assert resume_state(path, "abc") == {"a", "b", "c"}
    assert not path.read_text(encoding="utf-8").endswith(tail)  # repaired for appending
    more = _rows(["d", "e"])
    _write(path, more)
    assert read_output(path) == rows + more


def test_corruption_inside_the_file_is_reported(tmp_path):
    path = tmp_path / "out.jsonl"
    _write(path, _rows(["a"]))
    with path.open("a", encoding="utf-8") as f:
        f.write("not json\n")
    _write(path, _rows(["b"]))
    with pytest.raises(UsageError, match=":2: corrupt row"):
        read_output(path)
    path.write_text('{"no_uid": 1}\n')
    with pytest.raises(UsageError, match="no uid"):
        read_output(path)


def test_resume_refuses_another_configuration(tmp_path):
    path = tmp_path / "out.jsonl"
    _write(path, _rows(["a", "b"], hash_="abc"))
    with pytest.raises(UsageError, match="another configuration"):
        resume_state(path, "xyz")


def test_shards_are_contiguous_and_cover_everything():
    rng = random.Random(0)
    for _ in range(50):
        items = list(range(rng.randint(0, 40)))
        count = rng.randint(1, 7)
        parts = [shard(items, i, count) for i in range(count)]
        assert sum(parts, []) == items
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parse_shard("2/5") == (2, 5) and parse_shard(None) == (0, 1)
    for bad in ("5/5", "-1/2", "1/0", "a/b", "3"):
        with pytest.raises(UsageError, match="shard"):
            parse_shard(bad)


def test_merge_dedups_by_uid_in_input_order(tmp_path):
    a, b, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "merged.jsonl"
    rows_a, rows_b = _rows(["1", "2", "3"]), _rows(["3", "4", "5"])
    rows_b[0]["score"] = -1.0  # a duplicate uid: the first occurrence wins
    _write(a, rows_a)
    _write(b, rows_b)
    with b.open("a") as f:
        f.write('{"uid": "6", "tr')  # a shard cut off mid-row
    assert merge(out, [a, b]) == 5
    assert read_output(out) == rows_a + rows_b[1:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.jsonl",
        "b.jsonl",
        "merged.jsonl",
    ]  # no temp left
    assert all(json.loads(line) for line in out.read_text().splitlines())
    with pytest.raises(UsageError, match="also an input"):
        merge(a, [a, b])
    with pytest.raises(UsageError, match="not found"):
        merge(out, [tmp_path / "missing.jsonl"])
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="merge output .* is not a folder"):
        merge(tmp_path / "file" / "merged.jsonl", [a, b])  # checked before any input is read


def test_write_jsonl_gives_the_files_the_usual_mode(tmp_path):
    import os
    import stat

    from genssd.data import write_jsonl

    path = write_jsonl(tmp_path / "rows.jsonl", [{"uid": "a"}])
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
