#!/usr/bin/env bash
# One GPU session: install carried wheels, build genssd with its CUDA extension, then run the
# stages named as arguments: tests | kernels | search | train | prune | trainer | parts | budgets.
# Results land in $OUT (or ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -c "import genssd_kernels._C" 2>/dev/null || \
  GENSSD_REQUIRE_EXT=1 python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m genssd_kernels.env | head -5
for stage in "$@"; do
  case $stage in
    tests) python3 -m pytest -q tests/test_logprob_gather.py tests/test_branch_prune.py tests/test_extension.py \
             tests/test_validation.py tests/test_search_cuda.py tests/test_fused_loss.py tests/test_value_checks.py \
             > "$OUT/tests.log" 2>&1; tail -15 "$OUT/tests.log" ;;
    kernels) python3 benchmarks/bench_kernels.py --json "$OUT/kernels.json" ${KERNEL_ARGS:-} > "$OUT/kernels.log" 2>&1; tail -40 "$OUT/kernels.log" ;;
    prune) python3 benchmarks/bench_kernels.py --ops prune --json "$OUT/prune.json" 2>&1 | grep "^| branch" ;;
    search) python3 benchmarks/bench_search.py --shape 1.1b --json "$OUT/search-1.1b.json" 2>&1 | tail -12
            python3 benchmarks/bench_search.py --shape 7b --repeats 1 --json "$OUT/search-7b.json" 2>&1 | tail -12 ;;
    train) python3 benchmarks/bench_train.py --json "$OUT/train.json" 2>&1 | tail -8 ;;
    trainer) python3 benchmarks/bench_trainer.py --json "$OUT/trainer.json" ${TRAINER_ARGS:-} 2>&1 | tail -16 ;;
    parts) python3 benchmarks/studies/fused_loss_parts.py --accuracy --json "$OUT/parts.json" 2>&1 | tail -30 ;;
    budgets) python3 benchmarks/studies/fused_loss_parts.py --budgets 256,512,768,1024,1536,2048 --shapes A,B,C --json "$OUT/budgets.json" 2>&1 | grep budget ;;
  esac
done
