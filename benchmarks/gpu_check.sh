#!/usr/bin/env bash
# The GPU check: on one GPU, in under 8 minutes, (1) the CUDA tests, (2) python -m benchmarks.speed
# --device cuda --quick, (3) CoDPS+ DDIM-100 at the FFHQ architecture (256x256, random weights) at
# batch 1 and at the largest batch that fits (images per minute), then, while time is left,
# (4) torch.compile off / on and (5) the whole-process benchmark at 256x256. Results go to
# benchmarks/results/: speed_cuda_quick.*, speed_cuda_throughput.*, compile_cuda.*, speed_e2e_cuda.*.
#
#   bash benchmarks/gpu_check.sh               # on a machine with a GPU
#   bash benchmarks/gpu_check.sh --dry-run     # the same steps on the CPU with tiny sizes (CI),
#                                              # into a temporary folder (or --out DIR)
#
# Exit status: 0 when every step ran, 1 when one failed (the others still run), 2 for bad arguments
# or no GPU without --dry-run.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python}
DRY=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) [ $# -ge 2 ] || { echo "error: --out needs a folder" >&2; exit 2; }; OUT="$2"; shift ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (valid: --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
FAILED=()
step() {   # step NAME COMMAND...: run, report the time, remember a failure
  local name="$1"; shift
  echo "== [$(elapsed) s] $name: $*"
  if "$@"; then echo "== [$(elapsed) s] $name: ok"; else echo "== [$(elapsed) s] $name: FAILED"; FAILED+=("$name"); fi
}

if [ "$DRY" = 1 ]; then
  DEV=cpu
  OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/codps_gpu_check.XXXXXX")}
  export CODPS_CACHE_DIR=${CODPS_CACHE_DIR:-$OUT/cache}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  SPEED_ARGS=(--quick --sizes mnist32 --solvers CoDPS+ --operators inpainting --batches 1 --warmup 0 --repeats 1)
  TP_ARGS=(--sizes 32 --steps 2 --max_batch 4 --budget_s 600 --threads 1)
  COMPILE_ARGS=()   # compiling takes minutes on a CPU: skipped
  E2E_ARGS=(--quick --methods CoDPS+)
  LATE_S=0          # the optional steps: always in a dry run
else
  DEV=cuda
  OUT=${OUT:-benchmarks/results}
  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: no CUDA device visible; on a CPU use bash benchmarks/gpu_check.sh --dry-run" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  SPEED_ARGS=(--quick)
  TP_ARGS=(--sizes 256 --steps 100 --max_batch 512 --budget_s 180 --threads 4)
  COMPILE_ARGS=(--sizes 256 --compile_steps_256 10,40 --images_256 1 --threads 4)
  E2E_ARGS=(--sizes 256 --modes fp32,auto --steps_256 20 --images_256 4 --threads 4)
  LATE_S=330        # optional steps start only before this many seconds (the check stays < 8 min)
fi
mkdir -p "$OUT"
echo "gpu_check: device $DEV, results in $OUT"

step "CUDA tests" "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step "speed (reduced)" "$PY" -m benchmarks.speed --device "$DEV" "${SPEED_ARGS[@]}" --out "$OUT"
step "CoDPS+ throughput" "$PY" -m benchmarks.e2e --throughput --device "$DEV" "${TP_ARGS[@]}" --out "$OUT"
if [ ${#COMPILE_ARGS[@]} -eq 0 ]; then
  echo "== torch.compile: skipped in a dry run (compiling the UNet takes minutes on a CPU)"
elif [ "$(elapsed)" -lt "$LATE_S" ]; then
  step "torch.compile" "$PY" -m benchmarks.e2e --compile --device "$DEV" "${COMPILE_ARGS[@]}" --out "$OUT"
else
  echo "== torch.compile: skipped, $(elapsed) s spent (run: python -m benchmarks.e2e --compile --device cuda ${COMPILE_ARGS[*]})"
fi
if [ "$(elapsed)" -lt "$((LATE_S + 60))" ] || [ "$DRY" = 1 ]; then
  step "whole-process benchmark" "$PY" -m benchmarks.e2e --device "$DEV" "${E2E_ARGS[@]}" --out "$OUT"
else
  echo "== whole-process benchmark: skipped, $(elapsed) s spent (run: python -m benchmarks.e2e --device cuda ${E2E_ARGS[*]})"
fi

echo "gpu_check: $(elapsed) s; files in $OUT:"
ls -1 "$OUT" | grep -E '^(speed|compile)_' || true
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu_check: FAILED steps: ${FAILED[*]}" >&2
  exit 1
fi
echo "gpu_check: all steps ok"
