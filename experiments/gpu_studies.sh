#!/usr/bin/env bash
# The demo's studies on a GPU machine within one call's time limit.
#
#   bash experiments/gpu_studies.sh NAME SECONDS [genssd demo arguments...]
#
# Runs `genssd demo --device cuda` in runs/NAME (the source tree on PYTHONPATH: the demo needs no
# compiled extension, Triton serves CUDA) and stops it, workers included, after SECONDS. The run
# folder stays while the machine does, so the same command again resumes it (finished stages are
# skipped). $OUT (or ./gpu-out) receives the log and NAME.tgz: results.json, the table, the
# held-out problems and every method's summary, row, stage markers and held-out answers, what
# experiments/study_tables.py and analyze_demo_run.py (held-out side) read. The packed markers
# come without the search outputs and checkpoints: the archive is for reading, not resuming.
# Give the call about 15 s more than SECONDS (the stop waits 5 s, then the packing runs).
# Run it with bash, not interactively: the demo's process id is then its process group's.
set -uo pipefail
name=$1
seconds=$2
shift 2
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
run=runs/$name
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
# setsid: the demo leads its own process group, so the deadline stops its worker processes too.
before=$(grep -c "finished" "$OUT/$name.log" 2>/dev/null || true)
setsid python3 -c "import sys; from genssd.cli import main; sys.exit(main(sys.argv[1:]))" \
  demo --out "$run" --device "${DEVICE:-cuda}" --no-progress "$@" >> "$OUT/$name.log" 2>&1 &
pid=$!
end=$((SECONDS + seconds))
while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$end" ]; do sleep 2; done
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM -- "-$pid"
  sleep 5
  kill -KILL -- "-$pid" 2>/dev/null
  echo "stopped after $seconds s; the same command resumes it"
fi
wait "$pid"
echo "exit status $?"
find "$run" \( -name results.json -o -name table.txt -o -name summary.json -o -name row.json -o -name '*.done' \
  -o -name eval.jsonl -o -name run.json -o -name heldout.jsonl \) -print0 | tar czf "$OUT/$name.tgz" --null -T -
echo "jobs finished: $(($(grep -c "finished" "$OUT/$name.log") - ${before:-0})) in this call, $(grep -c "finished" "$OUT/$name.log") in all"
tail -n 25 "$OUT/$name.log"
