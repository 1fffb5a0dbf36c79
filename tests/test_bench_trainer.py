"""``benchmarks/bench_trainer.py --tiny``: the Trainer benchmark runs end to end on the CPU (each
variant in its own process), its rows start from the same weights and agree on the losses, and the
Liger rows are skipped with a note where ``liger_kernel`` is not importable."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_trainer.py"


@pytest.mark.slow
def test_tiny_trainer_benchmark_runs_on_the_cpu(tmp_path):
    out = tmp_path / "trainer.json"
    argv = [sys.executable, str(SCRIPT), "--tiny", "--steps", "2", "--rounds", "2", "--json", str(out)]
    argv += ["--variants", "unpatched", "genssd", "liger"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert result["card"] == "CPU" and "| genssd |" in done.stdout
    for name in ("unpatched", "genssd"):
        assert rows[name]["tokens_per_s"] > 0 and len(rows[name]["losses"]) == 3  # 1 warm-up + 2 timed
        low, high = rows[name]["ms_per_step_rounds"]  # two rounds, the row their median
        assert low <= rows[name]["ms_per_step"] <= high
    assert rows["genssd"]["weights_checksum"] == rows["unpatched"]["weights_checksum"]
    assert rows["genssd"]["losses"] == pytest.approx(rows["unpatched"]["losses"], rel=1e-3)
    assert "genssd / unpatched" in result["ratios"]
    if importlib.util.find_spec("liger_kernel") is None:
        assert rows["liger"]["note"].startswith("skipped")
